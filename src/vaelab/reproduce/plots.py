"""Curves read from the runs' CSV logs, and the figure-like tables drawn as PNGs."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from vaelab.reproduce.formatting import _num, run_config
from vaelab.reproduce.rows import RowState
from vaelab.reproduce.seeds import RowResult, standard_error
from vaelab.reproduce.tables import Budget, Table


def read_curves(st: RowState) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(training samples seen, value), ...]}`` from the row's CSV log.

    Evaluation metrics (``val/*``) are one point per evaluation. Training metrics are logged per
    minibatch every ``log_every_n_steps``; each training point is the mean of the minibatch values
    logged since the previous evaluation (or epoch, without evaluations), placed at its end.
    """
    cfg = run_config(st) or {}
    bs = float((cfg.get("data") or {}).get("batch_size") or 1)
    raw: dict[str, list[tuple[float, float, float]]] = {}  # key -> (samples, value, epoch)
    for p in sorted(st.dir.glob("csv/**/metrics.csv")):
        with p.open() as f:
            for r in csv.DictReader(f):
                step, epoch = _num(r.get("step")), _num(r.get("epoch"))
                if step is None:
                    continue
                for key, value in r.items():
                    v = _num(value)
                    if v is None or key in ("step", "epoch") or not math.isfinite(v):
                        continue
                    # a training row is logged before its optimizer step; evaluations after
                    seen = (step + 1) * bs if key.startswith("train/") else step * bs
                    raw.setdefault(key, []).append((seen, v, epoch if epoch is not None else 0.0))
    out: dict[str, list[tuple[float, float]]] = {}
    for key, pts in raw.items():
        if not key.startswith("train/"):
            last = {x: v for x, v, _ in sorted(pts, key=lambda t: t[0])}
            out[key] = sorted(last.items())
    edges = [x for x, _ in out.get("val/elbo", [])]
    for key, pts in raw.items():
        if not key.startswith("train/"):
            continue
        pts = sorted(pts)
        if edges:
            bins: dict[float, list[float]] = {}
            for x, v, _ in pts:
                edge = next((e for e in edges if x <= e), None)
                if edge is not None:
                    bins.setdefault(edge, []).append(v)
        else:
            by_epoch: dict[float, list[tuple[float, float]]] = {}
            for x, v, ep in pts:
                by_epoch.setdefault(ep, []).append((x, v))
            bins = {max(x for x, _ in xs): [v for _, v in xs] for xs in by_epoch.values()}
        out[key] = sorted((x, sum(vs) / len(vs)) for x, vs in bins.items() if vs)
    return out


def mean_curves(result: RowResult) -> dict[str, list[tuple[float, float, float | None]]]:
    """``{metric: [(samples seen, mean over seeds, s.e. over seeds or None), ...]}``: the curves of
    a row's runs that finished or have a checkpoint, averaged point by point (one run: its own)."""
    runs = [s for s in result.states if s.status == "ok" or s.last_ckpt is not None]
    points: dict[str, dict[float, list[float]]] = {}
    for st in runs:
        for key, pts in read_curves(st).items():
            for x, v in pts:
                points.setdefault(key, {}).setdefault(x, []).append(v)
    return {
        key: [(x, statistics.fmean(vs), standard_error(vs)) for x, vs in sorted(by_x.items())]
        for key, by_x in points.items()
    }


