"""``vaelab-reproduce``: a published table as data -> one Hydra multirun -> ours beside theirs.

    vaelab-reproduce table=iwae_table1 budget=cpu            # run (or finish) the table, report
    vaelab-reproduce table=iwae_table1 budget=cpu rows=[vae_1l_k1,iwae_1l_k5]
    vaelab-reproduce table=beta_rd budget=cpu hydra/launcher=parallel   # launchers apply
    vaelab-reproduce table=iwae_table1 budget=full hydra/launcher=slurm trainer=gpu
    vaelab-reproduce table=iwae_table1 budget=cpu report_only=true      # rebuild the report
    vaelab-reproduce table=bbans budget=cpu seeds=5                  # 5 training seeds a row
    vaelab-reproduce table=bbans budget=cpu dry_run=true             # what would run
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

Seeds are a dimension of the table: ``seeds=N`` (or a table's or budget's ``seeds:``, e.g.
``table=bbans budget=cpu`` trains 5) runs each row with ``seed=0..N-1``, each seed its own job in
``runs/<row>/seed<i>/`` (all pending jobs of an entry point in one multirun; each finished seed is
skipped on a re-run, an interrupted one resumed). A cell is then the mean over seeds ± the
standard error over seeds (stdev with ddof=1, / sqrt(n)), with the test-image s.e. and each seed's
value beside it; "reproduced?" allows the tolerance plus 2 s.e. over seeds, and ordering checks say
whether each step clears 2 s.e. of the difference. A row's ``data: full`` trains on every training
image with no held-out split and no validation (``data.val_size=0``), the papers' protocol where
they do (``bbans``); the report's "Data" line says which protocol each row used.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir
from vaelab.config_check import check_reproduce_paths
from vaelab.reproduce.launch import (
    Plan,
    _now,
    describe_plan,
    git_commit,
    plan_table,
    record_sitting,
    run_plan,
)
from vaelab.reproduce.readme import write_readme
from vaelab.reproduce.report import build_report
from vaelab.reproduce.tables import (
    Budget,
    ReproduceError,
    Row,
    Table,
    compose_config,
    load_table,
    table_names,
)
from vaelab.tasks import TaskRecord, task_wrapper

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
    seeds = table.seeds_for(budget, None if cfg.get("seeds") is None else int(cfg.seeds))
    fixed = [o for o in passthrough if o.lstrip("+").split("=", 1)[0] == "seed"]
    if seeds > 1 and fixed:
        raise ReproduceError(
            f"{fixed[0]} would give every one of the {seeds} seeds the same seed; drop it (the "
            f"rows train with seeds 0..{seeds - 1}), or pass seeds=1"
        )
    given = any(a.lstrip("+").startswith("out_dir=") for a in argv)  # paths stay inside logs/
    check_reproduce_paths(str(cfg.table), budget.name, [r.id for r in rows], cfg.out_dir, given)
    plan = None
    if not cfg.report_only:  # checks every row (a missing experiment, ...) before anything runs
        plan = plan_table(
            table,
            budget,
            rows,
            Path(cfg.out_dir),
            passthrough,
            _data_dir(passthrough),
            retry_failed=cfg.retry_failed,
            seeds=seeds,
        )
        for rid, action in plan.actions.items():
            print(f"vaelab-reproduce: {table.name}/{budget.name} row {rid}: {action}", flush=True)
        if cfg.dry_run:  # prints the plan; nothing is written
            for line in describe_plan(plan, passthrough):
                print(f"vaelab-reproduce: {line}", flush=True)
            return 0
    return run_table(cfg, argv, passthrough, table, budget, rows, seeds, plan)


@task_wrapper(path=lambda cfg: Path(cfg.out_dir) / "metrics.json")
def run_table(
    cfg: DictConfig,
    record: TaskRecord,
    argv: Sequence[str],
    passthrough: list[str],
    table: Table,
    budget: Budget,
    rows: list[Row],
    seeds: int,
    plan: Plan | None,
) -> int:
    """Launch a planned table (``plan``; None: report only) and write its report.
    ``<out_dir>/metrics.json`` records the sitting's status (``vaelab.tasks.task_wrapper``, as
    every command), and the out_dir is held while it runs."""
    out_dir = Path(cfg.out_dir)
    report_dir = Path(cfg.report_dir) if cfg.get("report_dir") else None
    rc = 0
    record.fields = lambda: {
        "table": table.name,
        "budget": budget.name,
        "seeds": seeds,
        "rows": [r.id for r in rows],
        "jobs_exit_status": rc,
        "report": str((report_dir or out_dir) / "report.md"),
        "seconds": record.seconds(),
    }
    data_dir = _data_dir(passthrough)
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]
    command = " ".join([*env, shlex.join(["vaelab-reproduce", *argv])])
    t0 = time.time()
    if plan is not None and plan.to_run:
        started, commit = _now(), git_commit()
        try:
            rc = run_plan(plan, passthrough)
        finally:
            record_sitting(
                out_dir,
                {
                    "started": started,
                    "finished": _now(),
                    "seconds": round(time.time() - t0, 1),
                    "launched": True,
                    "command": command,
                    "actions": plan.actions,
                    "git_commit": commit,
                    "exit_status": rc,
                },
            )
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
    if rc:
        record.status = f"failed: a job of the table exited with status {rc} (see the report)"
    return rc


def main() -> None:
    try:
        sys.exit(reproduce(sys.argv[1:]))
    except ReproduceError as err:
        print(f"vaelab-reproduce: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
