"""A variational diffusion model written by hand, with none of vaelab's code: the baseline of
``benchmarks/vdm_speed.py``.

An ``nn.Sequential`` MLP noise network (flattened image and a sinusoidal embedding of the rescaled
log-SNR in), the paper's monotone schedule network with its derivative written out, the
continuous-time loss with the low-discrepancy sampler, the analytic prior KL, the binary decoder as
``binary_cross_entropy_with_logits``, eps_hat from a corrected independent-pixel posterior mean
(vaelab's ``prediction=binary_posterior``), fused Adam, ``torch.bernoulli`` on a pre-loaded float
tensor. ``tests/unit/test_handwritten_baseline.py`` checks it computes vaelab's loss.

Reference: Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn


def embed(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = 1000.0 * t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class HandVDM(nn.Module):
    def __init__(self, widths: list[int], emb: int, g_min: float, g_max: float) -> None:
        super().__init__()
        layers, w = [], 784 + emb
        for h in widths:
            layers += [nn.Linear(w, h), nn.SiLU()]
            w = h
        layers.append(nn.Linear(w, 784))
        self.net = nn.Sequential(*layers)
        self.emb, self.g_min, self.g_max = emb, g_min, g_max
        self.gamma0 = nn.Parameter(torch.tensor(g_min))
        self.raw = nn.Parameter(torch.tensor(g_max - g_min).expm1().log())
        self.w1, self.b1 = nn.Parameter(torch.ones(1, 1)), nn.Parameter(torch.zeros(1))
        self.l2 = nn.Linear(1, 1024)
        self.w3 = nn.Parameter(torch.randn(1, 1024) / 32)

    def g(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # g(t), g'(t)
        u = t[:, None]
        p = torch.sigmoid(F.linear(2 * (u - 0.5), self.l2.weight.abs(), self.l2.bias))
        w3 = self.w3.abs()
        g = F.linear(u, self.w1.abs(), self.b1) + F.linear(2 * (p - 0.5), w3) / 1024
        dg = self.w1.abs() + F.linear(4 * p * (1 - p) * self.l2.weight.abs().T, w3) / 1024
        return g.squeeze(1), dg.squeeze(1)

    def loss(self, k: torch.Tensor) -> torch.Tensor:
        b = k.shape[0]
        x = 2 * k - 1  # (B, 784)
        g0 = self.gamma0
        g1 = g0 + F.softplus(self.raw)
        t = torch.remainder(torch.rand(()) + torch.arange(b) / b, 1.0)
        # the draws in vaelab's order (t, then z_0's noise, then z_t's), so a test can compare
        a0, s0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
        z0 = a0 * x + s0 * torch.randn_like(x)
        eps = torch.randn_like(x)
        ends, _ = self.g(torch.tensor([0.0, 1.0]))
        gt, dgt = self.g(t)
        gamma = g0 + (g1 - g0) * (gt - ends[0]) / (ends[1] - ends[0])
        dgamma = (g1 - g0) * dgt / (ends[1] - ends[0])
        a, s = torch.sigmoid(-gamma).sqrt()[:, None], torch.sigmoid(gamma).sqrt()[:, None]
        z = a * x + s * eps
        t_in = (gamma - self.g_min) / (self.g_max - self.g_min)
        out = self.net(torch.cat([z, embed(t_in, self.emb)], 1))
        eps_hat = (z - a * torch.tanh(a * z / s**2 + out)) / s
        diffusion = 0.5 * dgamma * (eps - eps_hat).pow(2).sum(1)
        a1, s1 = torch.sigmoid(-g1).sqrt(), torch.sigmoid(g1).sqrt()
        prior = 0.5 * (s1**2 + (a1 * x) ** 2 - 1 - 2 * torch.log(s1)).sum(1)
        recon = F.binary_cross_entropy_with_logits(2 * a0 * z0 / s0**2, k, reduction="none")
        return (prior + recon.sum(1) + diffusion).mean()


def run_epoch(
    images: torch.Tensor,
    widths: list[int],
    gamma_min: float,
    gamma_max: float,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[float, list[float], float, int]:
    """One epoch over the uint8 ``images``: (wall s, step intervals s, CPU s, optimizer steps)."""
    torch.manual_seed(seed)
    model = HandVDM(widths, 32, gamma_min, gamma_max)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    data = images.reshape(images.shape[0], -1).float() / 255.0
    bs = int(batch_size)
    order = torch.randperm(data.shape[0])
    n = data.shape[0] // bs
    g = torch.Generator().manual_seed(0)
    steps: list[float] = []
    cpu0 = time.process_time()
    t0 = last = time.perf_counter()
    for i in range(n):
        now = time.perf_counter()
        if i:
            steps.append(now - last)
        last = now
        k = torch.bernoulli(data[order[i * bs : (i + 1) * bs]], generator=g)
        loss = model.loss(k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, steps, time.process_time() - cpu0, n
