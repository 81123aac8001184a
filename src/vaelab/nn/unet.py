"""Noise-prediction networks ``eps_hat(z_t, t)`` for diffusion models: a small U-Net and an MLP.

Both map a noisy image ``z`` of shape ``(B, C, H, W)`` and a conditioning scalar per example
``t`` of shape ``(B,)`` (the variational diffusion model passes its log-SNR rescaled to about
``[0, 1]``) to a tensor of the image's shape. The last layer starts at zero, so an untrained
network predicts ``eps_hat = 0``. No probability code here.

Reference:
    Ho, Jain & Abbeel (2020), Denoising Diffusion Probabilistic Models (the U-Net layout, the
    sinusoidal embedding); Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models
    (conditioning on the rescaled log-SNR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaelab.nn.mlp import make_activation


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features of ``scale * t``: ``(B,) -> (B, dim)`` (``dim`` even).

    Reference: Vaswani et al. (2017), Attention Is All You Need (positional encoding).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = scale * t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).to(t.dtype)


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, and a skip connection."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """A small U-Net ``eps_hat(z, t)`` for 28x28 or 32x32 images.

    ``widths[i]`` feature maps at resolution ``H / 2^i`` (28 -> 14 -> 7 for two downsamplings,
    ``widths`` of length 3), ``num_res_blocks`` residual blocks per resolution on the way
    down and one more (reading the skip connection) on the way up, one block in the middle.

    Args:
        in_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2^(len(widths) - 1)``.
        widths: feature maps per resolution, e.g. ``[32, 64, 64]`` (named as ``NoiseMLP``'s
            hidden widths, so a config can swap one network for the other by delta).
        num_res_blocks: residual blocks per resolution (down path).
        emb_dim: width of the time embedding (default ``4 * widths[0]``).
        dropout: dropout inside the residual blocks.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        widths: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        emb_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in in_shape)
        channels = [int(ch) for ch in widths]
        if not channels or num_res_blocks < 1:
            raise ValueError("UNet: widths must be non-empty and num_res_blocks >= 1")
        f = 2 ** (len(channels) - 1)
        if h % f or w % f:
            raise ValueError(
                f"UNet: image size {h}x{w} is not divisible by 2^(len(widths) - 1) = {f}; "
                "use fewer entries in widths (e.g. model.net.widths=[32,64,64] for 28x28)"
            )
        self.in_shape = (c, h, w)
        ch0 = channels[0]
        self.emb_dim = int(emb_dim) if emb_dim is not None else 4 * ch0
        self.emb_in = ch0 if ch0 % 2 == 0 else ch0 + 1
        self.emb = nn.Sequential(
            nn.Linear(self.emb_in, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim)
        )
        self.conv_in = nn.Conv2d(c, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [ch0]
        cur = ch0
        for i, ch in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cur, ch, self.emb_dim, dropout))
                cur = ch
                skips.append(cur)
            self.down.append(blocks)
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = ResBlock(cur, cur, self.emb_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(cur + skips.pop(), ch, self.emb_dim, dropout))
                cur = ch
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(
                    nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(cur, cur, 3, padding=1))
                )
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, c, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.act = nn.SiLU()

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``(B, C, H, W), (B,) -> (B, C, H, W)``."""
        emb = self.emb(timestep_embedding(t, self.emb_in))  # (B, emb_dim)
        h = self.conv_in(z)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid(h, emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(self.act(self.norm_out(h)))


class NoiseMLP(nn.Module):
    """An MLP ``eps_hat(z, t)``: the flattened image and a time embedding in, the image out.

    Args:
        in_shape: ``(C, H, W)``.
        widths: widths of the hidden layers.
        emb_dim: width of the sinusoidal time embedding (even).
        activation: activation name (``vaelab.nn.make_activation``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        widths: Sequence[int] = (512, 512),
        emb_dim: int = 32,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        d = math.prod(self.in_shape)
        self.emb_dim = int(emb_dim) + int(emb_dim) % 2
        layers: list[nn.Module] = []
        width = d + self.emb_dim
        for hdim in widths:
            layers += [nn.Linear(width, int(hdim)), make_activation(activation)]
            width = int(hdim)
        out = nn.Linear(width, d)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``(B, C, H, W), (B,) -> (B, C, H, W)``."""
        emb = timestep_embedding(t, self.emb_dim)  # (B, emb_dim)
        h = torch.cat([z.flatten(1), emb.to(z.dtype)], dim=1)
        return self.net(h).reshape(z.shape)


__all__ = ["NoiseMLP", "ResBlock", "UNet", "timestep_embedding"]
