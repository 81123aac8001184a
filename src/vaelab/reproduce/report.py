"""The report: cells (ours beside theirs), report.md / report.csv / report.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vaelab.reproduce.cells import ReportLine, markdown_table, report_lines, write_csv
from vaelab.reproduce.checks import run_checks
from vaelab.reproduce.formatting import run_config, wall
from vaelab.reproduce.launch import _now, busy_seconds, ledger_path
from vaelab.reproduce.plots import plot_curves, plot_rate_distortion, plot_sweep
from vaelab.reproduce.rows import (
    link_checkpoints,
    read_json,
    row_seeds,
    row_state,
    table_differences,
)
from vaelab.reproduce.seeds import RowResult, row_results
from vaelab.reproduce.tables import Budget, Row, Table


def protocol_line(results: Sequence[RowResult]) -> str | None:
    """The training rows' data protocol, as the report states it (from the runs' configs)."""
    parts = []
    training = [r for r in results if r.row.entry == "vaelab.train"]
    for proto in dict.fromkeys(r.row.data for r in training):
        rows = [r for r in training if r.row.data == proto]
        if proto == "full":
            text = (
                "**full** (the paper's): every training image (60,000 for MNIST), no held-out "
                "split (data.val_size=0), validation off; the final epoch's checkpoint is tested "
                "(the test set is never used for validation)"
            )
        else:
            sizes = {
                ((run_config(s) or {}).get("data") or {}).get("val_size")
                for r in rows
                for s in r.states
            } - {None}
            n = ", ".join(str(v) for v in sorted(sizes)) if sizes else "data.val_size"
            text = (
                f"**held out**: {n} training images held out for validation (data.val_size), "
                "trained on the rest; the test set is scored once, at the end"
            )
        if len(training) > len(rows):
            text += f" (rows {', '.join(r.row.id for r in rows)})"
        parts.append(text)
    return "; ".join(parts) or None


def build_report(
    table: Table,
    budget: Budget,
    out_dir: Path,
    rows: Sequence[Row] | None = None,
    data_dir: str | None = None,
    report_dir: Path | None = None,
    command: str | None = None,
    seeds: int = 1,
) -> tuple[str, list[ReportLine]]:
    """Write report.md, report.csv (and PNGs) into ``report_dir`` (the table folder by default).

    ``seeds`` > 1: each row's cell is the mean over its seeds' runs (``runs/<row>/seed<i>/``).
    """
    report_dir = Path(report_dir or out_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    states = [
        row_state(out_dir / "runs", r, data_dir, seed)
        for r in (rows or table.rows)
        for seed in row_seeds(seeds)
    ]
    link_checkpoints(table, states, out_dir / "runs", data_dir)
    for st in states:  # flag runs that do not have what the table asks of their row
        st.differs = table_differences(table, budget, st)
    lines = report_lines(table, budget, states)
    write_csv(report_dir / "report.csv", lines, table.also)
    ledger = read_json(ledger_path(out_dir)) or {"sittings": []}
    sittings = ledger.get("sittings", [])
    total = busy_seconds([s for s in sittings if s.get("launched")])
    commits = sorted({c for ln in lines if ln.commit != "—" for c in ln.commit.split(", ")})
    prov = {}
    for st in states:
        p = read_json(st.dir / "reproduce_row.json")
        if p and p.get("sittings"):
            prov = p["sittings"][-1].get("versions", {})
    results = row_results(states)
    pngs = []
    if table.kind == "curves":
        p = plot_curves(table, results, report_dir / f"{table.name}.png", budget)
        pngs += [p] if p else []
    if table.kind == "rate_distortion":
        p = plot_rate_distortion(table, results, report_dir / f"{table.name}.png", budget)
        pngs += [p] if p else []
    if table.kind == "sweep":
        p = plot_sweep(table, results, report_dir / f"{table.name}.png", budget)
        pngs += [p] if p else []
    checks = run_checks(table, results)
    ran = [s["command"] for s in sittings if s.get("launched") and s.get("command")]
    cmd = "`; `".join(dict.fromkeys(ran)) if ran else (command or "")
    md = [
        f"# {table.title}",
        "",
        f"- Source: {table.source}",
        f"- Budget: **{budget.name}**"
        + (" (the paper's protocol)" if budget.paper else " (not the paper's protocol)")
        + (f": {budget.about}" if budget.about else ""),
    ]
    protocol = protocol_line(results)
    if protocol:
        md.append(f"- Data: {protocol}")
    if seeds > 1:
        md.append(
            f"- Seeds: {seeds} a row (seed=0..{seeds - 1}, each its own run); a cell is the mean "
            "over the seeds that finished ± the standard error over seeds, stdev (ddof=1) / "
            "sqrt(n); beside it the test-image s.e. (the mean over seeds of each run's s.e. over "
            "test images) and each seed's value (report.csv, report.json)"
        )
    if budget.eval:
        md.append(f"- Evaluation: {budget.eval}")
    if table.compared:
        md.append(f"- Compared: {table.compared}")
    md += [
        f"- Command: `{cmd}`",
        f"- Report written {_now()}; table wall time {wall(total)} over "
        f"{sum(1 for s in sittings if s.get('launched'))} sitting(s) that ran rows "
        "(each row's own time is in its cell; a resumed row's is its last sitting's)",
        f"- Code: {', '.join(commits) if commits else '—'}; packages: "
        + (", ".join(f"{k} {v}" for k, v in prov.items()) if prov else "—"),
        "",
        markdown_table(lines, table.also),
        "",
        "Reproduced? is decided only at the paper's budget (|ours − published| ≤ tolerance"
        + (f", {table.rows[0].tolerance:g} {table.unit}" if table.rows[0].tolerance else "")
        + "); at any other budget the cell states how far the run got. s.e.: standard error of "
        "the test mean over images; `(s.e. missing)` where the run's metrics.json has none."
        + (
            " With seeds, s.e. is over seeds and a cell at the paper's budget says yes when "
            "|mean over seeds − published| ≤ tolerance + 2 s.e. over seeds (the published "
            "figure, read with its tolerance, is within two standard errors of ours)."
            if seeds > 1
            else ""
        ),
    ]
    if checks:
        md += ["", "## Checks", "", *checks]
    for p in pngs:
        md += ["", f"![{table.name}]({p.name})"]
    text = "\n".join(md) + "\n"
    (report_dir / "report.md").write_text(text)
    meta = {
        "table": table.name,
        "title": table.title,
        "source": table.source,
        "budget": budget.name,
        "paper_budget": budget.paper,
        "about": budget.about,
        "eval": budget.eval,
        "commands": list(dict.fromkeys(ran)),
        "written": _now(),
        "wall_seconds": total,
        "commits": commits,
        "versions": prov,
        "checks": checks,
        "plots": [p.name for p in pngs],
        "data": protocol,
        "seeds": seeds,
        "cells": [
            {
                "row": ln.row,
                "metric": ln.metric,
                "ours": ln.ours,
                "se": ln.se,
                "se_over": ln.se_over,
                "image_se": ln.image_se,
                "seeds": ln.seeds,
                "per_seed": {str(k): v for k, v in ln.per_seed.items()} if ln.seeded else None,
            }
            for ln in lines
        ],
    }
    (report_dir / "report.json").write_text(json.dumps(meta, indent=2) + "\n")
    return text, lines
