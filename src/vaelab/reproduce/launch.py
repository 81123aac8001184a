"""Planning and launching: skip / resume / start per row, provenance, one multirun per entry."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vaelab.reproduce.rows import (
    ROW_GROUP,
    RUN_ONLY_KEYS,
    RowState,
    check_rows_exist,
    compose_row,
    entry_passthrough,
    link_checkpoints,
    read_json,
    row_config,
    row_seeds,
    row_state,
)
from vaelab.reproduce.tables import Budget, ReproduceError, Row, Table
from vaelab.resume import config_differences

PACKAGES = ("vaelab", "torch", "lightning", "hydra-core", "numpy")


def git_commit(repo: Path | None = None) -> str:
    repo = repo or Path(__file__).resolve().parents[3]
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
    seeds: int = 1


def plan_table(
    table: Table,
    budget: Budget,
    rows: Sequence[Row],
    out_dir: Path,
    passthrough: Sequence[str],
    data_dir: str | None,
    retry_failed: bool = False,
    write: bool = True,
    seeds: int = 1,
) -> Plan:
    """Decide per job (a row, or a row's seed when ``seeds`` > 1): skip, resume, start, or refuse
    (config differs); write the jobs' configs. Each seed of a row is its own job, resumed or
    skipped on its own: a finished seed is never run again.

    A ``checkpoint_of`` row starts with its training row's ``checkpoints/last.ckpt`` as
    ``ckpt_path``: at once where that row has finished ok, after it where it runs in this sitting
    (``run_plan`` launches it only if that row then ends ok), and not at all otherwise.
    """
    check_rows_exist(table, rows)
    runs = out_dir / "runs"
    conf_dir = out_dir / "conf"
    # seed by seed: every row's seed 0 runs before any row's seed 1, so a table stopped part-way
    # has whole seeds (every row, comparable) rather than some rows with every seed
    states = [row_state(runs, r, data_dir, seed) for seed in row_seeds(seeds) for r in rows]
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
            dep_runs = any((s.row.id, s.seed) == (st.row.checkpoint_of, st.seed) for s in to_run)
            if not st.blocked:
                action = f"start with {ckpt}"
            elif dep_runs:
                dep = st.row.checkpoint_of + ("" if st.seed is None else f" seed {st.seed}")
                action = f"start after row {dep}, with {ckpt}, if it ends ok"
            else:
                action = f"skipped: not run: {st.blocked}"
        elif st.last_ckpt is not None:
            ckpt = str(st.last_ckpt.resolve())
            action = f"resume from {ckpt}"
        else:
            action = "start"
        if write:
            (conf_dir / ROW_GROUP).mkdir(parents=True, exist_ok=True)
            (conf_dir / ROW_GROUP / f"{st.run_id}.yaml").write_text(
                row_config(table, budget, st.row, ckpt, st.seed)
            )
        try:
            cfg = compose_row(conf_dir.resolve(), st.row, passthrough, st.seed)
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
            st.differs = [
                f"{key}: run has {a!r}, table has {b!r}"
                for key, a, b in config_differences(ran, want, keys=None, free=RUN_ONLY_KEYS)
            ]
            if st.differs:
                refused.append(st)
        actions[st.name] = action
        if not action.startswith("skipped"):
            to_run.append(st)
    actions = {st.name: actions[st.name] for st in states}  # in the table's order
    to_run.sort(key=states.index)
    if refused:
        lines = []
        for st in refused:
            lines.append(f"  row {st.name} ({st.dir}):")
            lines += [f"    {d}" for d in st.differs[:10]]
            if len(st.differs) > 10:
                lines.append(f"    ... and {len(st.differs) - 10} more")
        raise ReproduceError(
            "refusing to resume or reuse rows whose existing run was made with a different config "
            "than the table's:\n" + "\n".join(lines) + "\nRestore the table's settings, move those "
            "row folders away to run them afresh, or pass out_dir=<another folder>."
        )
    return Plan(table, budget, out_dir, states, to_run, actions, data_dir, seeds)


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
        "hydra.sweep.subdir=${reproduce.dir}",
        *passthrough,
    ]


def describe_plan(plan: Plan, passthrough: Sequence[str]) -> list[str]:
    """What a sitting would run, for ``dry_run=true``: each row's job (entry point, experiment,
    overrides, checkpoint) and the multirun command of each launch, in launch order."""
    if not plan.to_run:
        return ["nothing to run: every row is finished, failed or waiting (see above)"]
    out = []
    for st in plan.to_run:
        ovs = [
            *plan.budget.overrides,
            *st.row.overrides_for(plan.budget.name),
            *st.row.protocol_overrides(),
        ]
        if st.seed is not None and st.row.checkpoint_of is None:
            ovs.append(f"seed={st.seed}")
        if st.row.experiment:
            ovs.insert(0, f"experiment={st.row.experiment}")
        if st.checkpoint is not None:
            ovs.append(f"ckpt_path={st.checkpoint}")
        elif st.last_ckpt is not None:
            ovs.append(f"ckpt_path={st.last_ckpt.resolve()}")
        out.append(f"row {st.name} would run {st.row.entry} in {st.dir}: {' '.join(ovs)}")
    waiting = [st for st in plan.to_run if st.checkpoint is not None and st.blocked]
    for group, when in (
        ([st for st in plan.to_run if st not in waiting], ""),
        (waiting, " (after the above, for the rows whose training row then ended ok)"),
    ):
        by_entry: dict[str, list[str]] = {}
        for st in group:
            by_entry.setdefault(st.row.entry, []).append(st.run_id)
        for entry, ids in by_entry.items():
            cmd = shlex.join(multirun_command(plan, entry, ids, passthrough))
            out.append(f"would launch{when}: {cmd}")
    return out


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
            plan.actions[st.name] = f"not launched: {st.blocked}"
            print(f"vaelab-reproduce: row {st.name}: {plan.actions[st.name]}", flush=True)
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
        by_entry.setdefault(st.row.entry, []).append(st.run_id)
    rc = 0
    for st in states:  # provenance of every sitting of every row
        st.dir.mkdir(parents=True, exist_ok=True)
        prov_path = st.dir / "reproduce_row.json"
        prov = read_json(prov_path) or {"sittings": []}
        prov["sittings"].append(
            {
                "started": _now(),
                "action": plan.actions[st.name],
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


def ledger_path(out_dir: Path) -> Path:
    return out_dir / "reproduce.json"


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
