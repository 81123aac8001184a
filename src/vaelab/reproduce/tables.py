"""Tables as data: ``conf/reproduce/<table>.yaml`` read and checked into :class:`Table`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir

TABLE_KINDS = ("table", "curves", "rate_distortion", "sweep")
# A training row's data protocol: ``held_out`` (vaelab's default: ``data.val_size`` training images
# held out for validation) or ``full`` (every training image, no held-out split, validation off:
# the protocol of papers that train on all 60,000 MNIST images). Never the test set.
DATA_PROTOCOLS = {
    "held_out": (),
    "full": ("data.val_size=0", "callbacks.model_checkpoint.monitor=null"),
}


class ReproduceError(ValueError):
    """A table, budget or row is wrong, or a run cannot be resumed as asked."""


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``, outside any running Hydra app.

    Hydra's state is global: it is cleared before (a caller may have left one) and after, so that
    composing a row's config, an entry point's keys or this command's own config never leaks.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


# -- tables as data ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    name: str
    paper: bool
    overrides: tuple[str, ...]
    about: str
    eval: str
    seeds: int | None = None  # training seeds per row at this budget (None: the table's)


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    experiment: str | None
    overrides: tuple[str, ...]
    budget_overrides: Mapping[str, tuple[str, ...]]
    metrics: tuple[str, ...]
    published: Mapping[str, float | None]
    source: str
    tolerance: float | None
    entry: str
    requires: tuple[str, ...]
    x: float | None  # the row's value on a figure's axis (N_z, beta), if any
    # The id of a training row whose final checkpoint this row's job reads (ckpt_path=<that row's
    # run folder>/checkpoints/last.ckpt), e.g. a compression row; it runs after that row, and only
    # once that row has finished ok.
    checkpoint_of: str | None = None
    data: str = "held_out"  # the row's data protocol, a key of DATA_PROTOCOLS

    def protocol_overrides(self) -> tuple[str, ...]:
        """The overrides of the row's data protocol (training rows only)."""
        return DATA_PROTOCOLS[self.data] if self.entry == "vaelab.train" else ()

    def overrides_for(self, budget: str) -> tuple[str, ...]:
        return (*self.overrides, *self.budget_overrides.get(budget, ()))


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str
    kind: str
    unit: str
    higher_is_better: bool
    paper_epochs: int | None
    paper_samples: float | None
    compared: str
    also: tuple[str, ...]
    budgets: Mapping[str, Budget]
    rows: tuple[Row, ...]
    checks: tuple[Mapping[str, Any], ...]
    path: Path
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    seeds: int = 1  # training seeds per row (a budget's ``seeds`` or seeds=N override it)

    def seeds_for(self, budget: Budget, asked: int | None = None) -> int:
        """How many seeds each row trains with: ``asked`` (seeds=N), else the budget's, else the
        table's default."""
        n = asked if asked is not None else budget.seeds if budget.seeds is not None else self.seeds
        if int(n) < 1:
            raise ReproduceError(f"seeds must be at least 1, got {n} (e.g. seeds=3)")
        return int(n)

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise ReproduceError(
                f"unknown budget {name!r} for table {self.name}; choose one of: "
                f"{', '.join(self.budgets)} (e.g. vaelab-reproduce table={self.name} "
                f"budget={next(iter(self.budgets))})"
            )
        return self.budgets[name]

    def select(self, ids: Sequence[str] | None) -> list[Row]:
        if not ids:
            return list(self.rows)
        known = {r.id: r for r in self.rows}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ReproduceError(
                f"table {self.name} has no row {', '.join(map(repr, missing))}; its rows are: "
                f"{', '.join(known)}"
            )
        return [known[i] for i in ids]


def tables_dir() -> Path:
    return Path(config_dir()) / "reproduce"


def table_names() -> list[str]:
    return sorted(p.stem for p in tables_dir().glob("*.yaml"))


