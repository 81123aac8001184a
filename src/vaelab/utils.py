"""Run utilities: metrics.json, the end-of-run summary (checkpoint reading: vaelab.checkpoints)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vaelab.checkpoints import atomic_write_text
from vaelab.evaluation.stats import format_with_error


def to_float_dict(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, int | float):
            out[k] = float(v)
    return out


def write_metrics(path: str | Path, metrics: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``metrics.json`` (NaN and inf kept as strings, so they are reported, not hidden)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v

    data = {k: clean(v) for k, v in sorted(metrics.items())}
    data.update({k: clean(v) for k, v in extra.items()})
    # Atomic: a full disk or a kill mid-write keeps the previous metrics.json whole.
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def print_summary(title: str, metrics: Mapping[str, float], where: Mapping[str, str]) -> None:
    """A short table of the main figures (with units) and where the run's files are."""
    from rich.console import Console
    from rich.table import Table

    units = {
        "nll": "nats/image",
        "bpd": "bits/dim",
        "elbo": "nats/image",
        "rate": "nats/image",
        "distortion": "nats/image",
        "loss": "",
        "active_units": "units",
    }
    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for k in sorted(metrics):
        stage, _, name = k.partition("/")
        if stage not in ("val", "test") or name.startswith("iwae_bound") or k.endswith("_se"):
            continue
        base = name.split("/")[0]
        if base == "active_units":
            value = f"{metrics[k]:.0f}"
        else:  # "98.68 ± 0.25": the mean over images and its standard error, where there is one
            value = format_with_error(metrics[k], metrics.get(f"{k}_se"))
        table.add_row(k, value, units.get(base, "nats/image"))
    console = Console()
    console.print(table)
    for k, v in where.items():
        # soft_wrap: a path is one line also when piped (rich's width is 80 columns then).
        console.print(f"[bold]{k}[/bold]: {v}", soft_wrap=True)


__all__ = ["print_summary", "to_float_dict", "write_metrics"]
