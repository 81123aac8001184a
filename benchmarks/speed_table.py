"""Markdown tables from the JSON files that ``epoch_speed.py --json`` and
``interleaved_speed.py --json`` write (for docs/speed.md); one table per kind, in the order given.

    python benchmarks/speed_table.py logs/bench/vae1.json logs/bench/hvae1.json
    python benchmarks/speed_table.py logs/bench/il_vae2_a.json

``epoch_speed``: one row per batch size and arm: ms per optimizer step (epoch median / steps), the
median interval between optimizer steps, the ratios to ``hand`` (epoch / per-step interval / CPU
time) and, at batch 20, the full IWAE schedule extrapolated from ms per step.

``interleaved_speed``: one row per batch size, vaelab fit and arm: mean ms per timed optimizer
step, the ratios to ``hand`` (pooled mean / median of the per-round ratios / of the medians) and,
at batch 20, the full IWAE schedule extrapolated from the mean.
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


IWAE_STEPS = 3280 * 2980  # epochs x optimizer steps of the full IWAE schedule at batch 20


def interleaved_rows(result: dict) -> list[str]:
    label = result["model"] + (
        f", `experiment={result['experiment']}`" if result["experiment"] else ""
    )
    label += f", {result['threads']} thr, {result['train_images']} images"
    out = []
    for bs, fits in result["batch"].items():
        for fit, r in fits.items():
            ov = result["variants"].get(fit) or []
            name = f"`{fit}`" + (f" ({','.join(ov)})" if ov else "")
            for arm in ("hand", "bare", "vaelab"):
                a = r["arms"].get(arm)
                if a is None:
                    continue
                ratios = (
                    f"{a['ratio']:.2f} / {a['pair_ratio_median']:.2f} / {a['median_ratio']:.2f}"
                )
                sched = f"{a['ms_per_step'] * IWAE_STEPS / 3.6e6:.1f} h" if bs == "20" else "-"
                shown = name if arm == "vaelab" else f"`{arm}` (in the `{fit}` fit)"
                out.append(
                    f"| {label} | {bs} | {shown} | {r['rounds']} | {a['ms_per_step']:.2f} | "
                    f"{ratios} | {sched} |"
                )
    return out


EPOCH_HEADER = (
    "| model, threads, images | batch | arm | ms per optimizer step (epoch median) | "
    "median step interval, ms | ratio to hand: epoch / per-step / CPU time | "
    "full IWAE schedule (extrapolated) |\n|---|---|---|---|---|---|---|"
)
INTERLEAVED_HEADER = (
    "| model, threads, images | batch | arm | rounds | ms per optimizer step (mean) | "
    "ratio to hand: pooled mean / median of round ratios / of medians | "
    "full IWAE schedule (extrapolated) |\n|---|---|---|---|---|---|---|"
)


def main(paths: list[str]) -> None:
    kind = None
    for p in paths:
        result = json.loads(Path(p).read_text())
        this = "interleaved" if "slot" in result else "epoch"
        if this != kind:
            if kind is not None:
                print()
            print(INTERLEAVED_HEADER if this == "interleaved" else EPOCH_HEADER)
            kind = this
        for line in (interleaved_rows if this == "interleaved" else rows)(result):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
