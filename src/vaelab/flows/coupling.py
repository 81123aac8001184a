"""Affine coupling layers with checkerboard and channel masks (data -> noise in ``forward``).

With a binary mask ``b`` (1 = passed through unchanged, 0 = transformed)::

    y = b ⊙ x + (1 - b) ⊙ (x ⊙ exp(s(b ⊙ x)) + t(b ⊙ x)),   s = scale · tanh(s_raw)
    log |det dy/dx| = Σ (1 - b) ⊙ s

``scale`` is a learned per-channel factor (initialised to 1) that bounds ``s`` smoothly.

Masks that vary only along the channel axis (channel masks, and any mask on flat vectors) are
applied by *splitting*: the network sees only the unchanged channels and predicts ``s, t`` for the
others. Masks that vary in space (checkerboards) are applied by multiplication: the network sees
``b ⊙ x`` and its outputs are multiplied by ``1 - b``.

Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP, sec. 3.3-3.4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vaelab.flows.base import Transform, sum_except_batch

NetFactory = Callable[[int, int], nn.Module]


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """Float 0/1 mask of ``shape`` ``(C, H, W)`` (or ``(D,)`` / ``(H, W)`` read as an image) that is 1
    where ``(i + j + parity)`` is even; the same pattern in every channel.

    For a flat shape ``(D,)`` the pattern alternates along the vector (every other entry).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        idx = torch.arange(shape[0])
        return ((idx + parity) % 2 == 0).float()
    h, w = shape[-2:]
    ii = torch.arange(h)[:, None]
    jj = torch.arange(w)[None, :]
    board = ((ii + jj + parity) % 2 == 0).float()
    return board.expand(shape).clone()


def channel_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """Float 0/1 mask of ``shape`` ``(C, ...)``: 1 on the first ``C // 2`` channels (parity 0) or on
    the last ``C - C // 2`` channels (parity 1)."""
    shape = tuple(int(s) for s in shape)
    c = shape[0]
    if c < 2:
        raise ValueError(f"channel_mask needs at least 2 channels, got shape {shape}")
    keep = torch.zeros(c)
    if parity % 2 == 0:
        keep[: c // 2] = 1.0
    else:
        keep[c // 2 :] = 1.0
    return keep.reshape(c, *([1] * (len(shape) - 1))).expand(shape).clone()


class AffineCoupling(Transform):
    """Affine coupling ``y = b ⊙ x + (1 - b) ⊙ (x ⊙ exp(s) + t)`` with ``s = scale · tanh(·)``.

    Args:
        event_shape: shape of one input without the batch dim, ``(C, H, W)`` or ``(D,)``.
        mask: 0/1 tensor of exactly ``event_shape`` (1 = passed through). Must hold both values.
        net_factory: ``(in_channels, out_channels) -> nn.Module`` building the s/t network. For a
            spatial mask it maps ``(B, C, ...) -> (B, 2C, ...)``; for a channel (or flat) mask
            ``(B, C_kept, ...) -> (B, 2 C_changed, ...)``. The first half of the output channels is
            ``s_raw``, the second ``t``.

    Raises:
        ValueError: at construction, when the mask does not fit ``event_shape`` or is not a proper
            0/1 split; at call time, when the input's shape is not ``(B, *event_shape)``.
    """

    def __init__(self, event_shape: Sequence[int], mask: Tensor, net_factory: NetFactory) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if tuple(mask.shape) != self.event_shape:
            raise ValueError(
                f"AffineCoupling: mask of shape {tuple(mask.shape)} does not fit inputs of shape "
                f"{self.event_shape} (they must be equal)"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("AffineCoupling: mask must contain only 0 and 1")
        n_keep = int(mask.sum())
        if n_keep == 0 or n_keep == mask.numel():
            raise ValueError(
                "AffineCoupling: mask must pass some entries through (1) and transform others (0); "
                f"got {'all zeros' if n_keep == 0 else 'all ones'}"
            )
        channels = self.event_shape[0]
        flat = mask.reshape(channels, -1)
        self.split = bool((flat == flat[:, :1]).all())  # constant along all non-channel dims
        if self.split:
            keep = flat[:, 0].bool()
            keep_idx = torch.nonzero(keep).flatten()
            change_idx = torch.nonzero(~keep).flatten()
            order = torch.cat([keep_idx, change_idx])
            self.register_buffer("keep_idx", keep_idx, persistent=False)
            self.register_buffer("change_idx", change_idx, persistent=False)
            self.register_buffer("unperm", torch.argsort(order), persistent=False)
            n_change = int(change_idx.numel())
            self.net = net_factory(int(keep_idx.numel()), 2 * n_change)
            scale_shape = (n_change, *([1] * (len(self.event_shape) - 1)))
        else:
            self.register_buffer("mask", mask, persistent=False)
            self.net = net_factory(channels, 2 * channels)
            scale_shape = (channels, *([1] * (len(self.event_shape) - 1)))
        self.scale = nn.Parameter(torch.ones(scale_shape))
        self.mask_kind = "channel" if self.split else "spatial"
        self.passed = n_keep

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, mask={self.mask_kind}, passed={self.passed}"

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"AffineCoupling: expected input of shape (B, {', '.join(map(str, self.event_shape))})"
                f", got {tuple(x.shape)}"
            )

    def _s_t(self, h: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
        s_raw, t = h.chunk(2, dim=1)
        s = self.scale * torch.tanh(s_raw)  # float32 where the net ran in bf16 (scale is fp32)
        if keep is not None:
            s = s * (1.0 - keep)
            t = t * (1.0 - keep)
        return s, t

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.keep_idx), x.index_select(1, self.change_idx)

    def _merge(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([kept, changed.to(kept.dtype)], dim=1).index_select(1, self.unperm)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.split:
            x_keep, x_change = self._split(x)
            s, t = self._s_t(self.net(x_keep), None)
            y_change = x_change * torch.exp(s) + t
            return self._merge(x_keep, y_change), sum_except_batch(s)
        keep = self.mask.to(x.dtype)
        s, t = self._s_t(self.net(x * keep), keep)
        y = (x * torch.exp(s) + t).to(x.dtype)
        return y, sum_except_batch(s)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check(y)
        if self.split:
            y_keep, y_change = self._split(y)
            s, t = self._s_t(self.net(y_keep), None)
            x_change = (y_change - t) * torch.exp(-s)
            return self._merge(y_keep, x_change), -sum_except_batch(s)
        keep = self.mask.to(y.dtype)
        s, t = self._s_t(self.net(y * keep), keep)
        x = ((y - t) * torch.exp(-s)).to(y.dtype)
        return x, -sum_except_batch(s)


__all__ = ["AffineCoupling", "NetFactory", "channel_mask", "checkerboard_mask"]
