"""Checks of what a figure shows (orderings, no decline, within a bound), as report lines."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from vaelab.reproduce.formatting import _num, digits_for
from vaelab.reproduce.plots import read_curves
from vaelab.reproduce.rows import RowState
from vaelab.reproduce.tables import Table


def run_checks(table: Table, states: Sequence[RowState]) -> list[str]:
    out = []
    ok_states = [s for s in states if s.status == "ok"]
    for chk in table.checks:
        kind, metric = chk.get("type"), chk.get("metric")
        text = chk.get("text", f"{metric} {chk.get('order', '')}")
        if kind == "monotone":
            vals = [(s.row.label, _num((s.metrics or {}).get(metric))) for s in ok_states]
            vals = [(lbl, v) for lbl, v in vals if v is not None]
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
            seq = ", ".join(f"{v:.2f}" for _, v in vals)
            verdict = "holds" if not bad else "does not hold at " + "; ".join(bad)
            out.append(f"- {text}: **{verdict}** ({metric} in row order: {seq})")
        elif kind == "no_decline":
            for s in ok_states:
                if chk.get("row") and s.row.id != chk["row"]:
                    continue
                curve = read_curves(s).get(metric, [])
                if not curve:
                    out.append(f"- {text}: not checked (no {metric} curve for {s.row.label})")
                    continue
                best = max(v for _, v in curve)
                final = curve[-1][1]
                tol = float(chk.get("tolerance", 0.0))
                verdict = "holds" if final >= best - tol else "does not hold"
                out.append(
                    f"- {text}: **{verdict}** ({s.row.label}: final {metric} {final:.2f}, "
                    f"best {best:.2f}, tolerance {tol:g})"
                )
        elif kind == "within":  # |metric - target| <= tolerance, e.g. a gap to a bound
            target, tol = float(chk.get("target", 0.0)), float(chk.get("tolerance", 0.0))
            vals = [
                (s.row.label, v)
                for s in ok_states
                if (not chk.get("row") or s.row.id == chk["row"])
                and (v := _num((s.metrics or {}).get(metric))) is not None
            ]
            if not vals:
                out.append(f"- {text}: not checked (no finished row has {metric})")
            for label, v in vals:
                verdict = "holds" if abs(v - target) <= tol else "does not hold"
                out.append(
                    f"- {text}: **{verdict}** ({label}: {metric} {v:.{digits_for(metric)}f}; "
                    f"|{metric} − {target:g}| ≤ {tol:g})"
                )
        else:
            out.append(f"- unknown check type {kind!r}")
    return out
