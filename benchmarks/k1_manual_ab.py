"""Experiment: what running K = 1 through the manual K-step block would buy (not a vaelab option).

``vaelab-train`` with ``module.steps_per_batch=1`` (the default) trains under Lightning's automatic
optimization. This script patches ``GenerativeModule`` so that, in alternate epochs, K = 1 goes
through the manual block instead (``_training_block`` on a block of one minibatch, with its direct
path), and prints the median over epochs of each. Same model, data and seed in both; the numbers
are the same (the block is bitwise-equal to automatic optimization, tests/integration/
test_steps_per_batch.py). Why it is not the default: see README "Speed" (a checkpoint written
under one optimization mode and resumed under the other restarts Lightning's step count, and
gradient clipping, accumulation and DDP need the automatic loop).

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

    manual = [False]
    setup, training_step = GenerativeModule.setup, GenerativeModule.training_step

    def patched_setup(self, stage):
        setup(self, stage)
        if stage == "fit" and manual[0]:
            self.automatic_optimization = False

    def patched_training_step(self, x, batch_idx):
        if not self.automatic_optimization and self.steps_per_batch == 1:
            self._training_block(x[None], batch_idx)
            return None
        return training_step(self, x, batch_idx)

    GenerativeModule.setup = patched_setup
    GenerativeModule.training_step = patched_training_step
    ns = argparse.Namespace(
        model="vae", experiment=None, data_dir=args.data_dir, device="cpu", seed=0, overrides=[]
    )
    data = epoch_speed.load_train(args.data_dir, args.train_images)
    res: dict[str, list[tuple[float, float]]] = {"automatic": [], "manual block": []}
    for _ in range(args.reps):
        for mode in res:
            manual[0] = mode == "manual block"
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
