"""``vaelab-reproduce``: a published table as data -> one Hydra multirun -> ours beside theirs.

    vaelab-reproduce table=iwae_table1 budget=cpu            # run (or finish) the table, report
    vaelab-reproduce table=iwae_table1 budget=cpu rows=[vae_1l_k1,iwae_1l_k5]
    vaelab-reproduce table=beta_rd budget=cpu hydra/launcher=parallel   # launchers apply
    vaelab-reproduce table=iwae_table1 budget=full hydra/launcher=slurm trainer=gpu
    vaelab-reproduce table=iwae_table1 budget=cpu report_only=true      # rebuild the report
    vaelab-reproduce readme=README.md                        # README results from committed reports
    vaelab-reproduce --help

A table is one YAML file, ``conf/reproduce/<table>.yaml``: its rows name an experiment and overrides,
the metric, the published value with its source, and the tolerance that counts as reproduced; its
budgets (``full``: the paper's protocol, ``cpu``, ``smoke``) add overrides to every row and state the
truncation. Keys of ``conf/reproduce.yaml`` (``table``, ``budget``, ``rows``, ...) configure this
command; every other argument (``hydra/launcher=parallel``, ``trainer=gpu``, ``paths.data_dir=...``)
goes to every row's job.

Each row becomes a generated config ``<table dir>/conf/reproduce_row/<row>.yaml`` (the experiment as a
defaults override, then the budget's and the row's overrides), and the rows run as one multirun of
the row's entry point (``vaelab.train`` unless the row names another, e.g. a compression entry
point) over ``+reproduce_row=<row>,...``, each job in ``<table dir>/runs/<row>/``. Re-running skips
rows whose ``metrics.json`` says ``ok`` (and failed rows, unless ``retry_failed=true``), resumes
rows that have a ``checkpoints/last.ckpt`` from it, and refuses, before anything runs, a row whose
existing run was made with a config that differs from the table's. A row with ``checkpoint_of:
<row>`` (e.g. ``table=bbans``'s compression row) gets ``ckpt_path=<that row's run folder>/checkpoints/
last.ckpt``, runs after that row's multirun, and only if that row ended ``ok``; otherwise it is
reported as ``not run: ...`` and never launched.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.config import config_dir

ROW_GROUP = "reproduce_row"
PACKAGES = ("vaelab", "torch", "lightning", "hydra-core", "numpy")
# Keys that say where or how a run executes, not what it computes: a resumed row may differ here.
RUN_ONLY_KEYS = (
    "paths",
    "ckpt_path",
    "logger",
    "tags",
    "reproduce",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "data.on_device",
    "data.download",
    "callbacks.rich_progress_bar",
)
TABLE_KINDS = ("table", "curves", "rate_distortion", "sweep")


class ReproduceError(ValueError):
    """A table, budget or row is wrong, or a run cannot be resumed as asked."""


# -- tables as data ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    name: str
    paper: bool
    overrides: tuple[str, ...]
    about: str
    eval: str


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
            )
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
    )


# -- rows -> generated configs -------------------------------------------------------------------
def _groups(conf: Path) -> set[str]:
    return {p.name for p in conf.iterdir() if p.is_dir()}


def row_config(table: Table, budget: Budget, row: Row, ckpt_path: str | None) -> str:
    """The text of ``reproduce_row/<row>.yaml``: experiment, budget and row overrides, as YAML.

    Dotted overrides (``model.objective.beta=4``, ``+trainer.limit_train_batches=2``) become nested
    keys; ``group=option`` (a config group of vaelab's) becomes a defaults-list override.
    """
    conf = Path(config_dir())
    groups = _groups(conf)
    defaults: list[str] = []
    if row.experiment:
        defaults.append(f"override /experiment: {row.experiment}")
    dotlist = []
    for ov in (*budget.overrides, *row.overrides_for(budget.name)):
        if "=" not in ov:
            raise ReproduceError(f"table {table.name}, row {row.id}: override {ov!r} has no '='")
        key, value = ov.split("=", 1)
        key = key.lstrip("+")
        if key.startswith("~"):
            raise ReproduceError(f"table {table.name}, row {row.id}: deletions ({ov}) unsupported")
        if "." not in key and "/" not in key and key in groups:
            defaults.append(f"override /{key}: {value}")
        else:
            dotlist.append(f"{key}={value}")
    body = OmegaConf.from_dotlist(dotlist) if dotlist else OmegaConf.create({})
    body = OmegaConf.merge(
        body,
        {"reproduce": {"table": table.name, "budget": budget.name, "row": row.id}},
        {"ckpt_path": ckpt_path},
    )
    header = (
        "# @package _global_\n"
        f"# Generated by vaelab-reproduce from {table.path.name}: row {row.id}, budget {budget.name}."
        "\n# Edit the table, not this file (it is rewritten on every run).\n"
    )
    d = "defaults:\n" + "".join(f"  - {x}\n" for x in defaults) + "  - _self_\n"
    return header + d + OmegaConf.to_yaml(body)


def check_rows_exist(table: Table, rows: Sequence[Row]) -> None:
    """A row naming a missing experiment fails here, naming the row, before anything runs."""
    exp_dir = Path(config_dir()) / "experiment"
    known = sorted(p.stem for p in exp_dir.glob("*.yaml"))
    for row in rows:
        if row.experiment and not (exp_dir / f"{row.experiment}.yaml").is_file():
            raise ReproduceError(
                f"table {table.name}, row {row.id!r}: experiment {row.experiment!r} does not exist "
                f"(no {exp_dir / (row.experiment + '.yaml')}); experiments: {', '.join(known)}"
            )


def compose_row(conf_dir: Path, row: Row, passthrough: Sequence[str]) -> DictConfig:
    """Compose the row's job config exactly as its multirun job will (the train config)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_name = _entry_config(row.entry)
    passthrough, _ = entry_passthrough(row.entry, passthrough)
    job_overrides = [o for o in passthrough if not o.lstrip("+~").startswith("hydra")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(
                config_name=config_name,
                overrides=[
                    f"hydra.searchpath=[file://{conf_dir}]",
                    f"+{ROW_GROUP}={row.id}",
                    *job_overrides,
                ],
            )
    finally:
        GlobalHydra.instance().clear()


# An entry point's primary config: vaelab.<x> composes conf/<x>.yaml, except these.
ENTRY_CONFIGS = {"vaelab.compression.cli": "compress"}


def _entry_config(entry: str) -> str:
    return ENTRY_CONFIGS.get(entry, entry.rsplit(".", 1)[-1])


@functools.cache
def _entry_keys(entry: str) -> frozenset[str]:
    """The top-level keys of an entry point's composed config (``paths``, ``ckpt_path``, ...)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return frozenset(compose(config_name=_entry_config(entry)).keys())
    finally:
        GlobalHydra.instance().clear()


def entry_passthrough(entry: str, passthrough: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: the pass-through arguments that apply to ``entry``'s jobs.

    Every argument goes to ``vaelab.train``. Another entry point (``vaelab.compression.cli``) gets
    those whose key its config has (``paths.data_dir=...``) and Hydra's own (``hydra/launcher=...``);
    a training-only one (``trainer.accelerator=cpu``, ``data.download=false``) would make its
    config fail to compose, so it is left out of that entry's jobs (and said so when they launch).
    """
    if entry == "vaelab.train" or not passthrough:
        return list(passthrough), []
    keys = _entry_keys(entry)
    kept, dropped = [], []
    for o in passthrough:
        root = re.split(r"[./=@]", o.lstrip("+~"), maxsplit=1)[0]
        (kept if root == "hydra" or root in keys else dropped).append(o)
    return kept, dropped


def _drop(cfg: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg, default=str))
    for key in keys:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    diffs = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_differences(va, vb, key + ".")
        elif va != vb:
            diffs.append(f"{key}: run has {va!r}, table has {vb!r}")
    return diffs


def table_differences(table: Table, budget: Budget, st: RowState) -> list[str]:
    """What the table asks of a row (experiment, budget and row overrides) that its run lacks.

    The report checks these only: a run made before a framework default changed still has what
    the table asked for. Resuming compares the whole config (``plan_table``).
    """
    saved = st.dir / ".hydra" / "config.yaml"
    hydra_saved = st.dir / ".hydra" / "hydra.yaml"
    if not saved.is_file():
        return []
    ran = OmegaConf.load(saved)
    choices = {}
    if hydra_saved.is_file():
        choices = OmegaConf.to_container(
            OmegaConf.load(hydra_saved).hydra.runtime.choices, resolve=False
        )
    diffs = []
    if st.row.experiment and choices.get("experiment") != st.row.experiment:
        diffs.append(
            f"experiment: run has {choices.get('experiment')!r}, table has {st.row.experiment!r}"
        )
    groups = _groups(Path(config_dir()))
    asked: dict[str, str] = {}  # a key set twice (row, then the row's budget): the last one counts
    for ov in (*budget.overrides, *st.row.overrides_for(budget.name)):
        key, value = ov.split("=", 1)
        asked[key.lstrip("+")] = value
    for key, value in asked.items():
        if "." not in key and key in groups:
            if choices.get(key) != value:
                diffs.append(f"{key}: run has {choices.get(key)!r}, table has {value!r}")
            continue
        want = OmegaConf.select(OmegaConf.from_dotlist([f"{key}={value}"]), key)
        have = OmegaConf.select(ran, key, default="<absent>", throw_on_missing=False)
        if isinstance(have, DictConfig | ListConfig):
            have = OmegaConf.to_container(have, resolve=False)
        if isinstance(want, DictConfig | ListConfig):
            want = OmegaConf.to_container(want, resolve=False)
        if have != want:
            diffs.append(f"{key}: run has {have!r}, table has {want!r}")
    return diffs


# -- row state on disk ----------------------------------------------------------------------------
@dataclass
class RowState:
    row: Row
    dir: Path
    metrics: dict[str, Any] | None
    last_ckpt: Path | None
    no_data: str | None = None
    differs: list[str] = field(default_factory=list)
    cfg: DictConfig | None = None  # the row's job config as composed for this sitting
    # A checkpoint_of row: the checkpoint its job reads, and why it cannot run (yet), if so.
    checkpoint: Path | None = None
    blocked: str | None = None

    @property
    def status(self) -> str:
        if self.no_data:
            return "no data"
        if self.metrics is not None:
            return str(self.metrics.get("status", "unknown"))
        if self.blocked:
            return f"not run: {self.blocked}"
        if self.last_ckpt is not None:
            return "unfinished"
        return "not run"

    @property
    def finished(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    @property
    def interrupted(self) -> bool:
        s = self.status
        return s == "unfinished" or any(
            w in s for w in ("KeyboardInterrupt", "SystemExit", "SIGTERM", "Interrupt")
        )


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return {"status": f"failed: unreadable metrics.json ({err})"}


def row_state(runs: Path, row: Row, data_dir: str | None) -> RowState:
    d = runs / row.id
    last = d / "checkpoints" / "last.ckpt"
    state = RowState(row, d, read_json(d / "metrics.json"), last if last.is_file() else None)
    missing = [f for f in row.requires if data_dir is None or not (Path(data_dir) / f).exists()]
    if missing:
        state.no_data = f"missing {', '.join(missing)} under {data_dir}"
    return state


def link_checkpoints(
    table: Table, states: Sequence[RowState], runs: Path, data_dir: str | None
) -> None:
    """Point each ``checkpoint_of`` row at its training row's final checkpoint, and block it
    (``st.blocked``, reported as ``not run: ...``) unless that row has finished ok and the
    checkpoint is there: a failed, interrupted or missing training run is never compressed."""
    known = {st.row.id: st for st in states}
    rows = {r.id: r for r in table.rows}
    for st in states:
        if st.row.checkpoint_of is None:
            continue
        dep_id = st.row.checkpoint_of
        dep = known.get(dep_id) or row_state(runs, rows[dep_id], data_dir)
        st.checkpoint = (dep.dir / "checkpoints" / "last.ckpt").resolve()
        st.blocked = None
        if dep.status != "ok":
            st.blocked = f"its training row {dep_id} has not finished ok ({dep.status})"
        elif not st.checkpoint.is_file():
            st.blocked = f"its training row {dep_id} finished, but {st.checkpoint} is missing"


# -- provenance ----------------------------------------------------------------------------------
def git_commit(repo: Path | None = None) -> str:
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- running -----------------------------------------------------------------------------------
@dataclass
class Plan:
    table: Table
    budget: Budget
    out_dir: Path
    states: list[RowState]
    to_run: list[RowState]
    actions: dict[str, str]
    data_dir: str | None = None


def plan_table(
    table: Table,
    budget: Budget,
    rows: Sequence[Row],
    out_dir: Path,
    passthrough: Sequence[str],
    data_dir: str | None,
    retry_failed: bool = False,
    write: bool = True,
) -> Plan:
    """Decide per row: skip, resume, start, or refuse (config differs); write row configs.

    A ``checkpoint_of`` row starts with its training row's ``checkpoints/last.ckpt`` as
    ``ckpt_path``: at once where that row has finished ok, after it where it runs in this sitting
    (``run_plan`` launches it only if that row then ends ok), and not at all otherwise.
    """
    check_rows_exist(table, rows)
    runs = out_dir / "runs"
    conf_dir = out_dir / "conf"
    states = [row_state(runs, r, data_dir) for r in rows]
    link_checkpoints(table, states, runs, data_dir)
    actions: dict[str, str] = {}
    to_run: list[RowState] = []
    refused = []
    # training rows first: whether a checkpoint_of row waits depends on whether its row will run
    for st in sorted(states, key=lambda s: s.row.checkpoint_of is not None):
        ckpt = None if st.checkpoint is None else str(st.checkpoint)
        if st.no_data:
            action = f"skipped: no data ({st.no_data})"
        elif st.finished:
            action = "skipped: finished"
        elif st.failed and not st.interrupted and not retry_failed:
            action = "skipped: failed (retry_failed=true runs it again)"
        elif st.checkpoint is not None:
            dep_runs = any(s.row.id == st.row.checkpoint_of for s in to_run)
            if not st.blocked:
                action = f"start with {ckpt}"
            elif dep_runs:
                action = f"start after row {st.row.checkpoint_of}, with {ckpt}, if it ends ok"
            else:
                action = f"skipped: not run: {st.blocked}"
        elif st.last_ckpt is not None:
            ckpt = str(st.last_ckpt.resolve())
            action = f"resume from {ckpt}"
        else:
            action = "start"
        if write:
            (conf_dir / ROW_GROUP).mkdir(parents=True, exist_ok=True)
            (conf_dir / ROW_GROUP / f"{st.row.id}.yaml").write_text(
                row_config(table, budget, st.row, ckpt)
            )
        try:
            cfg = compose_row(conf_dir.resolve(), st.row, passthrough)
        except Exception as err:  # a bad override or experiment: name the row
            raise ReproduceError(
                f"table {table.name}, row {st.row.id!r}: its config does not compose "
                f"({type(err).__name__}: {err})"
            ) from err
        st.cfg = cfg
        saved = st.dir / ".hydra" / "config.yaml"
        if saved.is_file():
            ran = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
            want = OmegaConf.to_container(cfg, resolve=False)
            st.differs = config_differences(_drop(ran, RUN_ONLY_KEYS), _drop(want, RUN_ONLY_KEYS))
            if st.differs:
                refused.append(st)
        actions[st.row.id] = action
        if not action.startswith("skipped"):
            to_run.append(st)
    actions = {st.row.id: actions[st.row.id] for st in states}  # in the table's order
    to_run.sort(key=states.index)
    if refused:
        lines = []
        for st in refused:
            lines.append(f"  row {st.row.id} ({st.dir}):")
            lines += [f"    {d}" for d in st.differs[:10]]
            if len(st.differs) > 10:
                lines.append(f"    ... and {len(st.differs) - 10} more")
        raise ReproduceError(
            "refusing to resume or reuse rows whose existing run was made with a different config "
            "than the table's:\n" + "\n".join(lines) + "\nRestore the table's settings, move those "
            "row folders away to run them afresh, or pass out_dir=<another folder>."
        )
    return Plan(table, budget, out_dir, states, to_run, actions, data_dir)


def multirun_command(plan: Plan, entry: str, ids: Sequence[str], passthrough: Sequence[str]):
    conf_dir = (plan.out_dir / "conf").resolve()
    runs = (plan.out_dir / "runs").resolve()
    passthrough, _ = entry_passthrough(entry, passthrough)
    return [
        sys.executable,
        "-m",
        entry,
        "--multirun",
        f"hydra.searchpath=[file://{conf_dir}]",
        f"+{ROW_GROUP}={','.join(ids)}",
        f"hydra.sweep.dir={runs}",
        "hydra.sweep.subdir=${reproduce.row}",
        *passthrough,
    ]


def run_plan(plan: Plan, passthrough: Sequence[str]) -> int:
    """Launch the rows to run, one multirun per entry point; returns the worst exit status.

    Rows that wait for a training row of this sitting (``checkpoint_of``) are launched after every
    other multirun has returned, and only those whose training row then says ``ok``; the others
    are not launched (their action says why) and make the exit status 1 at least.
    """
    commit, versions = git_commit(), package_versions()
    waiting = [st for st in plan.to_run if st.checkpoint is not None and st.blocked]
    rc = launch_rows(
        plan, [st for st in plan.to_run if st not in waiting], passthrough, commit, versions
    )
    if not waiting:
        return rc
    runs = plan.out_dir / "runs"
    link_checkpoints(plan.table, waiting, runs, plan.data_dir)  # the training rows as they ended
    for st in waiting:
        if st.blocked:
            plan.actions[st.row.id] = f"not launched: {st.blocked}"
            print(f"vaelab-reproduce: row {st.row.id}: {plan.actions[st.row.id]}", flush=True)
            rc = max(rc, 1)
    ready = [st for st in waiting if not st.blocked]
    return max(rc, launch_rows(plan, ready, passthrough, commit, versions))


def launch_rows(
    plan: Plan,
    states: Sequence[RowState],
    passthrough: Sequence[str],
    commit: str,
    versions: Mapping[str, str],
) -> int:
    """Record a sitting in each row's ``reproduce_row.json`` and run one multirun per entry."""
    by_entry: dict[str, list[str]] = {}
    for st in states:
        by_entry.setdefault(st.row.entry, []).append(st.row.id)
    rc = 0
    for st in states:  # provenance of every sitting of every row
        st.dir.mkdir(parents=True, exist_ok=True)
        prov_path = st.dir / "reproduce_row.json"
        prov = read_json(prov_path) or {"sittings": []}
        prov["sittings"].append(
            {
                "started": _now(),
                "action": plan.actions[st.row.id],
                "git_commit": commit,
                "versions": versions,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            }
        )
        prov_path.write_text(json.dumps(prov, indent=2) + "\n")
    for entry, ids in by_entry.items():
        cmd = multirun_command(plan, entry, ids, passthrough)
        dropped = entry_passthrough(entry, passthrough)[1]
        if dropped:
            print(
                f"vaelab-reproduce: not passed to {entry} (its config has no such key): "
                + " ".join(dropped),
                flush=True,
            )
        print("vaelab-reproduce:", shlex.join(cmd), flush=True)
        rc = max(rc, subprocess.call(cmd))
    return rc


# -- the report --------------------------------------------------------------------------------
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


def run_config(st: RowState) -> dict[str, Any] | None:
    p = st.dir / ".hydra" / "config.yaml"
    if not p.is_file():
        return None
    try:
        cfg = OmegaConf.load(p)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
    except Exception:
        return None


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


def wall(seconds: Any) -> str:
    s = _num(seconds)
    if s is None:
        return "—"
    return f"{int(s // 60)} min {s % 60:.0f} s" if s >= 60 else f"{s:.0f} s"


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


# -- checks (orderings a figure shows) -----------------------------------------------------------
def run_checks(table: Table, states: Sequence[RowState]) -> list[str]:
    out = []
    ok_states = [s for s in states if s.status == "ok"]
    for chk in table.checks:
        kind, metric = chk.get("type"), chk.get("metric")
        text = chk.get("text", f"{metric} {chk.get('order', '')}")
        if kind == "monotone":
            only = chk.get("rows")  # optional: the row ids the ordering is about, in table order
            vals = [
                (s.row.label, _num((s.metrics or {}).get(metric)))
                for s in ok_states
                if not only or s.row.id in only
            ]
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
        elif kind == "not_worse":  # row at least as good as `than`, within k standard errors
            by_id = {s.row.id: s for s in ok_states}
            a, b = by_id.get(chk.get("row")), by_id.get(chk.get("than"))
            if a is None or b is None:
                out.append(
                    f"- {text}: not checked (row {chk.get('row')} or {chk.get('than')} "
                    "did not finish)"
                )
                continue
            ma, mb = (s.metrics or {} for s in (a, b))
            va, vb = _num(ma.get(metric)), _num(mb.get(metric))
            sa, sb = _num(ma.get(f"{metric}_se")) or 0.0, _num(mb.get(f"{metric}_se")) or 0.0
            if va is None or vb is None:
                out.append(f"- {text}: not checked (no {metric})")
                continue
            k = float(chk.get("se_multiple", 1.0))
            margin = k * math.hypot(sa, sb)
            worse = (vb - va) if table.higher_is_better else (va - vb)
            verdict = "holds" if worse <= margin else "does not hold"
            out.append(
                f"- {text}: **{verdict}** ({a.row.label} {va:.2f} ± {sa:.2f}, {b.row.label} "
                f"{vb:.2f} ± {sb:.2f}; worse by {worse:.2f}, allowed {k:g} x combined s.e. = "
                f"{margin:.2f})"
            )
        else:
            out.append(f"- unknown check type {kind!r}")
    return out


# -- curves and plots ----------------------------------------------------------------------------
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


def plot_curves(
    table: Table, states: Sequence[RowState], path: Path, budget: Budget
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab10")
    drawn = 0
    ok = [s for s in states if s.status == "ok" or s.last_ckpt is not None]
    for i, st in enumerate(ok):
        c = read_curves(st)
        color = cmap(i % 10)
        for key, style, name in (("train/elbo", "-", "train"), ("val/elbo", "--", "held-out")):
            pts = c.get(key, [])
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=f"{st.row.label} ({name})")
                drawn += 1
        test = _num((st.metrics or {}).get("test/elbo"))
        if test is not None and c.get("val/elbo"):
            ax.plot([c["val/elbo"][-1][0]], [test], "o", color=color)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("lower bound per datapoint (nats)")
    ax.set_title(
        f"{table.name} (budget {budget.name}): lower bound per datapoint\n"
        "solid: train, dashed: held-out (10,000 training images), dot: test at the end",
        fontsize=10,
    )
    values = [v for s in ok for k, c in read_curves(s).items() if k.endswith("/elbo") for _, v in c]
    ax.set_ylim(max(min(values) - 5, -260), max(values) + 5)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rate_distortion(
    table: Table, states: Sequence[RowState], path: Path, budget: Budget
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = []
    for st in states:
        m = st.metrics or {}
        r, d = _num(m.get("test/rate")), _num(m.get("test/distortion"))
        if st.status == "ok" and r is not None and d is not None:
            pts.append(
                (st.row, r, d, _num(m.get("test/rate_se")), _num(m.get("test/distortion_se")))
            )
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
        "grey: R + D = -ELBO = const, every 20 nats",
        fontsize=10,
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(table: Table, states: Sequence[RowState], path: Path, budget: Budget) -> Path | None:
    """The table's first metric (± s.e.) against each row's ``x`` (log axis; ``x = inf`` drawn at
    the right end, labelled ∞); rows without ``x`` (baselines) as horizontal dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = table.rows[0].metrics[0]
    pts, base = [], []
    for st in states:
        m = st.metrics or {}
        v, se = _num(m.get(metric)), _num(m.get(f"{metric}_se")) or 0.0
        if st.status != "ok" or v is None:
            continue
        (base if st.row.x is None else pts).append((st.row, v, se))
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
        color = f"C{i + 1}"
        ax.axhline(v, color=color, ls="--", lw=1, label=f"{row.label}: {v:.1f} ± {se:.1f}")
    ax.set_xlabel(
        "x (row parameter; ∞ at the right)"
        if not table.raw.get("x_label")
        else str(table.raw["x_label"])
    )
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


# -- the whole report ----------------------------------------------------------------------------
def ledger_path(out_dir: Path) -> Path:
    return out_dir / "reproduce.json"


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
    if table.kind == "sweep":
        p = plot_sweep(table, states, report_dir / f"{table.name}.png", budget)
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


def busy_seconds(sittings: Sequence[Mapping[str, Any]]) -> float:
    """Wall time during which at least one sitting ran (overlapping sittings count once)."""
    spans = []
    for s in sittings:
        try:
            a = dt.datetime.strptime(s["started"], "%Y-%m-%d %H:%M:%S UTC").timestamp()
            b = dt.datetime.strptime(s["finished"], "%Y-%m-%d %H:%M:%S UTC").timestamp()
        except (KeyError, ValueError):
            continue
        spans.append((a, b))
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def record_sitting(out_dir: Path, entry: dict[str, Any]) -> None:
    p = ledger_path(out_dir)
    ledger = read_json(p) or {"sittings": []}
    ledger["sittings"].append(entry)
    out_dir.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(ledger, indent=2) + "\n")


# -- README results from committed reports ----------------------------------------------------------
README_START = (
    "<!-- vaelab-reproduce results: start (generated by `vaelab-reproduce readme=README.md`) -->"
)
README_END = "<!-- vaelab-reproduce results: end -->"


def readme_section(reports_root: Path) -> str:
    """Markdown for the README: every committed report's table with its command, budget and date."""
    parts = [
        README_START,
        "",
        "Every figure below is read from a committed report under `reports/<table>/<budget>/` "
        "(report.md, report.csv, report.json, plots), written by `vaelab-reproduce` from the runs' "
        "`metrics.json`; this section is generated by `vaelab-reproduce readme=README.md`. "
        "Published values are for the papers' full protocols; at a truncated budget "
        '"reproduced?" says how far the run got instead.',
    ]
    for meta_path in sorted(reports_root.glob("*/*/report.json")):
        meta = json.loads(meta_path.read_text())
        folder = meta_path.parent
        rows = []
        with (folder / "report.csv").open() as f:
            for r in csv.DictReader(f):
                d = digits_for(r["metric"])
                ours = "—" if not r["ours"] else fmt(float(r["ours"]), d)
                if r["ours"]:
                    ours += f" ± {fmt(float(r['se']), d)}" if r["se"] else " (s.e. missing)"
                pub = "—" if not r["published"] else fmt(float(r["published"]), d)
                run = "—"
                if r["epochs"]:
                    run = f"{r['epochs']} ep, {wall(r['seconds'])}, {r['threads'] or '?'} thr"
                rows.append(
                    f"| {r['label']} | `{r['metric']}` | {pub} | {ours} | {r['reproduced']} | "
                    f"{r['status']} | {run} |"
                )
        commands = "; ".join(f"`{c}`" for c in meta.get("commands", [])) or "—"
        parts += [
            "",
            f"### {meta['title']}",
            "",
            f"Budget **{meta['budget']}**" + (f": {meta['about']}." if meta.get("about") else "."),
            "",
            *([f"Evaluation: {meta['eval']}.", ""] if meta.get("eval") else []),
            f"Command: {commands}. Report of {meta['written']}, table wall time "
            f"{wall(meta.get('wall_seconds'))}, code {', '.join(meta.get('commits', [])) or '—'}. "
            f"[Full report]({(folder / 'report.md').as_posix()}).",
            "",
            "| row | metric | published | ours ± s.e. | reproduced? | status | run |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
        if meta.get("checks"):
            parts += ["", *meta["checks"]]
        for png in meta.get("plots", []):
            parts += ["", f"![{meta['table']}]({(folder / png).as_posix()})"]
    parts += ["", README_END]
    return "\n".join(parts)


def write_readme(readme: Path, reports_root: Path) -> None:
    text = readme.read_text()
    section = readme_section(reports_root)
    if README_START in text and README_END in text:
        before = text.split(README_START)[0]
        after = text.split(README_END, 1)[1]
        text = before + section + after
    else:
        raise ReproduceError(
            f"{readme} has no results markers; put the two lines\n{README_START}\n{README_END}\n"
            "where the generated results should go"
        )
    readme.write_text(text)


# -- entry point ---------------------------------------------------------------------------------
USAGE = """usage: vaelab-reproduce table=<table> budget=<budget> [rows=[id,...]] [report_only=true]
                        [retry_failed=true] [out_dir=DIR] [report_dir=DIR] [dry_run=true]
                        [any vaelab-train override or launcher: hydra/launcher=parallel ...]
       vaelab-reproduce readme=README.md [reports=reports]
tables: {tables}
"""


def own_config(argv: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """Split ``argv`` into this command's keys (``conf/reproduce.yaml``) and the rows' overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    base = OmegaConf.load(Path(config_dir()) / "reproduce.yaml")
    own, rest = [], []
    for a in argv:
        if a in ("-m", "--multirun"):
            continue
        key = a.split("=", 1)[0].lstrip("+~")
        (own if key.split(".")[0] in base else rest).append(a)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="reproduce", overrides=own)
    finally:
        GlobalHydra.instance().clear()
    return cfg, rest


def _data_dir(passthrough: Sequence[str]) -> str | None:
    for o in passthrough:
        if o.lstrip("+").startswith("paths.data_dir="):
            return o.split("=", 1)[1]
    return os.environ.get("VAELAB_DATA_DIR") or str(
        Path(os.environ.get("VAELAB_ROOT", ".")) / "data"
    )


def reproduce(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(tables=", ".join(table_names())) + (__doc__ or ""))
        return 0
    cfg, passthrough = own_config(argv)
    if cfg.get("readme"):
        write_readme(Path(cfg.readme), Path(cfg.reports))
        print(f"vaelab-reproduce: wrote the results section of {cfg.readme} from {cfg.reports}/")
        return 0
    if not cfg.get("table"):
        raise ReproduceError(f"pass table=<name>; tables: {', '.join(table_names())}")
    table = load_table(str(cfg.table))
    budget = table.budget(str(cfg.budget))
    rows = table.select(list(cfg.rows) if cfg.get("rows") else None)
    out_dir = Path(cfg.out_dir)
    data_dir = _data_dir(passthrough)
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    command = " ".join([*env, shlex.join(["vaelab-reproduce", *argv])])
    t0 = time.time()
    launched = False
    rc = 0
    if not cfg.report_only:
        plan = plan_table(
            table, budget, rows, out_dir, passthrough, data_dir, retry_failed=cfg.retry_failed
        )
        for rid, action in plan.actions.items():
            print(f"vaelab-reproduce: {table.name}/{budget.name} row {rid}: {action}", flush=True)
        if cfg.dry_run:
            return 0
        started, commit = _now(), git_commit()
        if plan.to_run:
            launched = True
            try:
                rc = run_plan(plan, passthrough)
            finally:
                record_sitting(
                    out_dir,
                    {
                        "started": started,
                        "finished": _now(),
                        "seconds": round(time.time() - t0, 1),
                        "launched": launched,
                        "command": command,
                        "actions": plan.actions,
                        "git_commit": commit,
                        "exit_status": rc,
                    },
                )
    report_dir = Path(cfg.report_dir) if cfg.get("report_dir") else None
    text, _ = build_report(
        table,
        budget,
        out_dir,
        rows if cfg.get("rows") else None,
        data_dir,
        report_dir,
        f"vaelab-reproduce table={table.name} budget={budget.name}"
        + (f" rows=[{','.join(r.id for r in rows)}]" if cfg.get("rows") else ""),
    )
    print(text)
    print(f"vaelab-reproduce: report in {report_dir or out_dir}/report.md, report.csv")
    return rc


def main() -> None:
    try:
        sys.exit(reproduce(sys.argv[1:]))
    except ReproduceError as err:
        print(f"vaelab-reproduce: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
