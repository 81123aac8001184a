"""Invertible transforms with log-determinants: the protocol and the composite.

Direction, stated once for the whole package: ``forward`` maps **data -> noise**. Every transform
``T`` returns

* ``forward(x) -> (y, logabsdet)`` with ``y = T(x)`` and ``logabsdet = log |det dT/dx|`` per example,
* ``inverse(y) -> (x, logabsdet)`` with ``x = T^{-1}(y)`` and ``logabsdet = log |det dT^{-1}/dy|``,

so ``log p(x) = log p_base(T(x)) + forward-logabsdet`` and the two log-dets of a round trip cancel.
``logabsdet`` has shape ``(B,)`` and is accumulated in at least float32 (float64 stays float64),
whatever the dtype of the activations under autocast.

Reference: the transform interface of bayesiains/nflows (``transforms/base.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


class NonFiniteLogDetError(FloatingPointError):
    """A transform produced a NaN/inf log-determinant or output; the message names the transform."""


def acc_dtype(x: Tensor) -> torch.dtype:
    """Accumulation dtype for log-dets: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sum_except_batch(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(B, ...) -> (B,)`` sum in at least float32 (cast *before* summing, for bf16/fp16 inputs)."""
    return t.to(dtype or acc_dtype(t)).flatten(1).sum(1)


def describe(module: nn.Module) -> str:
    """``TypeName(extra_repr)``: a one-line description without the submodules."""
    extra = module.extra_repr()
    return f"{type(module).__name__}({extra})"


class Transform(nn.Module):
    """An invertible map with a tractable log-determinant (data -> noise in ``forward``).

    Subclasses implement ``forward`` and ``inverse``; those that change the shape of their input
    also override ``output_shape`` (shapes exclude the batch dimension).
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Event shape of ``forward``'s output for an input of event shape ``shape``."""
        return tuple(int(s) for s in shape)

    @torch.no_grad()
    def first_nonfinite(self, x: Tensor) -> tuple[Transform | None, Tensor]:
        """Re-run ``forward`` on ``x`` and return the innermost transform whose output or log-det is
        first non-finite (``None`` if all are finite), with the output reached.

        Only called after a check on the total log-det has failed, so it may be slow.
        """
        y, logdet = self(x)
        bad = not (bool(torch.isfinite(logdet).all()) and bool(torch.isfinite(y).all()))
        return (self if bad else None), y


class IdentityTransform(Transform):
    """``y = x`` with log-det 0 (a base case for tests and for models without preprocessing)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0], dtype=acc_dtype(x))

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y, y.new_zeros(y.shape[0], dtype=acc_dtype(y))


class CompositeTransform(Transform):
    """``T_n ∘ ... ∘ T_1``: applies ``transforms`` in order in ``forward``, reversed in ``inverse``.

    Log-dets are accumulated from ``x.new_zeros(batch)`` (device-safe) in at least float32.
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        for i, t in enumerate(self.transforms):
            if not isinstance(t, Transform):
                raise TypeError(
                    f"CompositeTransform: item {i} is a {type(t).__name__}, not a Transform"
                )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0], dtype=acc_dtype(x))
        for t in self.transforms:
            x, logdet = t(x)
            total = total + logdet.to(total.dtype)
        return x, total

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0], dtype=acc_dtype(y))
        for t in reversed(self.transforms):
            y, logdet = t.inverse(y)
            total = total + logdet.to(total.dtype)
        return y, total

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        for t in self.transforms:
            shape = t.output_shape(shape)
        return shape

    @torch.no_grad()
    def first_nonfinite(self, x: Tensor) -> tuple[Transform | None, Tensor]:
        for t in self.transforms:
            culprit, x = t.first_nonfinite(x)
            if culprit is not None:
                return culprit, x
        return None, x

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


def raise_nonfinite(
    root: Transform, x: Tensor, what: str = "log-det", prefix: str = "", owner: str | None = None
) -> None:
    """Locate the transform in ``root`` that first goes non-finite on ``x`` and raise, naming it.

    Call only after a cheap check on the total has failed (this re-runs the forward pass).

    Args:
        root: the transform whose forward pass went non-finite.
        x: its input.
        what: what was non-finite (for the message).
        prefix: attribute path of ``root`` in its owner (e.g. ``"flow"``), prepended to names.
        owner: name of the owner for the message (defaults to ``root``'s class name).

    Raises:
        NonFiniteLogDetError: always.
    """
    culprit, _ = root.first_nonfinite(x)
    if culprit is None:
        where = "no single transform reproduces it on a re-run (check the base log-density)"
    else:
        names = {m: n for n, m in root.named_modules()}
        path = ".".join(p for p in (prefix, names.get(culprit, "")) if p) or "<root>"
        where = f"first in {path}: {describe(culprit)}"
    raise NonFiniteLogDetError(f"non-finite {what} in {owner or type(root).__name__}; {where}")


__all__ = [
    "CompositeTransform",
    "IdentityTransform",
    "NonFiniteLogDetError",
    "Transform",
    "acc_dtype",
    "describe",
    "raise_nonfinite",
    "sum_except_batch",
]
