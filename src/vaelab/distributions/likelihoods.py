"""Likelihoods p(x | z): a decoder network plus an output distribution over the data shape."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vaelab.units import check_kind


def at_least_float32(t: Tensor) -> Tensor:
    """Upcast half/bfloat16 (autocast outputs) to float32; leave float32 and float64 alone."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def output_bias(net: nn.Module) -> Tensor | None:
    """The bias of the last Linear or (transposed) convolution of ``net``, or ``None``."""
    last = None
    for m in net.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            last = m
    return None if last is None or last.bias is None else last.bias


class IndependentBernoulli(Independent):
    """``Independent(Bernoulli(logits), n)`` with a ``log_prob`` fast both with and without autograd.

    Without autograd (evaluation: L_5000 spends most of its time here, 784 pixels for each of 5e7
    samples) it is ``log p(x) = sum_d x_d l_d - sum_d softplus(l_d)``, computed in float32 with one
    product-sum and one softplus pass: about 4x faster on CPU than torch's, equal up to float32
    rounding. The product-sum is a matmul, which autocast would run in bfloat16/float16: at
    trained-model logit scales (|l| ~ 5-10) that moved log p(x) by up to 3.8 nats. Autocast is
    switched off around it, so it runs in float32 (or float64) under every precision.

    Under autograd (training) it is torch's own ``-binary_cross_entropy_with_logits`` summed, bit
    for bit what ``Independent(Bernoulli(logits), n).log_prob`` gives (a test checks it) without
    the distribution's broadcasting overhead; its fused backward is cheaper than the
    product-sum's (forward + backward at batch 20: about half the time). The logits are float32
    already (``at_least_float32``), so autocast cannot lower its precision either. Everything else
    is torch's ``Independent``.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        n = self.reinterpreted_batch_ndims
        logits = at_least_float32(self.base_dist.logits)
        value = value.to(logits.dtype)
        if torch.is_grad_enabled():
            if value.shape != logits.shape:  # e.g. x (B, ...) against k samples' (k, B, ...)
                logits, value = torch.broadcast_tensors(logits, value)
            bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
            # Negated after the sum, on (…,) rather than on every pixel: the same bits (a sum
            # of negated terms is the negated sum, IEEE rounding is symmetric), one full-size
            # op and its backward fewer.
            return -bce.flatten(-n).sum(-1)
        logits = logits.flatten(-n)  # (…, D)
        value = value.flatten(-n)  # (…, D), broadcasts against logits
        with torch.autocast(logits.device.type, enabled=False):
            dot = torch.einsum("...d,...d->...", logits, value)  # (…,) in logits' dtype
        return dot - F.softplus(logits).sum(-1)


class Likelihood(nn.Module):
    """Base: ``forward(z) -> Distribution`` with event shape ``data_shape``.

    ``data_kinds`` lists what data the likelihood can model (``vaelab.units``:
    ``"binary"``, ``"dequantized"``, ``"unit"``).
    """

    data_kinds: tuple[str, ...] = ("binary", "dequantized", "unit")

    def __init__(self, net: nn.Module, data_shape: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.net = net
        self.data_shape = tuple(int(s) for s in data_shape)

    def check_data(self, data_kind: str) -> None:
        if check_kind(data_kind) not in self.data_kinds:
            raise ValueError(
                f"{type(self).__name__} cannot model {data_kind!r} data (it models "
                f"{' or '.join(self.data_kinds)} data). " + self._fix_hint()
            )

    def _fix_hint(self) -> str:
        return ""

    def check_values(self, x: Tensor) -> None:
        """Raise if ``x`` holds values this likelihood cannot model (default: accept)."""

    def forward(self, z: Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean_to_output(self, mean: Tensor) -> Tensor:
        """The network output that makes ``E[x|z]`` equal ``mean`` (identity by default)."""
        return mean

    @torch.no_grad()
    def init_from_data(self, mean: Tensor) -> None:
        """Set the output layer's bias so that, before training, ``E[x|z]`` is about the data mean
        (Burda et al. 2015 initialise the Bernoulli decoder's output bias to the marginal
        log-odds): training then starts from the marginal likelihood rather than from p = 1/2."""
        bias = output_bias(self.net)
        if bias is None:
            return
        target = self.mean_to_output(mean.detach().to(bias.device, torch.float32))
        if bias.numel() == target.numel():
            bias.copy_(target.reshape(bias.shape))
        elif target.dim() == 3 and bias.numel() == target.shape[0]:  # conv: one bias per channel
            bias.copy_(target.mean(dim=(1, 2)))
        else:
            raise ValueError(
                f"{type(self).__name__}.init_from_data: the output bias has {bias.numel()} "
                f"entries, which fits neither the data mean's {tuple(mean.shape)} nor its "
                "channels"
            )

    def mean(self, z: Tensor) -> Tensor:
        """The mean of p(x|z) (used for reconstructions and sample grids)."""
        return self(z).mean


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels with logits from ``net(z)``: for binary data only."""

    data_kinds = ("binary",)

    def _fix_hint(self) -> str:
        return (
            "Use data=binarized_mnist with this Bernoulli decoder, or a Gaussian likelihood for "
            "8-bit pixel data: model=vae_gaussian (VAE) or model.likelihood=gaussian (model=hvae)."
        )

    def mean_to_output(self, mean: Tensor) -> Tensor:
        # The marginal log-odds, clamped as in Burda et al.'s code (pixels that are always 0
        # in the training set would otherwise get an infinite bias).
        return torch.logit(mean.clamp(1e-3, 1 - 1e-3))

    def forward(self, z: Tensor) -> Independent:
        logits = at_least_float32(self.net(z))  # (…, C, H, W); float32 even under autocast
        return IndependentBernoulli(
            Bernoulli(logits=logits, validate_args=False), len(self.data_shape), validate_args=False
        )

    @staticmethod
    def check_values(x: Tensor) -> None:
        """Raise if ``x`` holds values other than 0 and 1."""
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            v = x[bad].flatten()[:3].tolist()
            raise ValueError(
                f"BernoulliLikelihood needs binary data in {{0, 1}}, but the batch holds values "
                f"such as {v}. Use data=binarized_mnist (binarize: dynamic|static|threshold), or a "
                "Gaussian likelihood for 8-bit pixel data."
            )


