"""Gather a Hydra multirun's results into one table: each job's overrides and ``metrics.json``.

    vaelab-collect logs/train/multiruns/2026-01-01_12-00-00
    vaelab-collect <sweep dir> --metrics val/nll test/nll --sort test/nll
    vaelab-collect <sweep dir> --mean-over seed      # mean and std over seeds

(``python -m vaelab.collect`` is the same.)

Each job folder (``<sweep dir>/<n>/``) holds ``.hydra/overrides.yaml`` (written by Hydra) and
``metrics.json`` (written by ``vaelab-train``). The columns are the overrides that differ between
jobs (the swept values) and the metrics; ``--csv`` (default ``<sweep dir>/sweep.csv``) gets every
column, the printed table the chosen ones. Jobs that failed or never wrote ``metrics.json`` are
listed with their status, so nothing is silently dropped. Needs only the standard library and
PyYAML (a Hydra dependency): no torch import.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

DEFAULT_METRICS = ("val/nll", "test/nll", "test/bpd", "test/elbo", "test/rate")
INFO_COLUMNS = ("job", "status", "epochs", "seconds")


def _value(text: str) -> Any:
    """``"0.5"`` -> 0.5, ``"3"`` -> 3, other strings unchanged (as Hydra wrote them)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _split(override: str) -> tuple[str, Any]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), _value(value)


def read_job(job_dir: Path) -> dict[str, Any]:
    """One row: ``job``, the job's overrides as ``{key: value}`` under ``overrides``, metrics."""
    row: dict[str, Any] = {"job": job_dir.name}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    row["overrides"] = dict(_split(str(o)) for o in overrides or [])
    metrics_file = job_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            data = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            data = {"status": f"unreadable metrics.json: {err}"}
    else:
        data = {"status": "no metrics.json (running, killed or failed before the end)"}
    for k, v in data.items():
        if isinstance(v, str) and v in ("nan", "inf", "-inf"):
            v = float(v)
        row[k] = v
    return row


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: subfolders with ``.hydra/`` or ``metrics.json``, in job order."""
    jobs = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / ".hydra").is_dir() or (p / "metrics.json").is_file())
    ]

    def order(p: Path) -> tuple[int, str]:
        return (int(p.name), "") if p.name.isdigit() else (sys.maxsize, p.name)

    return sorted(jobs, key=order)


def swept_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r["overrides"] if k not in keys]
    missing = object()
    return [k for k in keys if len({repr(r["overrides"].get(k, missing)) for r in rows}) > 1]


def collect(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Flat rows (swept overrides as columns) and the swept keys."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder")
    raw = [read_job(j) for j in find_jobs(sweep_dir)]
    if not raw:
        raise FileNotFoundError(
            f"no job folders in {sweep_dir} (expected <sweep dir>/<n>/.hydra and metrics.json)"
        )
    keys = swept_keys(raw)
    rows = []
    for r in raw:
        flat = {k: r["overrides"].get(k) for k in keys}
        flat.update({k: v for k, v in r.items() if k != "overrides"})
        rows.append(flat)
    return rows, keys


def mean_over(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], over: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean, std and count of ``metrics`` over the keys in ``over`` (e.g. seeds), per setting."""
    by = [k for k in keys if k not in over]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(repr(r.get(k)) for k in by), []).append(r)
    out = []
    for members in groups.values():
        agg: dict[str, Any] = {k: members[0].get(k) for k in by}
        agg["n"] = len(members)
        for m in metrics:
            vals = [float(r[m]) for r in members if isinstance(r.get(m), int | float)]
            vals = [v for v in vals if math.isfinite(v)]
            agg[m] = statistics.fmean(vals) if vals else float("nan")
            agg[f"{m} std"] = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        out.append(agg)
    return out


def _sort_key(v: Any) -> tuple[int, float]:
    """Numbers first (ascending), then NaN and missing values."""
    if isinstance(v, int | float) and math.isfinite(float(v)):
        return (0, float(v))
    return (1, 0.0)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if 0 < abs(v) < 0.01 else f"{v:.4f}"
    return "" if v is None else str(v)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (fixed-width columns)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], first: Sequence[str]) -> None:
    columns = list(first)
    for r in rows:
        columns += [k for k in r if k not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in columns})


def main(argv: Sequence[str] | None = None) -> int:
    """``vaelab-collect``: print a sweep's table and write its CSV; 2 on a bad argument or folder.

    Args:
        argv: the command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit status.
    """
    p = argparse.ArgumentParser(
        prog="vaelab-collect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", type=Path, help="a multirun folder: logs/<task>/multiruns/<time>")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics to print (default: main)")
    p.add_argument("--sort", default=None, help="sort by this column (ascending)")
    p.add_argument("--mean-over", nargs="+", default=None, help="average over these keys (seed)")
    p.add_argument("--csv", type=Path, default=None, help="CSV path (default <sweep>/sweep.csv)")
    args = p.parse_args(argv)

    try:
        rows, keys = collect(args.sweep_dir)
    except FileNotFoundError as err:
        print(f"vaelab-collect: {err}", file=sys.stderr)
        return 2
    metrics = args.metrics or [m for m in DEFAULT_METRICS if any(m in r for r in rows)]
    csv_path = args.csv or args.sweep_dir / "sweep.csv"
    if args.mean_over:
        unknown = [k for k in args.mean_over if k not in keys]
        if unknown:
            print(f"vaelab-collect: {unknown} are not swept keys ({keys})", file=sys.stderr)
            return 2
        rows = mean_over(rows, keys, args.mean_over, metrics)
        keys = [k for k in keys if k not in args.mean_over] + ["n"]
        metrics = [c for m in metrics for c in (m, f"{m} std")]
        info: list[str] = []
    else:
        info = [c for c in INFO_COLUMNS if any(c in r for r in rows)]
    if args.sort:
        rows = sorted(rows, key=lambda r: _sort_key(r.get(args.sort)))
    columns = [*info[:1], *keys, *metrics, *info[1:]]
    write_csv(csv_path, rows, columns)
    print(render(rows, columns))
    print(f"\n{len(rows)} rows -> {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
