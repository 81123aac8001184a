"""RealNVP: a normalizing flow with exact log-likelihood, multi-scale (images) or flat (MLP couplings).

The density is on the data as the DataModule delivers it, ``y = (x + u) / 256`` in ``[0, 1)``:
``log p(y) = log N(T(logit(y')); 0, I) + log |det J|`` where ``y' = alpha + (1 - alpha) y`` and the
log-det includes the logit preprocessing. ``vaelab.evaluation.bits_per_dim(-log p, D, "dequantized")``
turns it into bits/dim in pixel space (PAPERS.md, Units).

Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from vaelab.distributions import StandardNormalPrior
from vaelab.flows import (
    ActNorm,
    AffineCoupling,
    CompositeTransform,
    Flatten,
    IdentityTransform,
    InvertibleBatchNorm,
    LogitTransform,
    MLPCouplingNet,
    MultiScale,
    ResNetCouplingNet,
    Squeeze,
    Transform,
    channel_mask,
    checkerboard_mask,
    raise_nonfinite,
)
from vaelab.flows.nets import GAIN_SUFFIX
from vaelab.models.base import GenerativeModel, Terms
from vaelab.units import check_kind

NORMS = ("batch", "act", "none")


def make_norm(kind: str | None, num_features: int, momentum: float = 0.05) -> Transform | None:
    """An invertible normalization layer by name: ``batch``, ``act`` or ``none``/``None``."""
    if kind is None or kind == "none":
        return None
    if kind == "batch":
        return InvertibleBatchNorm(num_features, momentum=momentum)
    if kind == "act":
        return ActNorm(num_features)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class FlowModel(GenerativeModel):
    """``log p(y) = log N(z; 0, I) + log|det dz/dy|`` with ``z = T(logit(alpha + (1 - alpha) y))``.

    The generic flow behind ``RealNVP`` and ``RealNVPMLP``; usable directly with any ``Transform``.

    Args:
        data_shape: ``(C, H, W)`` of one example.
        transform: ``T`` (data -> noise) on the logit-space image; its output may have any shape of
            ``D`` elements (it is flattened for the base density).
        alpha: logit preprocessing constant; ``None`` for no preprocessing (the density is then on
            ``y`` directly; only for tests and non-image data).
        logit_symmetric: ``p = alpha + (1 - 2 alpha) y`` instead of the paper's ``alpha + (1-alpha) y``.
        weight_norm_l2: coefficient of the L2 penalty on the weight-norm gains and coupling scales
            added to the loss (nats per image), as in Dinh et al.'s code (5e-5 for CIFAR-10).
        check_values: check shape and ``[0, 1]`` range of the inputs and the finiteness of the
            log-likelihood on every call (one device sync; errors name the culprit).

    Raises:
        ValueError: in calls, on inputs of the wrong shape or outside ``[0, 1]``.
        vaelab.flows.NonFiniteLogDetError: when the log-det goes non-finite, naming the transform.
    """

    #: ``log_likelihood`` equals ``forward(x).elbo`` (no sampling): evaluation may reuse it.
    exact_likelihood = True

    def __init__(
        self,
        data_shape: Sequence[int],
        transform: Transform,
        alpha: float | None = 0.05,
        logit_symmetric: bool = False,
        weight_norm_l2: float = 0.0,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if weight_norm_l2 < 0:
            raise ValueError(f"weight_norm_l2 must be >= 0, got {weight_norm_l2}")
        pre: Transform = (
            IdentityTransform() if alpha is None else LogitTransform(alpha, logit_symmetric)
        )
        self.flow = CompositeTransform([pre, transform])
        self.latent_shape = self.flow.output_shape(self.data_shape)
        if math.prod(self.latent_shape) != self.num_dims:
            raise ValueError(
                f"transform maps {self.data_shape} to {self.latent_shape}: not the same number of "
                "dimensions, so it cannot be a bijection"
            )
        self.base = StandardNormalPrior(self.num_dims)
        self.weight_norm_l2 = float(weight_norm_l2)
        self.check_values = bool(check_values)

    @property
    def preprocess(self) -> Transform:
        return self.flow[0]

    @property
    def transform(self) -> Transform:
        return self.flow[1]

    # -- protocol -----------------------------------------------------------------------------
    def check_data(self, data_kind: str) -> None:
        kind = check_kind(data_kind)
        if kind == "unit":
            raise ValueError(
                f"{type(self).__name__} is a continuous density and needs dequantized 8-bit pixels "
                "(data kind 'dequantized'), got 'unit' (x / 255 without noise, on which a flow's "
                "density is unbounded): set data.dequantize=true"
            )
        if kind != "dequantized":
            raise ValueError(
                f"{type(self).__name__} is a continuous density and needs dequantized 8-bit pixels "
                f"(data kind 'dequantized'), got {kind!r}: " + self._fix_hint()
            )

    def _fix_hint(self) -> str:
        """What to run instead on binary data (named by :meth:`check_data`)."""
        return "use data=mnist (not binarized_mnist) or data=cifar10"

    def forward(self, x: Tensor) -> Terms:
        """Terms for ``x`` (B, C, H, W) in [0, 1]: ``loss`` = mean NLL (+ L2), ``elbo`` = exact log p.

        ``terms``: ``log_pz`` (base log-density of ``z``) and ``logdet`` (log|det dz/dy|,
        preprocessing included), with ``elbo = log_pz + logdet``; all ``(B,)`` in nats. (The
        LightningModule adds ``nll`` and ``bpd`` from ``log_likelihood``.)
        """
        log_pz, logdet = self._parts(x)
        log_px = log_pz + logdet
        loss = -log_px.mean()
        if self.weight_norm_l2 > 0:
            loss = loss + self.weight_norm_l2 * self.l2_penalty()
        return Terms(loss=loss, elbo=log_px, terms={"log_pz": log_pz, "logdet": logdet})

    def log_likelihood(self, x: Tensor, num_samples: int = 1) -> Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)``; ``num_samples`` is ignored (a flow needs no sampling).

        In training mode batch-norm layers use batch statistics (the training objective); in eval
        mode this is the model's density.
        """
        log_pz, logdet = self._parts(x)
        return log_pz + logdet

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` images ``(n, C, H, W)`` in ``[0, 1]``: ``z ~ N(0, temperature² I)`` pushed through the
        inverse flow, in eval mode (running statistics), with the logit preprocessing undone.

        Values the model puts outside ``[0, 1]`` (possible through the logit's ``alpha`` offset) are
        clipped, as in Dinh et al.'s code.

        Raises:
            ValueError: if ``temperature <= 0``.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        was_training = self.training
        self.eval()
        try:
            z = self.base((int(n),)).sample() * float(temperature)  # (n, D)
            y, _ = self.flow.inverse(z.reshape(int(n), *self.latent_shape))
        finally:
            self.train(was_training)
        return y.reshape(int(n), *self.data_shape).clamp_(0.0, 1.0)

    # -- helpers -------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``z = T(logit(y))``, flattened ``(B, D)``."""
        z, _ = self.flow(x)
        return z.reshape(z.shape[0], -1)

    def decode(self, z: Tensor) -> Tensor:
        """Inverse of ``encode`` (no clipping)."""
        y, _ = self.flow.inverse(z.reshape(z.shape[0], *self.latent_shape))
        return y.reshape(z.shape[0], *self.data_shape)

    def l2_penalty(self) -> Tensor:
        """Σ g² over weight-norm gains plus Σ scale² over coupling scales (float32 scalar)."""
        params = [
            p for n, p in self.named_parameters() if n.endswith(GAIN_SUFFIX) or n.endswith(".scale")
        ]
        if not params:
            return torch.zeros((), device=self.device)
        return torch.stack([p.float().pow(2).sum() for p in params]).sum()

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log p_base(z)`` and ``log|det|``, each ``(B,)`` in at least float32, with the checks."""
        if x.dim() != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"{type(self).__name__}: expected images of shape (B, {', '.join(map(str, self.data_shape))})"
                f", got {tuple(x.shape)}"
            )
        z, logdet = self.flow(x)
        z = z.reshape(z.shape[0], -1)
        log_pz = self.base.log_prob(z.to(logdet.dtype))
        if self.check_values:
            self._check(x, log_pz + logdet)
        return log_pz, logdet

    def _check(self, x: Tensor, log_px: Tensor) -> None:
        """One device sync: input range, then finiteness of log p (locating the culprit on failure)."""
        lo, hi, finite = torch.stack(
            [
                x.detach().amin().float(),
                x.detach().amax().float(),
                torch.isfinite(log_px).all().float(),
            ]
        ).tolist()
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"{type(self).__name__}: input values must lie in [0, 1] (dequantized pixels "
                f"(x + u) / 256); got min {lo:.6g}, max {hi:.6g}"
            )
        if not finite:
            raise_nonfinite(self.flow, x.detach(), prefix="flow", owner=type(self).__name__)


def _alternate(n: int, start: int = 0) -> list[int]:
    return [(start + i) % 2 for i in range(n)]


class RealNVP(FlowModel):
    """Multi-scale RealNVP for images (``model=realnvp``), e.g. 1x28x28 MNIST or 3x32x32 CIFAR-10.

    Each scale but the last: ``couplings_per_scale`` checkerboard couplings, a squeeze, and
    ``couplings_per_scale`` channel couplings, then half the channels are factored out to the base
    density. The last scale: ``final_couplings`` checkerboard couplings. Masks alternate. An optional
    invertible normalization follows every coupling. The s/t networks are weight-normalised ResNets.

    Args:
        data_shape: ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2 ** (num_scales - 1)``.
        num_scales: number of scales (2 = downscale once, the paper's CIFAR-10 setting).
        couplings_per_scale: checkerboard (and channel) couplings per non-final scale (3 in the paper).
        final_couplings: checkerboard couplings of the last scale (4 in the paper).
        hidden_channels: feature maps of the ResNets (64 for CIFAR-10).
        num_blocks: residual blocks per ResNet (8 for CIFAR-10).
        net_batch_norm: batch normalization inside the ResNets.
        norm: invertible normalization after each coupling: ``batch`` (running averages, the paper),
            ``act`` (ActNorm) or ``none``.
        bn_momentum: running-average momentum of the invertible batch norms.
        alpha: see ``FlowModel``.
        logit_symmetric: see ``FlowModel``.
        weight_norm_l2: see ``FlowModel``.
        check_values: see ``FlowModel``.

    Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP, sec. 3.6, 4.1.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_scales: int = 2,
        couplings_per_scale: int = 3,
        final_couplings: int = 4,
        hidden_channels: int = 64,
        num_blocks: int = 8,
        net_batch_norm: bool = True,
        norm: str | None = "batch",
        bn_momentum: float = 0.05,
        alpha: float | None = 0.05,
        logit_symmetric: bool = False,
        weight_norm_l2: float = 5e-5,
        check_values: bool = True,
    ) -> None:
        shape = tuple(int(s) for s in data_shape)
        if len(shape) != 3:
            raise ValueError(
                f"RealNVP needs image data (C, H, W), got shape {shape}; see RealNVPMLP"
            )
        if num_scales < 1 or couplings_per_scale < 1 or final_couplings < 1:
            raise ValueError("num_scales, couplings_per_scale and final_couplings must be >= 1")
        factor = 2 ** (num_scales - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"RealNVP: {shape[1]}x{shape[2]} images cannot be squeezed {num_scales - 1} time(s) "
                f"(height and width must be divisible by {factor}); lower num_scales"
            )
        net = partial(
            ResNetCouplingNet,
            hidden_channels=int(hidden_channels),
            num_blocks=int(num_blocks),
            batch_norm=bool(net_batch_norm),
        )
        levels: list[Transform] = []
        level_shape = shape
        for scale in range(num_scales):
            final = scale == num_scales - 1
            steps: list[Transform] = []
            n_checker = final_couplings if final else couplings_per_scale
            for parity in _alternate(n_checker):
                steps += _coupling(
                    level_shape, checkerboard_mask(level_shape, parity), net, norm, bn_momentum
                )
            if not final:
                steps.append(Squeeze())
                sq_shape = Squeeze().output_shape(level_shape)
                for parity in _alternate(couplings_per_scale):
                    steps += _coupling(
                        sq_shape, channel_mask(sq_shape, parity), net, norm, bn_momentum
                    )
                level_shape = (sq_shape[0] // 2, *sq_shape[1:])
            levels.append(CompositeTransform(steps))
        super().__init__(
            shape,
            MultiScale(levels, shape),
            alpha=alpha,
            logit_symmetric=logit_symmetric,
            weight_norm_l2=weight_norm_l2,
            check_values=check_values,
        )
        self.num_scales = int(num_scales)

    def _fix_hint(self) -> str:
        # The default model=realnvp (about 6M parameters on MNIST) takes minutes per few steps on
        # a CPU; the experiment is the same architecture sized for one (0.2M parameters).
        return (
            "use experiment=realnvp_mnist (RealNVP on dequantized MNIST, 0.2M parameters, sized "
            "for a CPU), or data=mnist / data=cifar10 with this model"
        )


class RealNVPMLP(FlowModel):
    """Flat RealNVP (``model=realnvp_mlp``): the image is flattened and ``num_couplings`` affine
    couplings with alternating checkerboard masks (in the image layout) and MLP s/t networks follow,
    each optionally followed by an invertible normalization. Fast on a CPU.

    Args:
        data_shape: ``(C, H, W)`` (or any shape; it is flattened).
        num_couplings: coupling layers (alternating masks; even is best).
        hidden: width of the MLPs.
        num_layers: hidden layers per MLP.
        norm: ``act`` (default: per-feature batch statistics of flat images transfer badly to
            running averages), ``batch`` or ``none`` after each coupling.
        bn_momentum: running-average momentum of the invertible batch norms.
        alpha: see ``FlowModel``.
        logit_symmetric: see ``FlowModel``.
        weight_norm_l2: see ``FlowModel``.
        check_values: see ``FlowModel``.

    Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_couplings: int = 8,
        hidden: int = 1024,
        num_layers: int = 1,
        norm: str | None = "act",
        bn_momentum: float = 0.05,
        alpha: float | None = 0.05,
        logit_symmetric: bool = False,
        weight_norm_l2: float = 0.0,
        check_values: bool = True,
    ) -> None:
        shape = tuple(int(s) for s in data_shape)
        if num_couplings < 1:
            raise ValueError(f"num_couplings must be >= 1, got {num_couplings}")
        d = math.prod(shape)
        net = partial(MLPCouplingNet, hidden=int(hidden), num_layers=int(num_layers))
        img = shape if len(shape) >= 2 else (d,)
        steps: list[Transform] = [Flatten(shape)]
        for parity in _alternate(num_couplings):
            mask = checkerboard_mask(img, parity).reshape(d)
            steps += _coupling((d,), mask, net, norm, bn_momentum)
        super().__init__(
            shape,
            CompositeTransform(steps),
            alpha=alpha,
            logit_symmetric=logit_symmetric,
            weight_norm_l2=weight_norm_l2,
            check_values=check_values,
        )


def _coupling(
    shape: tuple[int, ...],
    mask: Tensor,
    net: Callable[[int, int], nn.Module],
    norm: str | None,
    momentum: float,
) -> list[Transform]:
    steps: list[Transform] = [AffineCoupling(shape, mask, net)]
    layer = make_norm(norm, shape[0], momentum)
    if layer is not None:
        steps.append(layer)
    return steps


__all__ = ["FlowModel", "RealNVP", "RealNVPMLP", "make_norm"]
