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
import os
from pathlib import Path

import torch
from epoch_speed import load_train, plain_pytorch_environment, summarise  # benchmarks/ on path
from handwritten_vdm import run_epoch as run_hand_epoch
from hydra import compose, initialize_config_dir
from timing import run_vaelab_epoch, settle, write_json

from vaelab.config import config_dir


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


def hand_settings(cfg) -> dict:
    """The hand-written arm's settings, read from the vaelab arm's config (same network)."""
    sch = cfg.model.schedule
    return {
        "widths": [int(w) for w in cfg.model.net.widths],
        "gamma_min": float(sch.gamma_min),
        "gamma_max": float(sch.gamma_max),
        "batch_size": int(cfg.data.batch_size),
        "lr": float(cfg.optimizer.lr),
        "seed": int(cfg.seed),
    }


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
            runs["hand"].append(run_hand_epoch(data, **hand_settings(cfg)))
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
