"""Volume-preserving reshapes (data -> noise in ``forward``): squeeze, flatten, multi-scale factor-out.

Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP, sec. 3.6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.flows.base import Transform, acc_dtype


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0], dtype=acc_dtype(x))


class Squeeze(Transform):
    """Space-to-depth: ``(B, C, H, W) -> (B, 4C, H/2, W/2)``; log-det 0.

    Output channel ``(2i + j) * C + c`` holds sub-pixel ``(i, j)`` of each 2x2 block of input channel
    ``c``, so the first half of the channels is the top row of every block (all colours) and the second
    half the bottom row: a channel mask after a squeeze splits differently from a checkerboard before it.
    """

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = (int(s) for s in shape)
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze: height and width must be even, got {h}x{w}")
        return (4 * c, h // 2, w // 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(
                f"Squeeze: expected (B, C, H, W) with even H and W, got {tuple(x.shape)}"
            )
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(
            0, 3, 5, 1, 2, 4
        )  # (B, 2, 2, C, H/2, W/2)
        return y.reshape(b, 4 * c, h // 2, w // 2), _zeros(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.dim() != 4 or y.shape[1] % 4:
            raise ValueError(f"Squeeze.inverse: expected (B, 4C, H, W), got {tuple(y.shape)}")
        b, c4, h, w = y.shape
        c = c4 // 4
        x = y.reshape(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, H, 2, W, 2)
        return x.reshape(b, c, 2 * h, 2 * w), _zeros(y)


class Flatten(Transform):
    """``(B, *event_shape) -> (B, D)``; log-det 0 (for flat, MLP-coupling flows)."""

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (math.prod(int(s) for s in shape),)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"Flatten: expected (B, *{self.event_shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1), _zeros(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y.reshape(y.shape[0], *self.event_shape), _zeros(y)


class MultiScale(Transform):
    """Multi-scale architecture with factor-out: ``level_0``, factor out half the channels, ``level_1``,
    ..., then the last level keeps everything.

    The factored-out halves go straight to the base density; ``forward`` returns all of them and the
    last level's output flattened and concatenated, ``(B, D)``, in the order they left.

    Args:
        levels: the transforms of each scale (the non-final ones usually end with a ``Squeeze`` and
            channel couplings).
        input_shape: event shape ``(C, H, W)`` entering ``levels[0]``.

    Raises:
        ValueError: at construction, if a non-final level outputs fewer than 2 channels.
    """

    def __init__(self, levels: Sequence[Transform], input_shape: Sequence[int]) -> None:
        super().__init__()
        if not levels:
            raise ValueError("MultiScale needs at least one level")
        self.levels = nn.ModuleList(levels)
        self.input_shape = tuple(int(s) for s in input_shape)
        shape = self.input_shape
        out_shapes: list[tuple[int, ...]] = []  # shape leaving to the base at each level
        keep_shapes: list[tuple[int, ...]] = []  # shape continuing to the next level
        for i, level in enumerate(self.levels):
            shape = level.output_shape(shape)
            if i == len(self.levels) - 1:
                out_shapes.append(shape)
                keep_shapes.append(())
                break
            c = shape[0]
            if c < 2:
                raise ValueError(
                    f"MultiScale: level {i} outputs {c} channel(s) of shape {shape}; factoring out "
                    "half needs at least 2 (put a Squeeze at the end of the level)"
                )
            out_shapes.append((c - c // 2, *shape[1:]))
            shape = (c // 2, *shape[1:])
            keep_shapes.append(shape)
        self.out_shapes = out_shapes
        self.keep_shapes = keep_shapes
        self.sizes = [math.prod(s) for s in out_shapes]

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, factored_out={self.out_shapes}"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return (sum(self.sizes),)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = _zeros(x)
        zs: list[Tensor] = []
        h = x
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            h, logdet = level(h)
            total = total + logdet.to(total.dtype)
            if i < last:
                z, h = h.split([self.out_shapes[i][0], self.keep_shapes[i][0]], dim=1)
                zs.append(z.reshape(z.shape[0], -1))
        zs.append(h.reshape(h.shape[0], -1))
        return torch.cat(zs, dim=1), total  # (B, D)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if y.dim() != 2 or y.shape[1] != sum(self.sizes):
            raise ValueError(
                f"MultiScale.inverse: expected (B, {sum(self.sizes)}), got {tuple(y.shape)}"
            )
        total = _zeros(y)
        pieces = y.split(self.sizes, dim=1)
        b = y.shape[0]
        h = pieces[-1].reshape(b, *self.out_shapes[-1])
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([pieces[i].reshape(b, *self.out_shapes[i]), h], dim=1)
            h, logdet = self.levels[i].inverse(h)
            total = total + logdet.to(total.dtype)
        return h, total

    @torch.no_grad()
    def first_nonfinite(self, x: Tensor) -> tuple[Transform | None, Tensor]:
        h = x
        for i, level in enumerate(self.levels):
            culprit, h = level.first_nonfinite(h)
            if culprit is not None:
                return culprit, h
            if i < len(self.levels) - 1:
                h = h[:, self.out_shapes[i][0] :]
        return None, h


__all__ = ["Flatten", "MultiScale", "Squeeze"]