def plot_curves(
    table: Table, results: Sequence[RowResult], path: Path, budget: Budget
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab10")
    drawn = 0
    seeded = any(r.seeded for r in results)
    values = []
    for i, res in enumerate(results):
        c = mean_curves(res)
        color = cmap(i % 10)
        for key, style, name in (("train/elbo", "-", "train"), ("val/elbo", "--", "held-out")):
            pts = c.get(key, [])
            if not pts:
                continue
            xs, ys, ses = zip(*pts)
            label = f"{res.row.label} ({name})"
            if seeded:
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[s or 0 for s in ses],
                    fmt=style,
                    color=color,
                    label=label,
                    capsize=2,
                    elinewidth=0.8,
                )
            else:
                ax.plot(xs, ys, style, color=color, label=label)
            values += [y for y in ys]
            drawn += 1
        test = res.stats("test/elbo") if res.ok else None
        if test is not None and test.mean is not None and c.get("val/elbo"):
            x = c["val/elbo"][-1][0]
            ax.errorbar([x], [test.mean], yerr=[test.seed_se or 0], fmt="o", color=color, capsize=2)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("lower bound per datapoint (nats)")
    n = max((len(r.ok) for r in results), default=1)
    ax.set_title(
        f"{table.name} (budget {budget.name}): lower bound per datapoint\n"
        "solid: train, dashed: held-out (10,000 training images), dot: test at the end"
        + (f"\nmean over {n} seeds, error bars ± 1 s.e. over seeds" if seeded else ""),
        fontsize=10,
    )
    ax.set_ylim(max(min(values) - 5, -260), max(values) + 5)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rate_distortion(
    table: Table, results: Sequence[RowResult], path: Path, budget: Budget
) -> Path | None:
    """Each row at its test (R, D); error bars ± 1 s.e. (over seeds when the rows have seeds,
    else over test images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    seeded = any(r.seeded for r in results)
    for res in results:
        if not res.ok or (not res.seeded and res.status != "ok"):
            continue
        r, d = res.stats("test/rate"), res.stats("test/distortion")
        if r.mean is None or d.mean is None:
            continue
        se_r, se_d = (r.seed_se, d.seed_se) if res.seeded else (r.image_se, d.image_se)
        pts.append((res.row, r.mean, d.mean, se_r, se_d))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    rs = [p[1] for p in pts]
    ds = [p[2] for p in pts]
    lo, hi = 0.0, max(rs + ds) * 1.1
    for c in range(0, int(2 * hi) + 20, 20):  # -ELBO = R + D = c diagonals
        ax.plot([0, c], [c, 0], color="0.85", lw=0.8, zorder=0)
    best = min(r + d for r, d in zip(rs, ds))
    ax.plot([0, best], [best, 0], color="tab:red", lw=1, ls="--", label=f"-ELBO = {best:.1f}")
    ax.errorbar(
        rs,
        ds,
        xerr=[p[3] or 0 for p in pts],
        yerr=[p[4] or 0 for p in pts],
        fmt="o-",
        color="tab:blue",
    )
    for row, r, d, _, _ in pts:
        ax.annotate(row.label, (r, d), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlim(lo, max(rs) * 1.15 + 5)
    ax.set_ylim(min(ds) * 0.9 - 5, max(ds) * 1.05 + 5)
    ax.set_aspect("equal", adjustable="datalim")  # -ELBO = R + D lines at 45 degrees
    ax.set_xlabel("rate R = E KL(q(z|x) || p(z))  (nats)")
    ax.set_ylabel("distortion D = -E log p(x|z)  (nats)")
    ax.set_title(
        f"{table.name} (budget {budget.name}): test rate vs distortion\n"
        "grey: R + D = -ELBO = const, every 20 nats"
        + (
            f"\nmean over up to {max(len(r.ok) for r in results)} seeds, ± 1 s.e. over seeds"
            if seeded
            else "\n± 1 s.e. over test images"
        ),
        fontsize=10,
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(
    table: Table, results: Sequence[RowResult], path: Path, budget: Budget
) -> Path | None:
    """The table's first metric (± 1 s.e.: over seeds when the rows have seeds, else over test
    images) against each row's ``x`` (log axis; ``x = inf`` drawn at the right end, labelled ∞);
    rows without ``x`` (baselines) as horizontal dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = table.rows[0].metrics[0]
    pts, base = [], []
    for res in results:
        if not res.ok or (not res.seeded and res.status != "ok"):
            continue
        s = res.stats(metric)
        if s.mean is None:
            continue
        se = (s.seed_se if res.seeded else s.image_se) or 0.0
        (base if res.row.x is None else pts).append((res.row, s.mean, se))
    if not pts and not base:
        return None
    finite = [p[0].x for p in pts if math.isfinite(p[0].x)]
    x_inf = (max(finite) if finite else 1.0) * 10.0
    xs = [p[0].x if math.isfinite(p[0].x) else x_inf for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if pts:
        ax.errorbar(
            xs,
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            fmt="o-",
            capsize=3,
            color="tab:blue",
            label=str(table.raw.get("series_label", "rows with x")),
        )
        for x, (_row, v, _) in zip(xs, pts):
            ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xscale("log")
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, ["∞" if t == x_inf else f"{t:g}" for t in ticks])
    for i, (row, v, se) in enumerate(base):
        ax.axhline(v, color=f"C{i + 1}", ls="--", lw=1, label=f"{row.label}: {v:.1f} ± {se:.1f}")
    ax.set_xlabel(str(table.raw.get("x_label") or "x (row parameter; ∞ at the right)"))
    ax.set_ylabel(f"{metric} ({table.unit})")
    vals = [p[1] for p in pts + base]
    if min(vals) > 0 and max(vals) / min(vals) > 20:  # e.g. -ELBO from 20,000 (T = 1) to 118
        ax.set_yscale("log")
    ax.set_title(f"{table.name} (budget {budget.name})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
