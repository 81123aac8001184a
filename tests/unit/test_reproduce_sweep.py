"""The sweep table's checks and plot (vaelab.reproduce): monotone over named rows, not_worse
within combined standard errors, the metric-against-x plot. Fake row states, no runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vaelab import reproduce as rp


def states(values: dict[str, tuple[float, float]], tmp_path: Path) -> list[rp.RowResult]:
    table = rp.load_table("vdm_timesteps")
    out = []
    for row in table.rows:
        if row.id in values:
            v, se = values[row.id]
            m = {"status": "ok", "test/nll": v, "test/nll_se": se}
        else:
            m = None
        out.append(rp.RowState(row=row, dir=tmp_path / row.id, metrics=m, last_ckpt=None))
    return rp.row_results(out)


VDM = {"vdm_T1": 300.0, "vdm_T2": 200.0, "vdm_T10": 150.0, "vdm_T100": 120.0, "vdm_T1000": 110.0}


def test_checks_hold_and_fail_on_the_numbers(tmp_path: Path) -> None:
    table = rp.load_table("vdm_timesteps")
    base = {k: (v, 1.0) for k, v in VDM.items()} | {"vae": (90.0, 0.5), "hvae": (85.0, 0.5)}
    good = rp.run_checks(table, states(base | {"vdm_Tinf": (109.5, 1.0)}, tmp_path))
    assert "**holds**" in good[0] and "vae" not in good[0].lower()  # baselines not in the order
    assert "**holds**" in good[1]
    near = rp.run_checks(table, states(base | {"vdm_Tinf": (111.0, 1.0)}, tmp_path))
    assert "**holds**" in near[1]  # 111 vs 110: worse by 1 <= hypot(1, 1)
    bad = rp.run_checks(table, states(base | {"vdm_Tinf": (113.0, 1.0)}, tmp_path))
    assert "does not hold" in bad[0] and "does not hold" in bad[1]
    missing = rp.run_checks(table, states({"vdm_T1": (1.0, 0.1)}, tmp_path))
    assert "not checked" in missing[0] and "not checked" in missing[1]


def test_sweep_plot_is_written(tmp_path: Path) -> None:
    table = rp.load_table("vdm_timesteps")
    vals = {k: (v, 1.0) for k, v in VDM.items()} | {"vdm_Tinf": (108.0, 1.0), "vae": (95.0, 0.5)}
    budget = table.budget("cpu")
    path = rp.plot_sweep(table, states(vals, tmp_path), tmp_path / "s.png", budget)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rp.plot_sweep(table, states({}, tmp_path), tmp_path / "e.png", budget) is None
    inf_row = next(r for r in table.rows if r.id == "vdm_Tinf")
    assert inf_row.x == float("inf") and dataclasses.is_dataclass(inf_row)
