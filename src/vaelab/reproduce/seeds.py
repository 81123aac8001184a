"""A row's runs over training seeds: the mean over seeds and its standard error.

A row trained with N seeds is N jobs (``runs/<row>/seed<i>/``, one :class:`RowState` each). Its
cell is the mean over the seeds that finished ok, ± the standard error over seeds: the sample
standard deviation with Bessel's correction (``ddof=1``) over sqrt(n). Beside it, the test-image
s.e. (the mean over seeds of each run's s.e. over test images, ``<metric>_se``), which is the
smaller spread: every seed is scored on the same test images.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from vaelab.reproduce.formatting import _num
from vaelab.reproduce.rows import RowState
from vaelab.reproduce.tables import Row


@dataclass(frozen=True)
class SeedStats:
    """One metric of one row over its finished seeds."""

    values: dict[int | None, float]  # seed -> the run's value (seed None: a one-seed row)
    mean: float | None
    seed_se: float | None  # stdev(values, ddof=1) / sqrt(n); None below two seeds
    image_se: float | None  # mean over seeds of the runs' s.e. over test images

    @property
    def n(self) -> int:
        return len(self.values)


def standard_error(values: Sequence[float]) -> float | None:
    """The standard error of the mean of ``values``: ``stdev(ddof=1) / sqrt(n)`` (None if n < 2)."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def difference_clears(
    a: float, se_a: float | None, b: float, se_b: float | None
) -> tuple[float, float | None, bool | None]:
    """``(b - a, s.e. of the difference, whether |b - a| > 2 s.e.)`` for two independent means:
    the s.e. of the difference is sqrt(se_a² + se_b²); None where either s.e. is missing."""
    if se_a is None or se_b is None:
        return b - a, None, None
    se = math.hypot(se_a, se_b)
    return b - a, se, abs(b - a) > 2 * se


@dataclass
class RowResult:
    """A row and its jobs, one per seed (a single job, seed None, for a one-seed row)."""

    row: Row
    states: list[RowState]

    @property
    def seeded(self) -> bool:
        return self.states[0].seed is not None

    @property
    def n(self) -> int:
        return len(self.states)

    @property
    def ok(self) -> list[RowState]:
        return [s for s in self.states if s.status == "ok"]

    @property
    def differs(self) -> list[str]:
        return [d for s in self.states for d in s.differs]

    @property
    def status(self) -> str:
        """A one-seed row: its run's status. Seeds: ``ok`` when every seed is, else how many are
        and what the others say."""
        if not self.seeded:
            return self.states[0].status
        if len(self.ok) == self.n:
            return "ok"
        others = "; ".join(f"seed {s.seed}: {s.status}" for s in self.states if s.status != "ok")
        return f"{len(self.ok)} of {self.n} seeds ok; {others}"

    def stats(self, metric: str) -> SeedStats:
        values: dict[int | None, float] = {}
        image = []
        for s in self.ok:
            m = s.metrics or {}
            v = _num(m.get(metric))
            if v is None or not math.isfinite(v):
                continue
            values[s.seed] = v
            se = _num(m.get(f"{metric}_se"))
            if se is not None:
                image.append(se)
        mean = statistics.fmean(values.values()) if values else None
        image_se = statistics.fmean(image) if len(image) == len(values) and image else None
        return SeedStats(values, mean, standard_error(list(values.values())), image_se)


def row_results(states: Sequence[RowState]) -> list[RowResult]:
    """Group jobs by row, in the order the rows first appear."""
    by_row: dict[str, RowResult] = {}
    for st in states:
        by_row.setdefault(st.row.id, RowResult(st.row, [])).states.append(st)
    return list(by_row.values())
