"""Checks of what a figure shows (orderings, no decline, within a bound), as report lines."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from vaelab.reproduce.formatting import digits_for
from vaelab.reproduce.plots import mean_curves
from vaelab.reproduce.seeds import RowResult, difference_clears
from vaelab.reproduce.tables import Table


def _finished(results: Sequence[RowResult]) -> list[RowResult]:
    """Rows with figures: a one-seed row that finished ok, a seeded row with a finished seed."""
    return [r for r in results if (r.status == "ok" if not r.seeded else bool(r.ok))]


def _steps_against_se(vals: Sequence[tuple[str, float, float | None]], metric: str) -> str:
    """Each neighbour difference against 2 s.e. of the difference (seeded rows only)."""
    d = digits_for(metric)
    parts = []
    for (la, a, sa), (lb, b, sb) in itertools.pairwise(vals):
        diff, se, clears = difference_clears(a, sa, b, sb)
        if se is None:
            parts.append(f"{la} -> {lb} {diff:+.{d}f} (no s.e.)")
        else:
            word = "clears" if clears else "within"
            parts.append(f"{la} -> {lb} {diff:+.{d}f} ± {se:.{d}f} ({word} 2 s.e.)")
    return "; ".join(parts)


def run_checks(table: Table, results: Sequence[RowResult]) -> list[str]:
    """One line per check. With seeds, values are means over seeds, and an ordering says for
    each step whether the difference clears 2 s.e. of the difference (sqrt(se_a² + se_b²))."""
    out = []
    done = _finished(results)
    for chk in table.checks:
        kind, metric = chk.get("type"), chk.get("metric")
        text = chk.get("text", f"{metric} {chk.get('order', '')}")
        if kind == "monotone":
            only = chk.get("rows")  # optional: the row ids the ordering is about, in table order
            stats = [(r, r.stats(metric)) for r in done if not only or r.row.id in only]
            vals = [(r.row.label, s.mean, s.seed_se) for r, s in stats if s.mean is not None]
            tol = float(chk.get("tolerance", 0.0))
            sign = 1 if chk.get("order") == "increasing" else -1
            if len(vals) < 2:
                out.append(f"- {text}: not checked (fewer than two finished rows)")
                continue
            bad = [
                f"{a[0]} -> {b[0]} ({a[1]:.2f} -> {b[1]:.2f})"
                for a, b in itertools.pairwise(vals)
                if sign * (b[1] - a[1]) < -tol
            ]
            seq = ", ".join(f"{v:.2f}" for _, v, _ in vals)
            verdict = "holds" if not bad else "does not hold at " + "; ".join(bad)
            line = f"- {text}: **{verdict}** ({metric} in row order: {seq})"
            if any(r.seeded for r in done):
                line += f"; steps, mean over seeds ± s.e.: {_steps_against_se(vals, metric)}"
            out.append(line)
        elif kind == "no_decline":
            for r in done:
                if chk.get("row") and r.row.id != chk["row"]:
                    continue
                curve = mean_curves(r).get(metric, [])
                if not curve:
                    out.append(f"- {text}: not checked (no {metric} curve for {r.row.label})")
                    continue
                best = max(v for _, v, _ in curve)
                final = curve[-1][1]
                tol = float(chk.get("tolerance", 0.0))
                verdict = "holds" if final >= best - tol else "does not hold"
                of = f", mean over {len(r.ok)} seeds" if r.seeded else ""
                out.append(
                    f"- {text}: **{verdict}** ({r.row.label}: final {metric} {final:.2f}, "
                    f"best {best:.2f}, tolerance {tol:g}{of})"
                )
        elif kind == "within":  # |metric - target| <= tolerance, e.g. a gap to a bound
            target, tol = float(chk.get("target", 0.0)), float(chk.get("tolerance", 0.0))
            vals = [
                (r, s)
                for r in done
                if (not chk.get("row") or r.row.id == chk["row"])
                and (s := r.stats(metric)).mean is not None
            ]
            if not vals:
                out.append(f"- {text}: not checked (no finished row has {metric})")
            d = digits_for(metric)
            for r, s in vals:
                v = s.mean
                assert v is not None
                verdict = "holds" if abs(v - target) <= tol else "does not hold"
                if r.seeded:
                    se = "—" if s.seed_se is None else f"{s.seed_se:.{d}f}"
                    each = ", ".join(f"{x:.{d}f}" for _, x in sorted(s.values.items()))
                    out.append(
                        f"- {text}: **{verdict}** ({r.row.label}: {metric} {v:.{d}f} ± {se}, "
                        f"mean over {s.n} seeds ({each}); |{metric} − {target:g}| ≤ {tol:g})"
                    )
                    continue
                out.append(
                    f"- {text}: **{verdict}** ({r.row.label}: {metric} {v:.{d}f}; "
                    f"|{metric} − {target:g}| ≤ {tol:g})"
                )
        elif kind == "not_worse":  # row at least as good as `than`, within k standard errors
            out.append(_not_worse(table, chk, text, metric, {r.row.id: r for r in done}))
        else:
            out.append(f"- unknown check type {kind!r}")
    return out


def _not_worse(table: Table, chk: dict, text: str, metric: str, by_id: dict[str, RowResult]) -> str:
    """``row`` is at least as good as ``than`` within ``se_multiple`` s.e. of the difference
    (over seeds when the rows have seeds, else over test images)."""
    a, b = by_id.get(chk.get("row")), by_id.get(chk.get("than"))
    if a is None or b is None:
        return f"- {text}: not checked (row {chk.get('row')} or {chk.get('than')} did not finish)"
    sa, sb = a.stats(metric), b.stats(metric)
    if sa.mean is None or sb.mean is None:
        return f"- {text}: not checked (no {metric})"
    se_a = (sa.seed_se if a.seeded else sa.image_se) or 0.0
    se_b = (sb.seed_se if b.seeded else sb.image_se) or 0.0
    k = float(chk.get("se_multiple", 1.0))
    margin = k * math.hypot(se_a, se_b)
    worse = (sb.mean - sa.mean) if table.higher_is_better else (sa.mean - sb.mean)
    verdict = "holds" if worse <= margin else "does not hold"
    d = digits_for(metric)
    return (
        f"- {text}: **{verdict}** ({a.row.label} {sa.mean:.{d}f} ± {se_a:.{d}f}, {b.row.label} "
        f"{sb.mean:.{d}f} ± {se_b:.{d}f}; worse by {worse:.{d}f}, allowed {k:g} x combined s.e. "
        f"= {margin:.{d}f})"
    )
