"""Fixed preprocessing as transforms with their log-dets (data -> noise in ``forward``).

vaelab's DataModules deliver 8-bit images already uniformly dequantized, ``y = (x + u) / 256`` in
``[0, 1)`` with ``u ~ U[0, 1)`` (``vaelab.data.transforms.dequantize``). The model's density is on that
``y``; the constant ``D ln 256`` of the scaling back to pixel units is added by
``vaelab.evaluation.bits_per_dim(..., "dequantized")``. What remains to do inside the model is the logit
transform below, whose log-det makes ``log p(y)`` exact, so bits/dim are always in pixel space.

Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP, sec. 4.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.flows.base import Transform, acc_dtype, sum_except_batch


class LogitTransform(Transform):
    """``z = logit(p)`` with ``p = alpha + (1 - alpha) y`` (the paper's form), elementwise.

    ``log |dz/dy| = log(1 - alpha) - log p - log(1 - p)`` summed over all dims; computed as
    ``log(1 - alpha) + softplus(z) + softplus(-z)`` for stability. ``inverse`` maps back with
    ``y = (sigmoid(z) - alpha) / (1 - alpha)``.

    Args:
        alpha: in ``[0, 1)``; keeps ``p`` away from 0 (0.05 for CIFAR-10 in the paper).
        symmetric: use ``p = alpha + (1 - 2 alpha) y`` instead, so ``p`` lies in
            ``[alpha, 1 - alpha]`` at both ends (what Dinh et al.'s released code does).

    Note:
        ``p`` is clamped to ``[eps/2, 1 - eps/2]`` of its dtype (float32: ``[6e-8, 1 - 6e-8]``), so
        the boundary values 0 and 1 give large but finite ``z``. This matters: in float32,
        ``(255 + u) / 256`` rounds to exactly 1.0 for ``u > 1 - 2^-17`` (about 2 pixels per MNIST
        epoch). Inside ``[0, 1)`` nothing changes.
    """

    def __init__(self, alpha: float = 0.05, symmetric: bool = False) -> None:
        super().__init__()
        alpha = float(alpha)
        if not 0.0 <= alpha < (0.5 if symmetric else 1.0):
            raise ValueError(f"alpha must be in [0, {'0.5' if symmetric else '1'}), got {alpha}")
        self.alpha = alpha
        self.symmetric = bool(symmetric)
        self.slope = (1.0 - 2.0 * alpha) if symmetric else (1.0 - alpha)
        self.log_slope = math.log(self.slope)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, symmetric={self.symmetric}"

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        dt = acc_dtype(y)
        edge = torch.finfo(dt).eps / 2
        p = (self.alpha + self.slope * y.to(dt)).clamp(edge, 1.0 - edge)
        z = torch.log(p) - torch.log1p(-p)
        logdet = self.log_slope + F.softplus(z) + F.softplus(-z)  # = log(slope) - log p - log(1-p)
        return z, sum_except_batch(logdet)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        dt = acc_dtype(z)
        z = z.to(dt)
        y = (torch.sigmoid(z) - self.alpha) / self.slope
        logdet = -(self.log_slope + F.softplus(z) + F.softplus(-z))
        return y, sum_except_batch(logdet)


__all__ = ["LogitTransform"]
