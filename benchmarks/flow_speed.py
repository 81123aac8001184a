"""Training images/s of RealNVP through vaelab's Trainer against a bare PyTorch loop of the same model.

Both loops train the model built from the same Hydra experiment on the same pre-loaded uint8 tensor,
with the same batch size, the DataModule's own training transform (dequantization, flips), the
same optimizer, gradient clipping and precision (autocast for the bare loop, ``trainer.precision``
for vaelab); runs alternate (bare, vaelab, bare, ...). Three ratios (vaelab / bare) are reported:
of the median epoch wall times (``ratio``; the issue asks for <= 1.10), of the median step intervals,
batch start to next batch start (``step_ratio``, robust to bursts of load from other processes), and
of the process CPU time per epoch (``cpu_ratio``, nearly immune to other processes; run with
OMP_NUM_THREADS=1 on a shared machine, where contended intra-op threads slow everything ~3x).

    python benchmarks/flow_speed.py                                    # realnvp_mnist, real MNIST
    python benchmarks/flow_speed.py --experiment realnvp_cifar10 --train-images 640   # random data
    python benchmarks/flow_speed.py --device cuda --precision bf16-mixed --train-images 20000
    python benchmarks/flow_speed.py --experiment none model=realnvp_mlp data=mnist   # no experiment

MNIST comes from ``--data-dir`` when present; CIFAR-10 (absent on most machines) is random 8-bit
images: speed does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from timing import Timing, run_vaelab, settle  # benchmarks/ is on sys.path

from vaelab.config import config_dir

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def compose_cfg(args: argparse.Namespace, out: Path) -> DictConfig:
    overrides = [
        "trainer.max_epochs=1",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        f"trainer.precision={args.precision}",
        "trainer.accelerator=cpu" if args.device == "cpu" else "trainer.accelerator=gpu",
        "test=false",
        f"paths.output_dir={out}",
        f"paths.data_dir={args.data_dir}",
        "data.download=false",
        "callbacks.model_checkpoint.monitor=null",
        "~callbacks.images",
        f"seed={args.seed}",
    ]
    if args.experiment and args.experiment != "none":
        overrides.insert(0, f"experiment={args.experiment}")
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    overrides += args.overrides
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def load_train(cfg: DictConfig, data_dir: str, n: int) -> torch.Tensor:
    shape = tuple(int(s) for s in cfg.data.shape)
    if shape == (1, 28, 28):
        from vaelab.data.mnist import _have_files, read_mnist_images

        if _have_files(data_dir):
            return read_mnist_images(data_dir, train=True)[:n].contiguous()
        print(f"(no MNIST in {data_dir}: using random 8-bit images)")
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)


def run_bare(cfg: DictConfig, data: torch.Tensor, device: torch.device, precision: str) -> Timing:
    """The same model, optimizer, batches, transform, clipping and precision in a plain loop."""
    torch.manual_seed(cfg.seed)
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model).to(device)
    opt = instantiate(cfg.optimizer)(model.parameters())
    clip = cfg.trainer.get("gradient_clip_val")
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
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
        x = dm.train_transform(data[order[i * bs : (i + 1) * bs]], g)
        ctx = (
            torch.autocast(device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            loss = model(x).loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        scaler.step(opt)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - cpu0, steps


def _median_ms(intervals: list[float]) -> float | None:
    return round(1e3 * statistics.median(intervals), 2) if intervals else None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experiment", default="realnvp_mnist", help="'none': only the overrides")
    p.add_argument("--batch-size", type=int, default=None, help="default: the experiment's")
    p.add_argument("--reps", type=int, default=3, help="epochs timed for each loop (alternating)")
    p.add_argument("--train-images", type=int, default=6400)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32-true", choices=sorted(PRECISIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "data"))
    p.add_argument(
        "--max-ratio", type=float, default=None, help="exit 1 if vaelab/bare exceeds this"
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args()

    out = Path("logs/benchmarks/flow_speed")
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(args, out)
    data = load_train(cfg, args.data_dir, args.train_images)
    device = torch.device(args.device)
    bare: list[Timing] = []
    lab: list[Timing] = []
    info: dict = {}  # the K of vaelab's fit (module.steps_per_batch as resolved)
    for _ in range(args.reps):
        settle()  # the previous vaelab run's garbage is not the bare loop's cost
        bare.append(run_bare(cfg, data, device, args.precision))
        lab.append(run_vaelab(cfg, data, info))
    bare_wall, lab_wall = [t[0] for t in bare], [t[0] for t in lab]
    bare_steps = [s for t in bare for s in t[2]]
    lab_steps = [s for t in lab for s in t[2]]
    bs = int(cfg.data.batch_size)
    images = (data.shape[0] // bs) * bs
    result = {
        "experiment": args.experiment,
        "model": cfg.model._target_,
        "overrides": args.overrides,
        "batch_size": bs,
        "train_images": images,
        "precision": args.precision,
        "device": args.device if args.device == "cpu" else f"cuda ({torch.cuda.get_device_name()})",
        "threads": torch.get_num_threads(),
        "bare_epoch_s": [round(t, 3) for t in bare_wall],
        "vaelab_epoch_s": [round(t, 3) for t in lab_wall],
        "bare_images_per_s": round(images / statistics.median(bare_wall), 1),
        "vaelab_images_per_s": round(images / statistics.median(lab_wall), 1),
        "vaelab_steps_per_batch": info.get("steps_per_batch"),
        # None where an epoch is one Lightning batch (a block of K steps): no interval to time
        "bare_step_median_ms": _median_ms(bare_steps),
        "vaelab_step_median_ms": _median_ms(lab_steps),
        "bare_cpu_per_epoch_s": round(sum(t[1] for t in bare) / args.reps, 3),
        "vaelab_cpu_per_epoch_s": round(sum(t[1] for t in lab) / args.reps, 3),
    }
    result["ratio"] = round(statistics.median(lab_wall) / statistics.median(bare_wall), 3)
    if result["vaelab_step_median_ms"] and result["bare_step_median_ms"]:
        step_ratio = result["vaelab_step_median_ms"] / result["bare_step_median_ms"]
        result["step_ratio"] = round(step_ratio, 3)
    result["cpu_ratio"] = round(
        result["vaelab_cpu_per_epoch_s"] / result["bare_cpu_per_epoch_s"], 3
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.max_ratio is not None and result["ratio"] > args.max_ratio:
        print(f"FAIL: ratio {result['ratio']} > {args.max_ratio}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
