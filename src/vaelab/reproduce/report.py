"""The report: cells (ours beside theirs), report.md / report.csv / report.json."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.reproduce.checks import run_checks
from vaelab.reproduce.formatting import _num, digits_for, fmt, run_config, wall
from vaelab.reproduce.launch import _now, busy_seconds, ledger_path
from vaelab.reproduce.plots import plot_curves, plot_rate_distortion
from vaelab.reproduce.rows import (
    RowState,
    link_checkpoints,
    read_json,
    row_state,
    table_differences,
)
from vaelab.reproduce.tables import Budget, Row, Table


def budget_text(table: Table, budget: Budget, st: RowState) -> str:
    m = st.metrics or {}
    parts = []
    epochs = m.get("epochs")
    if table.paper_epochs and epochs is not None:
        parts.append(f"{epochs} of {table.paper_epochs} epochs")
    seen = samples_seen(st)
    if table.paper_samples and seen is not None:
        parts.append(f"{seen:.3g} of {table.paper_samples:.3g} samples")
    if not parts and seen is not None:
        parts.append(f"{budget.name}, {seen:.3g} training samples seen")
    return "budget: " + (", ".join(parts) if parts else budget.name)


def samples_seen(st: RowState) -> float | None:
    m = st.metrics or {}
    steps = m.get("global_step")
    cfg = run_config(st)
    bs = (cfg.get("data") or {}).get("batch_size") if cfg else None
    accum = (cfg.get("trainer") or {}).get("accumulate_grad_batches") or 1 if cfg else 1
    if steps is None or bs is None:
        return None
    return float(steps) * float(bs) * float(accum)


def reproduced_cell(
    table: Table, budget: Budget, st: RowState, metric: str, ours: float | None
) -> str:
    if st.status != "ok":
        return "—"
    if st.differs:
        return "no: config differs from the table"
    epochs = (st.metrics or {}).get("epochs")
    at_paper_budget = budget.paper and (
        not table.paper_epochs or (epochs is not None and epochs >= table.paper_epochs)
    )
    if not at_paper_budget:
        return budget_text(table, budget, st)
    pub = st.row.published.get(metric)
    if pub is None or st.row.tolerance is None or ours is None or not math.isfinite(ours):
        return "n/a (no published value)" if pub is None else "no"
    return "yes" if abs(ours - pub) <= st.row.tolerance else "no"


@dataclass
class ReportLine:
    row: str
    label: str
    metric: str
    status: str
    published: float | None
    source: str
    ours: float | None
    se: float | None
    difference: float | None
    reproduced: str
    epochs: Any
    steps: Any
    samples: float | None
    seconds: Any
    device: Any
    threads: Any
    commit: str
    also: dict[str, float | None]


def report_lines(table: Table, budget: Budget, states: Sequence[RowState]) -> list[ReportLine]:
    lines = []
    for st in states:
        m = st.metrics or {}
        prov = read_json(st.dir / "reproduce_row.json") or {"sittings": []}
        commits = sorted({s.get("git_commit", "?") for s in prov["sittings"]}) if m else []
        for metric in st.row.metrics:
            ours = _num(m.get(metric)) if st.status == "ok" else None
            se = _num(m.get(f"{metric}_se")) if st.status == "ok" else None
            pub = st.row.published.get(metric)
            diff = None if ours is None or pub is None else ours - pub
            lines.append(
                ReportLine(
                    row=st.row.id,
                    label=st.row.label,
                    metric=metric,
                    status=st.status if not st.differs else f"{st.status} (config differs)",
                    published=pub,
                    source=st.row.source,
                    ours=ours,
                    se=se,
                    difference=diff,
                    reproduced=reproduced_cell(table, budget, st, metric, ours),
                    epochs=m.get("epochs"),
                    steps=m.get("global_step"),
                    samples=samples_seen(st),
                    seconds=m.get("seconds"),
                    device=m.get("device"),
                    threads=m.get("threads"),
                    commit=", ".join(commits) if commits else "—",
                    also={a: _num(m.get(a)) for a in table.also} if st.status == "ok" else {},
                )
            )
    return lines


def ours_cell(line: ReportLine) -> str:
    d = digits_for(line.metric)
    if line.ours is None:
        return "—"
    se = fmt(line.se, d) if line.se is not None else "(s.e. missing)"
    return f"{fmt(line.ours, d)} ± {se}"


def run_cell(line: ReportLine) -> str:
    if line.epochs is None:
        return "—"
    seen = f", {line.samples:.3g} samples" if line.samples is not None else ""
    return (
        f"{line.epochs} ep, {line.steps} steps{seen}, {wall(line.seconds)}, "
        f"{line.device or '?'}, {line.threads or '?'} thr"
    )


CSV_FIELDS = (
    "row",
    "label",
    "metric",
    "status",
    "published",
    "source",
    "ours",
    "se",
    "difference",
    "reproduced",
    "epochs",
    "steps",
    "samples_seen",
    "seconds",
    "device",
    "threads",
    "commit",
)


def write_csv(path: Path, lines: Sequence[ReportLine], also: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_FIELDS, *also])
    for ln in lines:
        vals = [
            ln.row,
            ln.label,
            ln.metric,
            ln.status,
            ln.published,
            ln.source,
            ln.ours,
            ln.se,
            ln.difference,
            ln.reproduced,
            ln.epochs,
            ln.steps,
            ln.samples,
            ln.seconds,
            ln.device,
            ln.threads,
            ln.commit,
            *(ln.also.get(a) for a in also),
        ]
        w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in vals])
    path.write_text(buf.getvalue())


def markdown_table(lines: Sequence[ReportLine], also: Sequence[str]) -> str:
    head = ["row", "metric", "published", "ours ± s.e.", "difference", "reproduced?"]
    head += [a for a in also] + ["status", "epochs, steps, wall time, device, threads", "commit"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ln in lines:
        d = digits_for(ln.metric)
        cells = [
            ln.label,
            f"`{ln.metric}`",
            fmt(ln.published, d) if ln.published is not None else "—",
            ours_cell(ln),
            fmt(ln.difference, d) if ln.difference is not None else "—",
            ln.reproduced,
            *(fmt(ln.also.get(a), digits_for(a)) for a in also),
            ln.status.replace("|", "/"),
            run_cell(ln),
            ln.commit,
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def build_report(
    table: Table,
    budget: Budget,
    out_dir: Path,
    rows: Sequence[Row] | None = None,
    data_dir: str | None = None,
    report_dir: Path | None = None,
    command: str | None = None,
) -> tuple[str, list[ReportLine]]:
    """Write report.md, report.csv (and PNGs) into ``report_dir`` (the table folder by default)."""
    report_dir = Path(report_dir or out_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    states = [row_state(out_dir / "runs", r, data_dir) for r in (rows or table.rows)]
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
    pngs = []
    if table.kind == "curves":
        p = plot_curves(table, states, report_dir / f"{table.name}.png", budget)
        pngs += [p] if p else []
    if table.kind == "rate_distortion":
        p = plot_rate_distortion(table, states, report_dir / f"{table.name}.png", budget)
        pngs += [p] if p else []
    checks = run_checks(table, states)
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
        "the test mean over images; `(s.e. missing)` where the run's metrics.json has none.",
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
    }
    (report_dir / "report.json").write_text(json.dumps(meta, indent=2) + "\n")
    return text, lines
