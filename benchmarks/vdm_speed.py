"""Time vaelab's VDM training epoch against a hand-written VDM step of the same network.

Arms (same MNIST training images, batch size, thread count, device; alternating, as in
``benchmarks/epoch_speed.py``):

- ``hand``: a VDM written here with none of vaelab's code: an ``nn.Sequential`` MLP noise network
  (the flattened image and a sinusoidal embedding of the rescaled log-SNR in, widths as the
  config's ``model.net.widths``), the paper's monotone schedule network, the continuous-time
  loss with the low-discrepancy sampler, the analytic prior KL, the binary decoder as
  ``binary_cross_entropy_with_logits``, ``prediction=binary_posterior`` as in the experiment,
  fused Adam, ``torch.bernoulli`` on a pre-loaded float tensor. **The baseline of every ratio.**
- ``vaelab``: one ``vaelab-train`` epoch of ``experiment=vdm_binarized_mnist`` through the
  Trainer that ``vaelab.train.build`` makes (``benchmarks/timing.py``; callbacks, CSV logger,
  checkpoint at the end of the epoch), the same model, Adam and batch size.

Reports per arm the epoch wall seconds, ``step_median_ms`` (median interval between optimizer
steps: robust to other processes' bursts of load) and the ratios to ``hand``.

    python benchmarks/vdm_speed.py --train-images 12800 --reps 3 --json vdm.json
    python benchmarks/vdm_speed.py --max-ratio 1.15      # exit 1 if vaelab/hand is above it

Reference: Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from epoch_speed import load_train, plain_pytorch_environment, summarise  # benchmarks/ on path
from hydra import compose, initialize_config_dir
from timing import run_vaelab_epoch, settle, write_json
from torch import nn

from vaelab.config import config_dir


# -- the hand-written VDM (no vaelab code) -------------------------------------------------------
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
        ends, _ = self.g(torch.tensor([0.0, 1.0]))
        gt, dgt = self.g(t)
        gamma = g0 + (g1 - g0) * (gt - ends[0]) / (ends[1] - ends[0])
        dgamma = (g1 - g0) * dgt / (ends[1] - ends[0])
        a, s = torch.sigmoid(-gamma).sqrt()[:, None], torch.sigmoid(gamma).sqrt()[:, None]
        eps = torch.randn_like(x)
        z = a * x + s * eps
        t_in = (gamma - self.g_min) / (self.g_max - self.g_min)
        out = self.net(torch.cat([z, embed(t_in, self.emb)], 1))
        eps_hat = (z - a * torch.tanh(a * z / s**2 + out)) / s
        diffusion = 0.5 * dgamma * (eps - eps_hat).pow(2).sum(1)
        a1, s1 = torch.sigmoid(-g1).sqrt(), torch.sigmoid(g1).sqrt()
        prior = 0.5 * (s1**2 + (a1 * x) ** 2 - 1 - 2 * torch.log(s1)).sum(1)
        a0, s0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
        z0 = a0 * x + s0 * torch.randn_like(x)
        recon = F.binary_cross_entropy_with_logits(2 * a0 * z0 / s0**2, k, reduction="none")
        return (prior + recon.sum(1) + diffusion).mean()


def run_hand(images: torch.Tensor, cfg) -> tuple[float, list[float], float, int]:
    torch.manual_seed(cfg.seed)
    sch = cfg.model.schedule
    model = HandVDM(
        [int(w) for w in cfg.model.net.widths], 32, float(sch.gamma_min), float(sch.gamma_max)
    )
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.optimizer.lr), fused=True)
    data = images.reshape(images.shape[0], -1).float() / 255.0
    bs = int(cfg.data.batch_size)
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


def compose_cfg(args: argparse.Namespace, out: Path):
    overrides = [
        "experiment=vdm_binarized_mnist",
        "trainer.max_epochs=1",
        "trainer.max_time=null",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu",
        "test=false",
        f"paths.output_dir={out}",
        f"paths.data_dir={args.data_dir}",
        "callbacks.model_checkpoint.monitor=null",
        "~callbacks.images",
        f"data.batch_size={args.batch_size}",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--train-images", type=int, default=12800)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    p.add_argument("--max-ratio", type=float, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides of the vaelab arm")
    args = p.parse_args()
    out = Path(f"logs/benchmarks/vdm_speed/{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    data = load_train(args.data_dir, args.train_images)
    cfg = compose_cfg(args, out)
    runs: dict[str, list] = {"hand": [], "vaelab": []}
    for _ in range(args.reps):
        settle()
        with plain_pytorch_environment():
            runs["hand"].append(run_hand(data, cfg))
        runs["vaelab"].append(run_vaelab_epoch(cfg, data))
    res = summarise(runs)
    result = {
        "benchmark": "vdm_speed",
        "experiment": "vdm_binarized_mnist",
        "net_widths": list(cfg.model.net.widths),
        "batch_size": args.batch_size,
        "train_images": int(data.shape[0]),
        "threads": torch.get_num_threads(),
        "overrides": args.overrides,
        "arms": res,
        "errors": {},
    }
    write_json(args.json, result, True)
    for arm, d in res.items():
        print(
            f"{arm:7s} epoch {d['epoch_median_s']:.2f} s ({d['optimizer_steps']} steps), "
            f"step median {d['step_median_ms']:.2f} ms, ratio {d['ratio']:.3f}, "
            f"step ratio {d.get('step_ratio', float('nan')):.3f}, cpu ratio {d['cpu_ratio']:.3f}"
        )
    if args.max_ratio is not None and res["vaelab"]["ratio"] > args.max_ratio:
        raise SystemExit(f"vaelab / hand = {res['vaelab']['ratio']} > {args.max_ratio}")


if __name__ == "__main__":
    main()
