"""vaelab's model code against the hand-written loop, each arm alone in a process of its own.

``interleaved_speed.py`` runs the hand-written loop (``hand``) and vaelab's model in a plain loop
(``bare``) in one process, taking turns every 100 steps: they share the allocator, the caches and
the thread pool. This runs each arm alone in a fresh Python process instead (the parent starts
``--pairs`` pairs of processes, alternating which arm goes first), so nothing of one arm is left
for the other. Each process builds its arm (``handwritten.HandLoop`` or ``epoch_speed.BareLoop``,
the same data and batch size), takes ``--warmup`` untimed steps, then ``--steps`` timed ones, and
reports its median step time. The table is the median over the pairs of each pair's ratio
``bare / hand``, with every process's median listed.

    OMP_NUM_THREADS=1 python benchmarks/process_ab.py [--batch-size 100] [--pairs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def run_arm(args: argparse.Namespace) -> None:
    """One arm, alone in this process: print its median step in ms as JSON."""
    from epoch_speed import BareLoop, compose_cfg, layer_spec, load_train  # benchmarks/ on path
    from handwritten import HandLoop

    ns = argparse.Namespace(
        model="vae", experiment=None, data_dir=args.data_dir, device="cpu", seed=0, overrides=[]
    )
    cfg = compose_cfg(ns, args.batch_size, Path(f"logs/benchmarks/process_ab/{os.getpid()}"), [])
    data = load_train(args.data_dir, args.train_images)
    if args.arm == "hand":
        loop = HandLoop(data, layer_spec(cfg), args.batch_size, float(cfg.optimizer.lr), cfg.seed)
    else:
        loop = BareLoop(cfg, data, torch.device("cpu"))
    for i in range(args.warmup):
        loop.step(i)
    times = []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        loop.step(i)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"arm": args.arm, "median_ms": 1e3 * statistics.median(times)}))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--train-images", type=int, default=55000)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "../shared/data"))
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--arm", choices=("hand", "bare"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        run_arm(args)
        return
    common = [
        *("--batch-size", str(args.batch_size), "--steps", str(args.steps)),
        *("--warmup", str(args.warmup), "--train-images", str(args.train_images)),
        *("--data-dir", args.data_dir),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    pairs = []
    for i in range(args.pairs):
        pair = {}
        for arm in ("hand", "bare") if i % 2 == 0 else ("bare", "hand"):
            out = subprocess.run(
                [sys.executable, __file__, "--arm", arm, *common],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            pair[arm] = json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]
        pair["ratio"] = pair["bare"] / pair["hand"]
        pairs.append(pair)
        print(
            f"pair {i}: hand {pair['hand']:.3f} ms, bare {pair['bare']:.3f} ms, "
            f"bare/hand {pair['ratio']:.3f}",
            flush=True,
        )
    result = {
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "pairs": pairs,
        "ratio_median": round(statistics.median(p["ratio"] for p in pairs), 3),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
