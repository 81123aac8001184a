"""``vaelab-reproduce``: parse this command's keys, plan, launch, report."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import vaelab.reproduce as reproduce_package
from vaelab.config import config_dir
from vaelab.reproduce.launch import (
    _now,
    describe_plan,
    git_commit,
    plan_table,
    record_sitting,
    run_plan,
)
from vaelab.reproduce.readme import write_readme
from vaelab.reproduce.report import build_report
from vaelab.reproduce.tables import ReproduceError, compose_config, load_table, table_names

USAGE = """usage: vaelab-reproduce table=<table> budget=<budget> [rows=[id,...]] [report_only=true]
                        [seeds=N] [retry_failed=true] [out_dir=DIR] [report_dir=DIR]
                        [dry_run=true]
                        [any vaelab-train override or launcher: hydra/launcher=parallel ...]
       vaelab-reproduce readme=README.md [reports=reports]
tables: {tables}
"""


def own_config(argv: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """Split ``argv`` into this command's keys (``conf/reproduce.yaml``) and the rows' overrides."""
    base = OmegaConf.load(Path(config_dir()) / "reproduce.yaml")
    own, rest = [], []
    for a in argv:
        if a in ("-m", "--multirun"):
            continue
        key = a.split("=", 1)[0].lstrip("+~")
        (own if key.split(".")[0] in base else rest).append(a)
    cfg = compose_config("reproduce", own)
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
        print(USAGE.format(tables=", ".join(table_names())) + (reproduce_package.__doc__ or ""))
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
    seeds = table.seeds_for(budget, None if cfg.get("seeds") is None else int(cfg.seeds))
    fixed = [o for o in passthrough if o.lstrip("+").split("=", 1)[0] == "seed"]
    if seeds > 1 and fixed:
        raise ReproduceError(
            f"{fixed[0]} would give every one of the {seeds} seeds the same seed; drop it (the "
            f"rows train with seeds 0..{seeds - 1}), or pass seeds=1"
        )
    out_dir = Path(cfg.out_dir)
    data_dir = _data_dir(passthrough)
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    command = " ".join([*env, shlex.join(["vaelab-reproduce", *argv])])
    t0 = time.time()
    launched = False
    rc = 0
    if not cfg.report_only:
        plan = plan_table(
            table,
            budget,
            rows,
            out_dir,
            passthrough,
            data_dir,
            retry_failed=cfg.retry_failed,
            seeds=seeds,
        )
        for rid, action in plan.actions.items():
            print(f"vaelab-reproduce: {table.name}/{budget.name} row {rid}: {action}", flush=True)
        if cfg.dry_run:
            for line in describe_plan(plan, passthrough):
                print(f"vaelab-reproduce: {line}", flush=True)
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
        seeds=seeds,
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
