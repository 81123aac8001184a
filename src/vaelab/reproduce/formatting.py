"""Numbers as the report writes them, and a run's saved config."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import OmegaConf

from vaelab.reproduce.rows import RowState


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "—"
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.{digits}f}"


def digits_for(metric: str) -> int:
    base = metric.split("/")[1] if "/" in metric else metric
    if base.startswith("active_units"):
        return 0
    if metric.startswith("compress/") and metric.endswith("bpd"):
        return 4  # code lengths: BB-ANS's 0.19 and its -ELBO differ in the third decimal
    return 3 if base == "bpd" else 2


def wall(seconds: Any) -> str:
    s = _num(seconds)
    if s is None:
        return "—"
    return f"{int(s // 60)} min {s % 60:.0f} s" if s >= 60 else f"{s:.0f} s"


def run_config(st: RowState) -> dict[str, Any] | None:
    p = st.dir / ".hydra" / "config.yaml"
    if not p.is_file():
        return None
    try:
        cfg = OmegaConf.load(p)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
    except Exception:
        return None
