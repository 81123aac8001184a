"""Time one training epoch through vaelab's Trainer against a bare PyTorch loop, in one process.

Both loops train the same model (built from the same Hydra config) on the same pre-loaded uint8
tensor with the same batch size, dynamic binarization and thread count; runs alternate
(bare, vaelab, bare, vaelab, ...). Ratios reported: of the median epoch times (``ratio``), the
median of the per-pair epoch ratios (``pair_ratio_median``, robust to drifts in machine speed),
and of the median step intervals, batch start to next batch start (``step_ratio``), which stays
meaningful when other processes load the machine in bursts, and of the process CPU time per
epoch (``cpu_ratio``), which other processes barely touch (use one thread: OMP_NUM_THREADS=1).
Optionally it also times L_5000 over the 10,000 MNIST test images.

    python benchmarks/epoch_speed.py                      # 784-200-200-50 VAE, batch 100
    python benchmarks/epoch_speed.py --model hvae --experiment iwae_vae_2layer
    python benchmarks/epoch_speed.py --ll --ll-images 10000   # + L_5000 over the test set
    python benchmarks/epoch_speed.py --plain-lightning        # + a minimal LightningModule
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from timing import run_plain_lightning, run_vaelab  # benchmarks/ is on sys.path

from vaelab.config import config_dir
from vaelab.data.transforms import dynamic_binarize


def compose_cfg(args: argparse.Namespace, out: Path):
    overrides = [
        f"model={args.model}",
        "data=binarized_mnist",
        f"data.batch_size={args.batch_size}",
        "trainer.max_epochs=1",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu" if args.device == "cpu" else "trainer.accelerator=gpu",
        "test=false",
        f"paths.output_dir={out}",
        f"paths.data_dir={args.data_dir}",
        "callbacks.model_checkpoint.monitor=null",
        "~callbacks.images",  # pictures read the test split, which the benchmark leaves empty
        f"seed={args.seed}",
    ]
    if args.experiment:
        overrides.insert(0, f"experiment={args.experiment}")
        overrides.append(f"data.batch_size={args.batch_size}")
    overrides += args.overrides
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_bare(
    cfg, data: torch.Tensor, device: torch.device
) -> tuple[float, list[float], list[float]]:
    """The same model, optimizer, batches and binarization in a plain PyTorch loop."""
    from hydra.utils import instantiate

    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model).to(device)
    opt = instantiate(cfg.optimizer)(model.parameters())
    data = data.to(device)
    bs = int(cfg.data.batch_size)
    g = torch.Generator(device=device).manual_seed(0)
    n_batches = data.shape[0] // bs
    steps: list[float] = []
    cpu0 = time.process_time()
    t0 = last = time.perf_counter()
    order = torch.randperm(data.shape[0], device=device)
    for i in range(n_batches):
        now = time.perf_counter()
        if i:
            steps.append(now - last)
        last = now
        x = dynamic_binarize(data[order[i * bs : (i + 1) * bs]], g)
        loss = model(x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, steps, [time.process_time() - cpu0]


def load_train(data_dir: str, n: int) -> torch.Tensor:
    from vaelab.data.mnist import _have_files, read_mnist_images

    if _have_files(data_dir):
        return read_mnist_images(data_dir, train=True)[:n]
    print(f"(no MNIST in {data_dir}: using random 8-bit images)")
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)


def time_ll(cfg, data_dir: str, num_images: int, k: int, batch: int) -> dict:
    """Seconds for L_k over ``num_images`` test images with the model of ``cfg`` (untrained weights;
    the cost does not depend on them)."""
    from hydra.utils import instantiate

    from vaelab.data.mnist import _have_files, read_mnist_images

    model = instantiate(cfg.model).eval()
    if _have_files(data_dir):
        x = read_mnist_images(data_dir, train=False)[:num_images]
    else:
        x = torch.randint(0, 256, (num_images, 1, 28, 28), dtype=torch.uint8)
    x = torch.bernoulli(x.float() / 255, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            model.log_likelihood(x[i : i + batch], k)
    return {
        "ll_images": int(x.shape[0]),
        "ll_k": k,
        "ll_seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="vae")
    p.add_argument("--experiment", default=None)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--reps", type=int, default=7, help="epochs timed for each loop (alternating)")
    p.add_argument("--train-images", type=int, default=55000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    p.add_argument(
        "--plain-lightning",
        action="store_true",
        help="also time a minimal LightningModule under a bare Trainer (Lightning's own floor)",
    )
    p.add_argument("--ll", action="store_true", help="also time L_k over the test images")
    p.add_argument("--ll-images", type=int, default=10000)
    p.add_argument("--ll-k", type=int, default=5000)
    p.add_argument("--ll-batch", type=int, default=500)
    p.add_argument(
        "--max-ratio", type=float, default=None, help="exit 1 if vaelab/bare exceeds this"
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args()

    out = Path("logs/benchmarks/epoch_speed")
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(args, out)
    data = load_train(args.data_dir, args.train_images)
    device = torch.device(args.device)
    bare, lab, bare_steps, lab_steps, bare_cpu, lab_cpu = [], [], [], [], [], []
    plain, plain_steps = [], []
    for _ in range(args.reps):
        if args.plain_lightning:
            t, _, st = run_plain_lightning(cfg, data)
            plain.append(t)
            plain_steps += st
        t, st, cp = run_bare(cfg, data, device)
        bare.append(t)
        bare_steps += st
        bare_cpu += cp
        t, cp, st = run_vaelab(cfg, data)
        lab.append(t)
        lab_steps += st
        lab_cpu.append(cp)
    result = {
        "model": args.model,
        "experiment": args.experiment,
        "batch_size": args.batch_size,
        "train_images": int(data.shape[0]),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "bare_epoch_s": [round(t, 3) for t in bare],
        "vaelab_epoch_s": [round(t, 3) for t in lab],
        "bare_median_s": round(statistics.median(bare), 3),
        "vaelab_median_s": round(statistics.median(lab), 3),
    }
    result["ratio"] = round(result["vaelab_median_s"] / result["bare_median_s"], 3)
    # Median over the adjacent (bare, vaelab) pairs of their epoch ratio: each pair ran seconds
    # apart, so a machine that speeds up or slows down over the run moves both alike.
    result["pair_ratio_median"] = round(statistics.median(v / b for b, v in zip(bare, lab)), 3)
    # Median step interval: robust to bursts of load from other processes on a shared machine.
    result["bare_step_median_ms"] = round(1e3 * statistics.median(bare_steps), 3)
    result["vaelab_step_median_ms"] = round(1e3 * statistics.median(lab_steps), 3)
    result["step_ratio"] = round(result["vaelab_step_median_ms"] / result["bare_step_median_ms"], 3)
    # CPU seconds this process spent per epoch (all its threads): nearly immune to other processes;
    # with one intra-op thread it equals wall time on an idle machine.
    result["bare_cpu_per_epoch_s"] = round(sum(bare_cpu) / args.reps, 3)
    result["vaelab_cpu_per_epoch_s"] = round(sum(lab_cpu) / args.reps, 3)
    result["cpu_ratio"] = round(sum(lab_cpu) / sum(bare_cpu), 3)
    if plain:
        result["plain_lightning_median_s"] = round(statistics.median(plain), 3)
        result["plain_lightning_ratio"] = round(
            result["plain_lightning_median_s"] / result["bare_median_s"], 3
        )
        result["plain_lightning_step_ratio"] = round(
            statistics.median(plain_steps) / statistics.median(bare_steps), 3
        )
    if args.ll:
        result.update(time_ll(cfg, args.data_dir, args.ll_images, args.ll_k, args.ll_batch))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.max_ratio is not None and result["step_ratio"] > args.max_ratio:
        print(f"FAIL: step ratio {result['step_ratio']} > {args.max_ratio}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
