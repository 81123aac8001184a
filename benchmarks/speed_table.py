"""Markdown tables from the JSON files that ``epoch_speed.py --json`` writes (for the README).

    python benchmarks/speed_table.py logs/bench/vae1.json logs/bench/hvae1.json

One row per batch size and arm: ms per optimizer step (epoch median / steps), the median interval
between optimizer steps, the ratios to ``hand`` (epoch / per-step interval / CPU time) and, at
batch 20, the full IWAE schedule extrapolated from ms per step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(result: dict) -> list[str]:
    label = result["model"] + (
        f", `experiment={result['experiment']}`" if result["experiment"] else ""
    )
    label += f", {result['threads']} thr, {result['train_images']} images"
    variants = result.get("variants", {})
    out = []
    for bs, arms in result["batch"].items():
        for arm, r in arms.items():
            if not isinstance(r, dict) or "ms_per_step" not in r:
                continue
            name = f"`{arm}`" + (f" ({','.join(variants[arm])})" if arm in variants else "")
            step = f"{r['step_median_ms']:.2f}" if r.get("step_median_ms") else "-"
            ratios = " / ".join(
                f"{r[k]:.2f}" if r.get(k) is not None else "-"
                for k in ("ratio", "step_ratio", "cpu_ratio")
            )
            sched = r.get("full_iwae_schedule_h")
            out.append(
                f"| {label} | {bs} | {name} | {r['ms_per_step']:.2f} | {step} | {ratios} | "
                f"{f'{sched:.1f} h' if sched is not None else '-'} |"
            )
    return out


def main(paths: list[str]) -> None:
    print(
        "| model, threads, images | batch | arm | ms per optimizer step (epoch median) | "
        "median step interval, ms | ratio to hand: epoch / per-step / CPU time | "
        "full IWAE schedule (extrapolated) |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        for line in rows(json.loads(Path(p).read_text())):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
