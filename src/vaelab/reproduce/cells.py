"""Report cells: ours beside theirs per row and metric (over seeds), as CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.reproduce.formatting import _num, digits_for, fmt, run_config, wall
from vaelab.reproduce.rows import (
    RowState,
    read_json,
)
from vaelab.reproduce.seeds import RowResult, SeedStats, row_results
from vaelab.reproduce.tables import Budget, Table


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


def reproduced_over_seeds(
    table: Table, budget: Budget, result: RowResult, metric: str, stats: SeedStats
) -> str:
    """The "reproduced?" cell of a row run with seeds: only when every seed finished, at the
    paper's budget; yes when |mean − published| ≤ tolerance + 2 s.e. over seeds."""
    if result.status != "ok":
        return "—"
    if result.differs:
        return "no: config differs from the table"
    first = result.states[0]
    cell = reproduced_cell(table, budget, first, metric, stats.mean)
    if cell not in ("yes", "no") or stats.mean is None or stats.seed_se is None:
        return cell
    pub, tol = result.row.published.get(metric), result.row.tolerance
    if pub is None or tol is None:
        return cell
    d = digits_for(metric) + 1
    gap, allowed = abs(stats.mean - pub), tol + 2 * stats.seed_se
    verdict = "yes" if gap <= allowed else "no"
    # no "|" in the text: it sits in a Markdown table cell
    return f"{verdict} (distance to published {gap:.{d}f}, tolerance + 2 s.e. {allowed:.{d}f})"


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
    # Seeds: how many went into ``ours`` (their mean) and ``se`` (the s.e. over seeds, ddof=1),
    # each seed's value, and the test-image s.e. (the mean of the seeds'). One seed: ``se`` is
    # the test-image s.e., as ``image_se``.
    seeds: int = 1
    per_seed: dict[int | None, float] = field(default_factory=dict)
    image_se: float | None = None

    @property
    def seeded(self) -> bool:
        return any(k is not None for k in self.per_seed)

    @property
    def se_over(self) -> str:
        """What ``se`` is a standard error over: ``seeds`` (ddof=1) or ``test images``."""
        return "seeds (ddof=1)" if self.seeded else "test images"


def _commits(states: Sequence[RowState]) -> str:
    commits = set()
    for st in states:
        if st.metrics:
            prov = read_json(st.dir / "reproduce_row.json") or {"sittings": []}
            commits |= {s.get("git_commit", "?") for s in prov["sittings"]}
    return ", ".join(sorted(commits)) if commits else "—"


def report_lines(table: Table, budget: Budget, states: Sequence[RowState]) -> list[ReportLine]:
    lines = []
    for res in row_results(states):
        ok = res.status == "ok" or (res.seeded and bool(res.ok))
        first = res.ok[0] if res.ok else res.states[0]
        m = first.metrics or {}
        status = res.status if not res.differs else f"{res.status} (config differs)"
        for metric in res.row.metrics:
            stats = res.stats(metric)
            if res.seeded:
                ours, se, image_se = stats.mean, stats.seed_se, stats.image_se
            else:  # the run's own figures, as written (a non-finite one included)
                ours, se = _num(m.get(metric)), _num(m.get(f"{metric}_se"))
                image_se = se
            if not ok:
                ours = se = image_se = None
            pub = res.row.published.get(metric)
            diff = None if ours is None or pub is None else ours - pub
            if res.seeded:
                reproduced = reproduced_over_seeds(table, budget, res, metric, stats)
                seconds = sum(_num((s.metrics or {}).get("seconds")) or 0.0 for s in res.ok)
                also = {a: res.stats(a).mean for a in table.also} if ok else {}
            else:
                reproduced = reproduced_cell(table, budget, first, metric, ours)
                seconds = m.get("seconds")
                also = {a: _num(m.get(a)) for a in table.also} if ok else {}
            lines.append(
                ReportLine(
                    row=res.row.id,
                    label=res.row.label,
                    metric=metric,
                    status=status,
                    published=pub,
                    source=res.row.source,
                    ours=ours,
                    se=se,
                    difference=diff,
                    reproduced=reproduced,
                    epochs=m.get("epochs"),
                    steps=m.get("global_step"),
                    samples=samples_seen(first),
                    seconds=seconds,
                    device=m.get("device"),
                    threads=m.get("threads"),
                    commit=_commits(res.states),
                    also=also,
                    seeds=(stats.n if res.seeded else 1) if ok else 0,
                    per_seed=stats.values if ok else {},
                    image_se=image_se,
                )
            )
    return lines


def ours_cell(line: ReportLine) -> str:
    d = digits_for(line.metric)
    if line.ours is None:
        return "—"
    if line.se is None and line.seeded:
        return f"{fmt(line.ours, d)} (one seed: no s.e. over seeds)"
    se = fmt(line.se, d) if line.se is not None else "(s.e. missing)"
    return f"{fmt(line.ours, d)} ± {se}"


def run_cell(line: ReportLine) -> str:
    if line.epochs is None:
        return "—"
    seen = f", {line.samples:.3g} samples" if line.samples is not None else ""
    if line.seeded:
        return (
            f"{line.epochs} ep, {line.steps} steps{seen} a seed; {wall(line.seconds)} for "
            f"{line.seeds} seeds, {line.device or '?'}, {line.threads or '?'} thr"
        )
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
    # seeds: how many seeds `ours` is the mean of; se_over: what `se` is over ("seeds (ddof=1)":
    # stdev/sqrt(n) over seeds; "test images"); image_se: the test-image s.e. (mean over seeds);
    # per_seed: {seed: value} as JSON (empty for a one-seed row)
    "seeds",
    "se_over",
    "image_se",
    "per_seed",
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
            ln.seeds if ln.ours is not None else None,
            ln.se_over if ln.ours is not None else None,
            ln.image_se,
            json.dumps({str(k): v for k, v in ln.per_seed.items()}) if ln.seeded else None,
            *(ln.also.get(a) for a in also),
        ]
        w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in vals])
    path.write_text(buf.getvalue())


def per_seed_cell(line: ReportLine) -> str:
    d = digits_for(line.metric)
    return ", ".join(f"{fmt(v, d)}" for _, v in sorted(line.per_seed.items())) or "—"


def markdown_table(lines: Sequence[ReportLine], also: Sequence[str]) -> str:
    seeded = any(ln.seeded for ln in lines)
    head = ["row", "metric", "published", "ours ± s.e.", "difference", "reproduced?"]
    if seeded:
        head[3] = "ours ± s.e. (mean over seeds ± s.e. over seeds)"
        head += ["seeds", "test-image s.e.", "per seed (seed 0, 1, ...)"]
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
            *(
                [
                    str(ln.seeds) if ln.ours is not None else "—",
                    fmt(ln.image_se, d) if ln.image_se is not None else "—",
                    per_seed_cell(ln),
                ]
                if seeded
                else []
            ),
            *(fmt(ln.also.get(a), digits_for(a)) for a in also),
            ln.status.replace("|", "/"),
            run_cell(ln),
            ln.commit,
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
