"""Ablation: what training K = 1 through one-step blocks buys over Lightning's automatic loop.

By default (``module.steps_per_batch=1``) ``GenerativeModule`` trains through one-step blocks
(manual optimization, the direct step path) where that is exactly what automatic optimization
does (``_setup_single_step_blocks``). This script trains the real ``vaelab-train`` Trainer and
switches, batch by batch within one fit, between the two (``automatic_optimization`` set at each
batch start), then prints the median interval between consecutive batch starts for each: a
paired comparison that the machine's drift cannot bias (whole epochs here vary by 10-50 %). The
step counts of the two modes diverge while they alternate, so the run's logs are not meaningful;
only the timing is.

    OMP_NUM_THREADS=1 python benchmarks/k1_blocks_ab.py --batch-size 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import epoch_speed
import lightning as L
from lightning.pytorch.callbacks import Callback

from vaelab.train import build


class Alternate(Callback):
    """Sets the optimization mode at each batch start and times the interval per mode."""

    def __init__(self) -> None:
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.last: float | None = None
        self.automatic = False
        self.batches = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times[self.automatic].append(now - self.last)
        self.automatic = bool(self.batches % 2)
        self.batches += 1
        module.automatic_optimization = self.automatic
        self.last = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=22000)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    args = p.parse_args()
    ns = argparse.Namespace(
        model="vae",
        experiment=None,
        data_dir=args.data_dir,
        device="cpu",
        seed=0,
        overrides=["module.steps_per_batch=1"],  # it times K = 1 (auto would also keep 1 here)
    )
    data = epoch_speed.load_train(args.data_dir, args.train_images)
    alternate = Alternate()
    for _ in range(args.epochs):  # a fresh run each time, as timing.run_vaelab_epoch does
        cfg = epoch_speed.compose_cfg(ns, args.batch_size, Path(tempfile.mkdtemp()), [])
        L.seed_everything(cfg.seed)
        objects = build(cfg)
        objects["trainer"].callbacks.append(alternate)
        alternate.last = None
        dm = objects["datamodule"]
        dm.splits = {"train": data, "val": data[:0], "test": data[:0]}
        objects["trainer"].fit(objects["module"], datamodule=dm)
    auto, blocks = (1e3 * statistics.median(alternate.times[m]) for m in (True, False))
    print(
        f"batch {args.batch_size}, K = 1, {len(alternate.times[True])} + "
        f"{len(alternate.times[False])} batches: ms per step (median interval) automatic "
        f"{auto:.3f}, one-step blocks {blocks:.3f}, saved {auto - blocks:.3f} "
        f"({(auto - blocks) / auto:.1%})"
    )


if __name__ == "__main__":
    main()