class GaussianLikelihood(Likelihood):
    """Independent Gaussian pixels: mean from ``net(z)``, standard deviation fixed or learned.

    A density: refused on binary data, where a Gaussian's density on the two values {0, 1} grows
    without bound as its std shrinks, so its "likelihood" measures nothing.

    Args:
        net: decoder network mapping z to ``data_shape``.
        data_shape: (C, H, W).
        std: the fixed standard deviation, or the initial one if ``learn_std``.
        learn_std: learn one log-std per sub-pixel (shared across examples).
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...] | list[int],
        std: float = 0.1,
        learn_std: bool = True,
        min_std: float = 1e-3,
    ) -> None:
        super().__init__(net, data_shape)
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        init = torch.full(self.data_shape, math.log(std))
        if learn_std:
            self.log_std = nn.Parameter(init)
        else:
            self.register_buffer("log_std", init)
        self.min_std = float(min_std)

    data_kinds = ("dequantized", "unit")

    def _fix_hint(self) -> str:
        return (
            "A density on {0, 1} is unbounded. For binarized data use a Bernoulli decoder: "
            "model=vae (VAE) or model.likelihood=bernoulli (model=hvae); for this Gaussian "
            "decoder use data=mnist."
        )

    def forward(self, z: Tensor) -> Independent:
        mean = at_least_float32(self.net(z))  # (…, C, H, W); float32 even under autocast
        std = self.log_std.exp() + self.min_std
        return Independent(
            Normal(mean, std.expand_as(mean), validate_args=False),
            len(self.data_shape),
            validate_args=False,
        )
