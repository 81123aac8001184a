"""vaelab against the hand-written loop, interleaved inside one fit: paired step times.

``epoch_speed.py`` alternates whole epochs (seconds each), and on a shared virtual machine one
arm's epoch can run 30-50 % slower than the next for reasons that have nothing to do with it.
Here the arms take turns every ``--slot`` optimizer steps (100 by default: a fraction of a second),
inside one ``vaelab-train`` fit: at the start of every ``slot / K``-th Lightning batch (K =
``module.steps_per_batch``) a callback runs ``slot`` steps of the hand-written loop
(``handwritten.HandLoop``, no vaelab code) and, unless ``--no-bare``, ``slot`` steps of vaelab's
model in a plain loop (``epoch_speed.BareLoop``); then the Trainer runs ``slot`` steps of its own.
A drift of the machine slower than a round (three slots) moves every arm of that round alike.

Each arm's time per optimizer step in a round is measured over groups of K steps, the first
group after a switch left out (its caches were warmed by another arm), so every arm is timed
over ``slot - K`` steps a round, the same for all. vaelab's groups are the intervals between
consecutive Lightning batch starts (the whole of Lightning's loop, logging, progress bar and
checkpoint hooks of those batches included; the end of the epoch and its checkpoint are not).

Reported per variant, each arm's ratio to ``hand``: ``ratio`` (pooled mean ms per step, every
timed step counted, spikes included), ``pair_ratio_median`` (median over rounds of the round's
ratio: robust to drift and to a burst of load in one round) and ``median_ratio`` (of the median
group interval).

    OMP_NUM_THREADS=2 python benchmarks/interleaved_speed.py --variant k20=module.steps_per_batch=20
    OMP_NUM_THREADS=1 python benchmarks/interleaved_speed.py --model hvae --experiment iwae_vae_2layer --batch-sizes 20

In one process the arms share the allocator, the garbage collector and the thread pool, as a
researcher's script and the framework would not; the two benchmarks together bound the answer.
The hand and bare arms run inside the fit, so they get the environment ``GenerativeModule`` sets
for a CPU fit (without ``PYTORCH_NVML_BASED_CUDA_CHECK``), as a script that never imports
Lightning has it.
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
from epoch_speed import BareLoop, compose_cfg, layer_spec, load_train  # benchmarks/ on sys.path
from handwritten import HandLoop
from lightning.pytorch.callbacks import Callback
from timing import exit_if_failed, record_failure, settle, write_json

from vaelab.train import build


def _group_intervals(loop, first: int, steps: int, k: int) -> list[float]:
    """Run ``steps`` steps of ``loop`` from minibatch ``first``; seconds per step of each group of
    ``k`` steps after the first group."""
    out: list[float] = []
    sync = torch.cuda.synchronize if loop_device(loop).type == "cuda" else None
    last = None
    for g in range(steps // k):
        if sync is not None:
            sync()
        now = time.perf_counter()
        if last is not None and g > 1:  # group 0 is the cold one: its interval ends at group 1
            out.append((now - last) / k)
        last = now
        for j in range(k):
            loop.step(first + g * k + j)
    if sync is not None:
        sync()
    now = time.perf_counter()
    out.append((now - last) / k)
    return out


def loop_device(loop) -> torch.device:
    return next(loop.model.parameters()).device


class Interleave(Callback):
    """Every ``slot`` optimizer steps of the Trainer, ``slot`` steps of each plain loop."""

    # It times whole Lightning batches and switches arms on block boundaries (``slot`` is a
    # multiple of K), so it leaves ``module.steps_per_batch=auto`` at the K it would pick.
    takes_step_blocks = True

    def __init__(self, loops: dict[str, object], slot: int) -> None:
        self.loops, self.slot, self.k = loops, slot, 1  # K: read at on_train_start
        self.rounds: list[dict[str, list[float]]] = []
        self._next = {name: 0 for name in loops}
        self._last: float | None = None
        self._last_step = 0
        self._cold = False

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # The K this fit runs (module.steps_per_batch=auto is resolved at setup).
        self.k = k = int(getattr(module, "steps_per_batch", 1))
        if self.slot % k or self.slot < 3 * k:
            raise SystemExit(
                f"--slot {self.slot} must be a multiple of steps_per_batch={k}, at least 3K"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        settle()

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        step = trainer.global_step
        if self._last is not None and step > self._last_step and not self._cold:
            self.rounds[-1]["vaelab"].append((now - self._last) / (step - self._last_step))
        self._cold = False
        if batch_idx % (self.slot // self.k) == 0:
            self.rounds.append({"vaelab": []})
            for name, loop in self.loops.items():
                self.rounds[-1][name] = _group_intervals(loop, self._next[name], self.slot, self.k)
                self._next[name] += self.slot
            self._cold = True  # the next interval starts on caches the plain loops warmed
            now = time.perf_counter()
        self._last, self._last_step = now, step


def run_interleaved(cfg, data: torch.Tensor, slot: int, no_bare: bool) -> dict[str, list]:
    """One ``vaelab-train`` epoch of ``cfg`` interleaved with the plain loops: the rounds."""
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    L.seed_everything(cfg.seed, workers=True)
    loops: dict[str, object] = {
        "hand": HandLoop(
            data,
            layer_spec(cfg),
            int(cfg.data.batch_size),
            float(cfg.optimizer.lr),
            cfg.seed,
            device,
        )
    }
    if not no_bare:
        loops["bare"] = BareLoop(cfg, data, device)
    L.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    timer = Interleave(loops, slot)
    objects["trainer"].callbacks.append(timer)
    dm = objects["datamodule"]
    dm.splits = {"train": data, "val": data[:0], "test": data[:0]}
    objects["trainer"].fit(objects["module"], datamodule=dm)
    # The last round's vaelab slot is cut short by the end of the epoch: keep complete rounds.
    k = timer.k
    full = (slot - k) // k
    rounds = [r for r in timer.rounds if len(r["vaelab"]) >= full]
    if not rounds:
        n = int(data.shape[0]) // int(cfg.data.batch_size)
        raise SystemExit(
            f"no complete round: {n} optimizer steps an epoch, rounds of {slot}; pass more "
            f"--train-images or a smaller --slot"
        )
    return rounds, k


def summarise(rounds: list[dict[str, list[float]]], k: int = 1) -> dict:
    arms = list(rounds[0])
    out: dict[str, dict] = {}
    for arm in arms:
        xs = [x for r in rounds for x in r[arm]]
        out[arm] = {
            "ms_per_step": round(1e3 * statistics.mean(xs), 4),
            "median_ms": round(1e3 * statistics.median(xs), 4),
            "timed_groups": len(xs),
        }
    for arm in arms:
        d = out[arm]
        d["ratio"] = round(d["ms_per_step"] / out["hand"]["ms_per_step"], 3)
        d["median_ratio"] = round(d["median_ms"] / out["hand"]["median_ms"], 3)
        d["pair_ratio_median"] = round(
            statistics.median(statistics.mean(r[arm]) / statistics.mean(r["hand"]) for r in rounds),
            3,
        )
    return {"rounds": len(rounds), "steps_per_batch": k, "arms": out}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="vae")
    p.add_argument("--experiment", default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 100])
    p.add_argument("--train-images", type=int, default=55000)
    p.add_argument("--slot", type=int, default=100, help="optimizer steps per arm and turn")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "data"))
    p.add_argument("--no-bare", action="store_true", help="skip the same-model bare loop")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="an extra vaelab fit: a name and comma-separated Hydra overrides",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--out", default=None, help="run folder (default: logs/benchmarks/interleaved/<pid>)"
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (every vaelab fit)")
    args = p.parse_args()
    variants: dict[str, list[str]] = {"vaelab": []}
    for v in args.variant:
        name, _, ov = v.partition("=")
        if not name or not ov:
            p.error(f"--variant wants NAME=OVERRIDE[,OVERRIDE...], got {v!r}")
        variants[name] = ov.split(",")
    out = Path(args.out or f"logs/benchmarks/interleaved/{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    data = load_train(args.data_dir, args.train_images)
    result: dict = {
        "model": args.model,
        "experiment": args.experiment,
        "train_images": int(data.shape[0]),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "slot": args.slot,
        "variants": variants,
        "batch": {},
        "errors": {},
    }
    for bs in args.batch_sizes:
        result["batch"][str(bs)] = {}
        for name, ov in variants.items():
            cfg = compose_cfg(args, bs, out, ov)
            try:
                res = summarise(*run_interleaved(cfg, data, args.slot, args.no_bare))
            except Exception as e:
                if name == "vaelab":
                    raise  # the default arm is what every other arm is read against
                record_failure(result, f"batch {bs}, {name}", e)
                write_json(args.json, result, complete=False)
                continue
            result["batch"][str(bs)][name] = res
            print(json.dumps({f"batch {bs}, {name}": res}, indent=1), flush=True)
            write_json(args.json, result, complete=False)
    print(json.dumps(result, indent=2))
    write_json(args.json, result, complete=True)
    exit_if_failed(result)


if __name__ == "__main__":
    main()
