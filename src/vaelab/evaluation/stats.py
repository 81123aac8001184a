"""Means over images with their standard errors, exact under DDP.

Every figure vaelab reports at validation and test time is a mean over images. ``MeanWithError``
keeps three float64 sums per figure (count, sum, sum of squares); torchmetrics reduces each by
summation over processes, so the mean and its standard error are those of the whole split, whatever
the number of processes and however unevenly the images are dealt to them.

The standard error is ``s / sqrt(n)`` with ``s`` the sample standard deviation (``n - 1`` in the
denominator): the uncertainty of the test-set mean due to the finite test set. It does not include
the Monte-Carlo noise of the estimator within each image (for ``L_k`` that is far smaller).
A NaN in any value makes the mean and the error NaN: it is reported, never averaged away.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class MeanWithError(Metric):
    """Streaming mean and standard error of per-image values, reduced over processes by sums.

    ``update(values)`` takes any shape (each element is one image's value); ``compute()`` returns
    ``(mean, standard_error)`` as float64 scalars. With one image the error is NaN (undefined).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # float64: sums of ~1e4 squares of ~100-nat values keep ~1e-12 relative precision.
        for name in ("count", "total", "total_sq"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        v = values.detach().reshape(-1).to(torch.float64)
        self.count += v.numel()
        self.total += v.sum()
        self.total_sq += (v * v).sum()

    def compute(self) -> tuple[Tensor, Tensor]:
        return mean_and_standard_error(self.count, self.total, self.total_sq)


def mean_and_standard_error(
    count: Tensor, total: Tensor, total_sq: Tensor
) -> tuple[Tensor, Tensor]:
    """``(mean, s / sqrt(n))`` from ``n``, ``sum x`` and ``sum x^2`` (s: sample std, ``n - 1``)."""
    n = count.to(torch.float64)
    mean = total / n
    # sum (x - mean)^2 = sum x^2 - n mean^2; clamp the rounding residue of a constant column at 0.
    ss = (total_sq - n * mean * mean).clamp(min=0.0)
    var = ss / (n - 1) if float(n) > 1 else torch.full_like(mean, math.nan)
    return mean, torch.sqrt(var / n)


def format_with_error(value: float, error: float | None, digits: int = 2) -> str:
    """``98.68 ± 0.25`` (the error to ``digits`` decimals, the value to the same place)."""
    if error is None:
        return f"{value:.{digits + 2}f}"
    if not math.isfinite(error) or error == 0:
        return f"{value:.{digits + 2}f} ± {error:.{digits}f}"
    # Enough decimals that the error shows two significant figures (at least ``digits``).
    places = max(digits, 1 - math.floor(math.log10(abs(error))))
    return f"{value:.{places}f} ± {error:.{places}f}"


__all__ = ["MeanWithError", "format_with_error", "mean_and_standard_error"]
