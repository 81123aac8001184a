"""Normalization layers as invertible transforms (data -> noise in ``forward``).

* ``InvertibleBatchNorm``: per-channel ``(x - mean) / sqrt(var + eps) * exp(log_gamma) + beta`` with
  batch statistics in training (running averages are updated) and running statistics in eval mode
  and in ``inverse``. Its log-det treats the statistics as constants:
  ``Σ_c (log_gamma_c - ½ log(var_c + eps)) * (H W)``.
* ``ActNorm``: per-channel ``(x + bias) * exp(log_scale)``, initialised from the first training
  batch so that its outputs have zero mean and unit variance per channel.

Channels are dim 1; any trailing dims (H, W) share the per-channel parameters. Statistics and
log-dets are computed in at least float32.

References:
    Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP, sec. 3.7.
    Kingma & Dhariwal (2018), Glow: Generative Flow with Invertible 1x1 Convolutions, sec. 3.1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vaelab.flows.base import Transform, acc_dtype


def _bshape(x: Tensor) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector against ``x``: ``(1, C, 1, ...)``."""
    return (1, x.shape[1], *([1] * (x.dim() - 2)))


def _check_channels(name: str, x: Tensor, num_features: int) -> None:
    if x.dim() < 2 or x.shape[1] != num_features:
        raise ValueError(f"{name}: expected input (B, {num_features}, ...), got {tuple(x.shape)}")


class InvertibleBatchNorm(Transform):
    """Batch normalization as a bijection with running statistics.

    In training mode ``forward`` normalises with the batch mean and (biased) variance over all but
    the channel dim, and updates the running averages; in eval mode, and always in ``inverse``, it
    uses the running averages (so ``inverse`` is exact for the eval-mode ``forward``).

    Args:
        num_features: number of channels C (dim 1 of the input).
        momentum: running average update ``r <- (1 - momentum) r + momentum * batch``.
        eps: added to the variance.
        affine: learn ``log_gamma`` and ``beta`` (initialised to 0).
    """

    def __init__(
        self, num_features: int, momentum: float = 0.05, eps: float = 1e-4, affine: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.num_features = int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.register_buffer("running_mean", torch.zeros(self.num_features))
        self.register_buffer("running_var", torch.ones(self.num_features))
        if affine:
            self.log_gamma = nn.Parameter(torch.zeros(self.num_features))
            self.beta = nn.Parameter(torch.zeros(self.num_features))
        else:
            self.register_buffer("log_gamma", torch.zeros(self.num_features))
            self.register_buffer("beta", torch.zeros(self.num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dt = acc_dtype(x)
        if not self.training:
            return self.running_mean.to(dt), self.running_var.to(dt)
        dims = [0, *range(2, x.dim())]
        xf = x.to(dt)
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        return mean, var

    def _logdet_per_example(self, x: Tensor, var: Tensor) -> Tensor:
        dt = acc_dtype(x)
        per_pos = math.prod(x.shape[2:]) if x.dim() > 2 else 1
        ld = (self.log_gamma.to(dt) - 0.5 * torch.log(var + self.eps)).sum() * per_pos
        return ld.expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_channels("InvertibleBatchNorm", x, self.num_features)
        mean, var = self._stats(x)
        shape = _bshape(x)
        dt = mean.dtype
        scale = torch.exp(self.log_gamma.to(dt)) * torch.rsqrt(var + self.eps)
        y = (x.to(dt) - mean.view(shape)) * scale.view(shape) + self.beta.to(dt).view(shape)
        return y, self._logdet_per_example(x, var)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_channels("InvertibleBatchNorm", y, self.num_features)
        dt = acc_dtype(y)
        mean, var = self.running_mean.to(dt), self.running_var.to(dt)
        shape = _bshape(y)
        inv_scale = torch.exp(-self.log_gamma.to(dt)) * torch.sqrt(var + self.eps)
        x = (y.to(dt) - self.beta.to(dt).view(shape)) * inv_scale.view(shape) + mean.view(shape)
        return x, -self._logdet_per_example(y, var)


class ActNorm(Transform):
    """Per-channel affine ``y = (x + bias) * exp(log_scale)`` with data-dependent initialisation.

    The first ``forward`` in training mode sets ``bias = -mean`` and ``log_scale = -log(std + eps)``
    of that batch (per channel) and marks the layer initialised (a buffer, saved in checkpoints).
    Before that it is the identity. Under DDP (``torch.distributed`` initialised) the statistics
    are all-reduced, so every process initialises from the union of the first batches and the
    replicas hold identical parameters.

    Args:
        num_features: number of channels C (dim 1 of the input).
        eps: added to the standard deviation at initialisation.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.bias = nn.Parameter(torch.zeros(self.num_features))
        self.log_scale = nn.Parameter(torch.zeros(self.num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # Python mirror of the buffer: no device sync per call

    def extra_repr(self) -> str:
        return f"{self.num_features}, initialized={bool(self.initialized)}"

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        dims = [0, *range(2, x.dim())]
        xf = x.to(torch.float64)
        # Per-channel count, sum and sum of squares, summed over every process under DDP, so all
        # replicas start from the statistics of the union of their first batches (identical
        # parameters; each rank's own batch would leave them silently different).
        stats = torch.stack(
            [xf.new_full((x.shape[1],), x.numel() / x.shape[1]), xf.sum(dims), (xf * xf).sum(dims)]
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        n, total, total_sq = stats
        mean = total / n
        std = (total_sq / n - mean * mean).clamp(min=0.0).sqrt()
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _logdet(self, x: Tensor) -> Tensor:
        per_pos = math.prod(x.shape[2:]) if x.dim() > 2 else 1
        return (self.log_scale.to(acc_dtype(x)).sum() * per_pos).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_channels("ActNorm", x, self.num_features)
        if self.training and not self._known_initialized:
            if bool(self.initialized):  # e.g. loaded from a checkpoint
                self._known_initialized = True
            else:
                self._initialize(x)
        shape = _bshape(x)
        dt = acc_dtype(x)
        y = (x.to(dt) + self.bias.to(dt).view(shape)) * torch.exp(self.log_scale.to(dt)).view(shape)
        return y, self._logdet(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_channels("ActNorm", y, self.num_features)
        shape = _bshape(y)
        dt = acc_dtype(y)
        x = y.to(dt) * torch.exp(-self.log_scale.to(dt)).view(shape) - self.bias.to(dt).view(shape)
        return x, -self._logdet(y)


__all__ = ["ActNorm", "InvertibleBatchNorm"]
