"""Ablation: what training K = 1 through one-step blocks buys over Lightning's automatic loop.

``vaelab-train`` with ``module.steps_per_batch=1`` (the default) trains through one-step blocks
(manual optimization, the direct step path) where that is exactly what automatic optimization
does (``GenerativeModule._setup_single_step_blocks``). This script alternates epochs between that
default and the same run put back on Lightning's automatic optimization (patched after ``setup``),
and prints the median over epochs of each. Same model, data and seed in both; the numbers are
the same (``test_k1_runs_as_one_step_blocks_equal_to_automatic_optimization``).

    OMP_NUM_THREADS=1 python benchmarks/k1_manual_ab.py --batch-size 20 --reps 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import epoch_speed
from timing import run_vaelab_epoch

from vaelab.lit import GenerativeModule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--train-images", type=int, default=11000)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    args = p.parse_args()

    automatic = [False]
    setup = GenerativeModule.setup

    def patched_setup(self, stage):
        setup(self, stage)
        if stage == "fit" and automatic[0]:
            self.automatic_optimization = True
            self.__dict__["_single_step_blocks"] = False

    GenerativeModule.setup = patched_setup
    ns = argparse.Namespace(
        model="vae", experiment=None, data_dir=args.data_dir, device="cpu", seed=0, overrides=[]
    )
    data = epoch_speed.load_train(args.data_dir, args.train_images)
    res: dict[str, list[tuple[float, float]]] = {"automatic": [], "one-step blocks": []}
    for _ in range(args.reps):
        for mode in res:
            automatic[0] = mode == "automatic"
            cfg = epoch_speed.compose_cfg(ns, args.batch_size, Path(tempfile.mkdtemp()), [])
            wall, steps, _, n = run_vaelab_epoch(cfg, data)
            res[mode].append((1e3 * wall / n, 1e3 * statistics.median(steps)))
    for mode, v in res.items():
        print(
            f"batch {args.batch_size}, K = 1, {mode}: ms per step (median of {args.reps} epochs) "
            f"{statistics.median(a for a, _ in v):.3f}, median step interval "
            f"{statistics.median(b for _, b in v):.3f}"
        )


if __name__ == "__main__":
    main()
