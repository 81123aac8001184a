"""The loop a researcher would write by hand: the baseline of every ratio in epoch_speed.py.

No vaelab code is imported here (a test checks it). The model is plain ``nn.Sequential`` MLPs;
the loss is ``binary_cross_entropy_with_logits`` plus the analytic Gaussian KL (and, for a Markov
chain of two or more layers, the single-sample ``log q(z_t|z_{t-1}) - log p(z_t|z_{t+1})`` of the
lower layers, as in Burda et al.); the optimizer is fused Adam; the training images are pre-loaded
once as a float tensor of probabilities ``x / 255`` and binarized dynamically with one
``torch.bernoulli`` per batch, from a seeded generator.

    layers = [(50, (200, 200))]                        # the 784-200-200-50 VAE
    layers = [(100, (200, 200)), (50, (100, 100))]     # the IWAE paper's 2-layer model
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Layers = Sequence[tuple[int, Sequence[int]]]  # (latent_dim, hidden widths), bottom layer first
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear + tanh between every pair of sizes, no activation after the last Linear."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods)


class HandWrittenVAE(nn.Module):
    """A Markov chain of Gaussian layers over flattened binary images; one layer is the plain VAE."""

    def __init__(self, data_dim: int, layers: Layers) -> None:
        super().__init__()
        dims = [data_dim] + [int(d) for d, _ in layers]
        hidden = [tuple(int(h) for h in hs) for _, hs in layers]
        # q(z_t | z_{t-1}) and p(z_{t-1} | z_t) (p(x | z_1) for t = 1), hidden widths mirrored.
        self.enc = nn.ModuleList(
            mlp([dims[t], *hidden[t], 2 * dims[t + 1]]) for t in range(len(layers))
        )
        self.dec = mlp([dims[1], *hidden[0][::-1], data_dim])
        self.pri = nn.ModuleList(
            mlp([dims[t + 1], *hidden[t][::-1], 2 * dims[t]]) for t in range(1, len(layers))
        )

    def forward(self, x: Tensor) -> Tensor:
        """The negative ELBO, averaged over the batch ``x`` of shape (B, D)."""
        h, zs, eps, log_sig = x, [], [], []
        for enc in self.enc:
            mu, ls = enc(h).chunk(2, dim=-1)
            e = torch.randn_like(mu)
            h = mu + ls.exp() * e
            zs.append(h)
            eps.append(e)
            log_sig.append(ls)
        rec = F.binary_cross_entropy_with_logits(self.dec(zs[0]), x, reduction="none").sum(-1)
        # Top layer: analytic KL(N(mu, sigma^2) || N(0, 1)).
        kl = 0.5 * (mu.square() + (2 * ls).exp() - 1 - 2 * ls).sum(-1)
        # Lower layers: log q(z_t | .) - log p(z_t | z_{t+1}) at the sample (log 2 pi cancels).
        for t, pri in enumerate(self.pri):
            pm, pls = pri(zs[t + 1]).chunk(2, dim=-1)
            log_q = (-log_sig[t] - 0.5 * eps[t].square()).sum(-1)
            log_p = (-pls - 0.5 * ((zs[t] - pm) / pls.exp()).square()).sum(-1)
            kl = kl + log_q - log_p
        return (rec + kl).mean()


class HandLoop:
    """The hand-written training loop's state, one optimizer step per ``step()``: a fresh model,
    fused Adam, the images pre-loaded once as probabilities ``x / 255`` and a random order.

    ``step(i)`` trains on minibatch ``i`` of that order (``i`` is taken modulo ``num_batches``,
    so that ``benchmarks/interleaved_speed.py`` can keep stepping across epochs).
    """

    def __init__(
        self,
        images: Tensor,
        layers: Layers,
        batch_size: int,
        lr: float = 1e-3,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.data = (
            images.reshape(images.shape[0], -1).to(self.device).float() / 255.0
        ).contiguous()
        self.model = HandWrittenVAE(self.data.shape[1], layers).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, fused=True)
        self.g = torch.Generator(device=self.device).manual_seed(seed)
        self.batch_size = int(batch_size)
        self.num_batches = self.data.shape[0] // self.batch_size
        self.order = torch.randperm(self.data.shape[0], device=self.device)

    def step(self, i: int) -> None:
        bs, i = self.batch_size, i % self.num_batches
        x = torch.bernoulli(self.data[self.order[i * bs : (i + 1) * bs]], generator=self.g)
        loss = self.model(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def run_epoch(
    images: Tensor,
    layers: Layers,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[float, list[float], float, int]:
    """One epoch over the uint8 ``images`` (N, ...) with a fresh model and fused Adam.

    Returns (epoch wall seconds, step intervals in seconds, process CPU seconds, optimizer steps).
    The epoch is timed from the first batch's start to the end of the last step.
    """
    loop = HandLoop(images, layers, batch_size, lr, seed, device)
    n = loop.num_batches
    steps: list[float] = []
    cpu0 = time.process_time()
    t0 = last = time.perf_counter()
    for i in range(n):
        now = time.perf_counter()
        if i:
            steps.append(now - last)
        last = now
        loop.step(i)
    if loop.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, steps, time.process_time() - cpu0, n
