"""Ablation: what the K-step block's direct path buys, measured in one process.

With ``module.steps_per_batch=K > 1``, ``GenerativeModule`` runs backward and the optimizer step
itself when nothing needs Lightning's per-step hook dispatch (``_step_hooks_are_no_ops``). This
script trains epochs of the real ``vaelab-train`` Trainer and alternates, block by block, between
that direct path and Lightning's (``manual_backward`` + ``LightningOptimizer.step``), by setting
the module's cached decision before each block and calling the real ``_training_block``. Paired
in one process, the comparison is immune to the machine speeding up or slowing down between runs
(on this 2-vCPU machine whole epochs vary by 10-30 % from one to the next).

    OMP_NUM_THREADS=1 python benchmarks/direct_step_ab.py --batch-size 20 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import epoch_speed
from timing import run_vaelab_epoch

from vaelab.lit import GenerativeModule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="vae")
    p.add_argument("--experiment", default=None)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--steps-per-batch", type=int, default=20)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=22000)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    args = p.parse_args()

    times: dict[bool, list[float]] = {True: [], False: []}
    real = GenerativeModule._training_block
    count = [0]

    def alternating(self, xs, batch_idx):
        direct = bool(count[0] % 2) and self._step_hooks_are_no_ops(self.optimizers())
        count[0] += 1
        self.__dict__["_direct_steps"] = direct
        t0 = time.perf_counter()
        real(self, xs, batch_idx)
        times[direct].append((time.perf_counter() - t0) / xs.shape[0])

    GenerativeModule._training_block = alternating
    ns = argparse.Namespace(
        model=args.model,
        experiment=args.experiment,
        data_dir=args.data_dir,
        device="cpu",
        seed=0,
        overrides=[],
    )
    cfg = epoch_speed.compose_cfg(
        ns,
        args.batch_size,
        Path(tempfile.mkdtemp()),
        [f"module.steps_per_batch={args.steps_per_batch}", "+trainer.enable_progress_bar=false"],
    )
    data = epoch_speed.load_train(args.data_dir, args.train_images)
    for _ in range(args.epochs):
        run_vaelab_epoch(cfg, data)
    if not times[True]:
        raise SystemExit("the direct path was never allowed here (_step_hooks_are_no_ops)")
    lightning, direct = (1e3 * statistics.median(times[d]) for d in (False, True))
    print(
        f"batch {args.batch_size}, K = {args.steps_per_batch}, {len(times[False])} + "
        f"{len(times[True])} blocks: ms per optimizer step (median over blocks) "
        f"Lightning's path {lightning:.3f}, direct {direct:.3f}, saved {lightning - direct:.3f} "
        f"({(lightning - direct) / lightning:.1%})"
    )


if __name__ == "__main__":
    main()
