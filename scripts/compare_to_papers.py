"""Print our measured test figures beside the published ones (../shared/PAPERS.md).

    python scripts/compare_to_papers.py logs/iwae_vae_1layer*/runs/* logs/iwae_vae_2layer*/runs/*

Each argument is a run directory holding ``metrics.json`` (written by ``vaelab-train``) and
``checkpoints/last.ckpt`` (whose stored config tells which experiment and schedule it ran). Only
figures read from the run are printed as ours; the published column is the paper's full-protocol
value, so a truncated run is expected to sit above it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaelab.checkpoints import read_checkpoint

# task_name / experiment -> (paper, model, metric, published value, unit)
PUBLISHED = {
    "iwae_vae_1layer": (
        "Burda et al. 2015, Table 1",
        "VAE, 1 layer, k=1",
        "test/nll",
        86.76,
        "nats",
    ),
    "iwae_vae_2layer": (
        "Burda et al. 2015, Table 1",
        "VAE, 2 layers, k=1",
        "test/nll",
        85.33,
        "nats",
    ),
    "realnvp_mnist": ("FFJORD table (RealNVP)", "RealNVP on MNIST", "test/bpd", 1.06, "bits/dim"),
    "realnvp_cifar10": (
        "Dinh et al. 2016, Table 1",
        "RealNVP on CIFAR-10",
        "test/bpd",
        3.49,
        "bits/dim",
    ),
}


def describe(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = {}
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        cfg = read_checkpoint(ckpt).get("vaelab_config", {})  # weights-only: runs no pickle
    task = str(cfg.get("task_name", run.parts[-3] if len(run.parts) >= 3 else run.name))
    key = next((k for k in PUBLISHED if task.startswith(k)), None)
    return {"run": run, "task": task, "key": key, "metrics": metrics, "cfg": cfg}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    rows = []
    for run in args.runs:
        if not (run / "metrics.json").is_file():
            continue
        d = describe(run)
        if d["key"] is None:
            continue
        paper, model, metric, value, unit = PUBLISHED[d["key"]]
        ours = d["metrics"].get(metric)
        stages = (d["cfg"].get("schedule") or {}).get("stages")
        k = (d["cfg"].get("eval") or {}).get("num_samples")
        rows.append(
            (
                model,
                f"{ours:.2f}" if isinstance(ours, float) else str(ours),
                f"{value:.2f}",
                unit,
                str(d["metrics"].get("epochs")),
                str(stages),
                str(k),
                paper,
                str(d["run"]),
            )
        )
    header = ("model", "ours", "published", "unit", "epochs", "stages", "k", "source", "run")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
