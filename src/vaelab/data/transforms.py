"""Vectorised batch transforms from uint8 images to model inputs (all on the batch's device)."""

from __future__ import annotations

import torch
from torch import Tensor

_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1


def to_unit(x: Tensor) -> Tensor:
    """uint8 -> float in [0, 1] (``x / 255``)."""
    return x.float().div_(255.0)


def dequantize(x: Tensor, g: torch.Generator) -> Tensor:
    """Uniform dequantization: ``(x + u) / 256`` with ``u ~ U[0, 1)``, in [0, 1).

    A continuous density on this y gives bits/dim in pixel space via ``bits_per_dim(..., "dequantized")``.
    """
    u = torch.rand(x.shape, generator=g, device=x.device)
    # In float32, (255 + u)/256 rounds up to exactly 1.0 for u > 1 - 2^-17 (~8 in 1e6 draws): keep
    # y < 1 so that logit-space models never see an infinity.
    return (x.float() + u).div_(256.0).clamp_(max=_BELOW_ONE)


def center(x: Tensor) -> Tensor:
    """No noise: the bin centres ``(x + 0.5) / 256`` (deterministic evaluation of a density)."""
    return (x.float() + 0.5).div_(256.0)


def dynamic_binarize(x: Tensor, g: torch.Generator) -> Tensor:
    """A fresh Bernoulli(x / 255) draw every time the batch is seen: ``1`` where ``u < x / 255``
    for ``u ~ U[0, 1)``, float32 0/1 like ``torch.bernoulli``'s.

    The same distribution as ``torch.bernoulli(x / 255)`` (``x = 0`` never fires, ``x = 255``
    always does), drawn as one ``torch.rand`` and an in-place comparison: on a CPU that takes
    0.36-0.37x the time of ``torch.bernoulli`` (0.14 ms less at batch 20, of a ~3 ms optimizer
    step; 0.65 ms less at batch 100; one thread, the two calls timed alternately). The
    draws differ from ``torch.bernoulli``'s for the same generator state, so a run's training
    noise differs from that of vaelab before this change; evaluation splits are still drawn with
    ``torch.bernoulli``, as every earlier run was evaluated on them.
    """
    p = to_unit(x)
    return torch.rand(p.shape, generator=g, device=p.device).lt_(p)


def threshold_binarize(x: Tensor) -> Tensor:
    """``x / 255 > 0.5``."""
    return (x > 127).float()


def hflip(x: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    """Flip each image left-right with probability ``p`` (random horizontal flips, CIFAR-10)."""
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
