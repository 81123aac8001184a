"""Where one Lightning batch's time goes in a ``vaelab-train`` fit: our step against the loop.

``interleaved_speed.py`` measures ``vaelab`` − ``bare`` (Lightning's loop on top of vaelab's
model code) as a difference of two arms. This splits one fit's batches at Lightning's hook
boundaries instead, with ``time.perf_counter`` stamps, median over the epoch's batches:

- ``to_step``: from the first ``on_train_batch_start`` callback to the start of
  ``training_step`` (the other callbacks' and the module's batch-start hooks, the batch transfer,
  Lightning's ``training_step`` dispatch);
- ``step``: ``GenerativeModule.training_step`` itself (the K optimizer steps: forward, backward,
  optimizer, logging on logging steps);
- ``to_batch_end``: from its return to the first ``on_train_batch_end`` callback;
- ``batch_end_hooks``: the callbacks' ``on_train_batch_end`` (first to last);
- ``to_fetch``: from the last one to the start of the next minibatch's transform (the module's
  hook, the logger connector, progress, the validation check, the fetcher and our loader's
  indexing);
- ``transform``: the loader's transform (dynamic binarization), which the ``bare`` loop pays too;
- ``to_next_batch``: from the transform's end to the next batch start.

Everything but ``step`` and ``transform`` is Lightning's per-batch loop. After the fit, the same
process times ``epoch_speed.BareLoop`` (vaelab's model in a plain loop, transform included) over
as many steps, for scale (not paired with the fit). The stamps cost about a microsecond each.

``--noop-step MB`` replaces ``training_step`` by one that trains nothing and only writes to an
``MB``-megabyte float buffer (0: touches nothing), to see what Lightning's loop costs by itself and
how much of it is the caches a real step leaves cold (the VAE's step reads and writes about 7 MB:
weights, gradients and Adam's two moments, 425 K parameters each).

    OMP_NUM_THREADS=1 python benchmarks/batch_split.py [--batch-size 100] [--json FILE] [overrides]
    OMP_NUM_THREADS=1 python benchmarks/batch_split.py --noop-step 0   # then 8, 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from epoch_speed import BareLoop, compose_cfg, load_train  # benchmarks/ is on sys.path
from lightning.pytorch.callbacks import Callback
from timing import settle

from vaelab.train import build

PHASES = (
    "to_step",
    "step",
    "to_batch_end",
    "batch_end_hooks",
    "to_fetch",
    "transform",
    "to_next_batch",
)


class _Stamp(Callback):
    def __init__(self, stamps: dict[str, list[float]], start: str | None, end: str | None) -> None:
        self.stamps, self.start, self.end = stamps, start, end

    def on_train_batch_start(self, *args: object) -> None:
        if self.start:
            self.stamps[self.start].append(time.perf_counter())

    def on_train_batch_end(self, *args: object) -> None:
        if self.end:
            self.stamps[self.end].append(time.perf_counter())


def split_fit(cfg, data: torch.Tensor, noop_mb: int | None = None) -> dict[str, float]:
    """One epoch of the ``vaelab-train`` fit of ``cfg``; median ms of each phase per batch.

    With ``noop_mb``, ``training_step`` trains nothing and writes to a buffer of that many MB."""
    st: dict[str, list[float]] = {
        k: [] for k in ("start", "step0", "step1", "end0", "end1", "tf0", "tf1")
    }
    L.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    trainer, module, dm = objects["trainer"], objects["module"], objects["datamodule"]
    trainer.callbacks.insert(0, _Stamp(st, "start", "end0"))
    trainer.callbacks.append(_Stamp(st, None, "end1"))
    step = module.training_step
    if noop_mb is not None:
        buf = torch.zeros(noop_mb * 2**18)  # 2**18 float32 = 1 MB

        def step(x: torch.Tensor, batch_idx: int) -> None:  # trains nothing
            if buf.numel():
                buf.add_(1.0)

    def training_step(x: torch.Tensor, batch_idx: int):
        st["step0"].append(time.perf_counter())
        out = step(x, batch_idx)
        st["step1"].append(time.perf_counter())
        return out

    module.training_step = training_step  # an instance attribute: Lightning calls this one
    make_loader = dm.train_dataloader

    def train_dataloader():
        loader = make_loader()
        transform = loader.transform

        def stamped(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            st["tf0"].append(time.perf_counter())
            y = transform(x, g)
            st["tf1"].append(time.perf_counter())
            return y

        loader.transform = stamped
        return loader

    dm.train_dataloader = train_dataloader
    dm.splits = {"train": data, "val": data[:0], "test": data[:0]}
    settle()
    trainer.fit(module, datamodule=dm)
    k = int(module.steps_per_batch)
    n = len(st["end1"]) - 1  # batches with a following batch start
    # Batch b's transform stamps: its K minibatches (the last block may hold fewer) are drawn
    # before it starts.
    n_mb = len(st["tf1"])
    tf0 = st["tf0"][::k]
    tf1 = [st["tf1"][min(i + k, n_mb) - 1] for i in range(0, n_mb, k)]
    spans = {
        "to_step": [st["step0"][b] - st["start"][b] for b in range(1, n)],
        "step": [st["step1"][b] - st["step0"][b] for b in range(1, n)],
        "to_batch_end": [st["end0"][b] - st["step1"][b] for b in range(1, n)],
        "batch_end_hooks": [st["end1"][b] - st["end0"][b] for b in range(1, n)],
        "to_fetch": [tf0[b + 1] - st["end1"][b] for b in range(1, n)],
        "transform": [tf1[b + 1] - tf0[b + 1] for b in range(1, n)],
        "to_next_batch": [st["start"][b + 1] - tf1[b + 1] for b in range(1, n)],
        "batch": [st["start"][b + 1] - st["start"][b] for b in range(1, n)],
    }
    out = {name: round(1e3 * statistics.median(v), 4) for name, v in spans.items()}
    out["steps_per_batch"] = k
    out["batches"] = n - 1
    return out


def time_bare(cfg, data: torch.Tensor, steps: int) -> float:
    """Median ms of one ``BareLoop`` step (transform included), after 10 warm-up steps."""
    loop = BareLoop(cfg, data, torch.device("cpu"))
    for i in range(10):
        loop.step(i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loop.step(i)
        times.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(times), 4)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="vae")
    p.add_argument("--experiment", default=None)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--train-images", type=int, default=11000)
    p.add_argument("--reps", type=int, default=2, help="fits, each followed by the bare loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    p.add_argument(
        "--noop-step",
        type=int,
        default=None,
        metavar="MB",
        help="training_step trains nothing and writes to an MB-megabyte buffer (0: nothing)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args()
    args.device = "cpu"
    out = Path(f"logs/benchmarks/batch_split/{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(args, args.batch_size, out, [])
    data = load_train(args.data_dir, args.train_images)
    reps = []
    noop = "" if args.noop_step is None else f", no-op step writing {args.noop_step} MB"
    for _ in range(args.reps):
        r = split_fit(cfg, data, args.noop_step)
        settle()
        r["bare_step"] = time_bare(cfg, data, r["batches"] * r["steps_per_batch"])
        loop = sum(r[k] for k in PHASES if k not in ("step", "transform"))
        r["lightning_per_batch"] = round(loop, 4)
        reps.append(r)
        print(
            f"batch {args.batch_size}, K = {r['steps_per_batch']}, {torch.get_num_threads()} "
            f"thr{noop}: "
            + ", ".join(f"{k} {r[k]:.3f}" for k in PHASES)
            + f" ms; Lightning's loop "
            f"{loop:.3f} ms a batch, batch {r['batch']:.3f} ms; bare step {r['bare_step']:.3f} ms"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "experiment": args.experiment,
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "train_images": args.train_images,
                    "overrides": args.overrides,
                    "noop_step_mb": args.noop_step,
                    "reps": reps,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