def _strs(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(str(x) for x in v)


def load_table(name: str) -> Table:
    """Read and check ``conf/reproduce/<name>.yaml`` (or a table file given by its path).

    An unknown name lists the tables.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else tables_dir() / f"{name}.yaml"
    if name.endswith((".yaml", ".yml")):
        name = path.stem
    if not name or not path.is_file():
        raise ReproduceError(
            f"unknown table {name!r}; choose one of: {', '.join(table_names())} "
            f"(files in {tables_dir()})"
        )
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(raw, dict)

    def need(d: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in d or d[key] is None:
            raise ReproduceError(f"{path}: {where} has no {key!r}")
        return d[key]

    kind = raw.get("kind", "table")
    if kind not in TABLE_KINDS:
        raise ReproduceError(f"{path}: kind must be one of {TABLE_KINDS}, got {kind!r}")
    budgets = {}
    for bname, b in need(raw, "budgets", "the table").items():
        b = b or {}
        budgets[bname] = Budget(
            name=bname,
            paper=bool(b.get("paper", False)),
            overrides=_strs(b.get("overrides")),
            about=str(b.get("about", "")).strip(),
            eval=str(b.get("eval", "")).strip(),
            seeds=None if b.get("seeds") is None else int(b["seeds"]),
        )
    default_metrics = _strs(raw.get("metric"))
    rows = []
    for i, r in enumerate(need(raw, "rows", "the table")):
        rid = need(r, "id", f"row {i}")
        metrics = _strs(r.get("metric")) or default_metrics
        if not metrics:
            raise ReproduceError(f"{path}: row {rid!r} has no metric (and the table no default)")
        pub = r.get("published")
        if not isinstance(pub, Mapping):
            pub = {metrics[0]: pub}
        rows.append(
            Row(
                id=str(rid),
                label=str(r.get("label", rid)),
                experiment=r.get("experiment"),
                overrides=_strs(r.get("overrides")),
                budget_overrides={k: _strs(v) for k, v in (r.get("budgets") or {}).items()},
                metrics=metrics,
                published={m: (None if pub.get(m) is None else float(pub[m])) for m in metrics},
                source=str(r.get("source", raw.get("source", ""))),
                tolerance=None
                if r.get("tolerance", raw.get("tolerance")) is None
                else float(r.get("tolerance", raw.get("tolerance"))),
                entry=str(r.get("entry", raw.get("entry", "vaelab.train"))),
                requires=_strs(r.get("requires")),
                x=None if r.get("x") is None else float(r["x"]),
                checkpoint_of=None if r.get("checkpoint_of") is None else str(r["checkpoint_of"]),
                data=str(r.get("data", raw.get("data", "held_out"))),
            )
        )
        row = rows[-1]
        if row.data not in DATA_PROTOCOLS:
            raise ReproduceError(
                f"{path}: row {rid!r}: data must be one of {', '.join(DATA_PROTOCOLS)}, "
                f"got {row.data!r}"
            )
        protocol_keys = {o.split("=", 1)[0] for o in row.protocol_overrides()}
        for ov in (*row.overrides, *(o for v in row.budget_overrides.values() for o in v)):
            if ov.split("=", 1)[0].lstrip("+") in protocol_keys:
                raise ReproduceError(
                    f"{path}: row {rid!r}: {ov} contradicts its data protocol {row.data!r} "
                    f"({' '.join(row.protocol_overrides())}); drop it, or set data: held_out"
                )
    ids = [r.id for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ReproduceError(f"{path}: duplicate row ids {dup}")
    by_id = {r.id: r for r in rows}
    for r in rows:
        if r.checkpoint_of is None:
            continue
        dep = by_id.get(r.checkpoint_of)
        if dep is None or dep.checkpoint_of is not None or dep.entry != "vaelab.train":
            raise ReproduceError(
                f"{path}: row {r.id!r}: checkpoint_of must name a training row of the table "
                f"(entry vaelab.train, itself without checkpoint_of); got {r.checkpoint_of!r}"
            )
    return Table(
        name=name,
        title=str(raw.get("title", name)),
        source=str(raw.get("source", "")),
        kind=kind,
        unit=str(raw.get("unit", "")),
        higher_is_better=bool(raw.get("higher_is_better", False)),
        paper_epochs=raw.get("paper_epochs"),
        paper_samples=None if raw.get("paper_samples") is None else float(raw["paper_samples"]),
        compared=str(raw.get("compared", "")).strip(),
        also=_strs(raw.get("also")),
        budgets=budgets,
        rows=tuple(rows),
        checks=tuple(raw.get("checks") or ()),
        path=path,
        raw=raw,
        seeds=int(raw.get("seeds", 1)),
    )
