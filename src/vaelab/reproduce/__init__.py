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

The package, one job a module: ``tables`` (the YAML schema, and the one Hydra compose helper),
``rows`` (generated row configs, a row's run on disk), ``launch`` (plan, provenance, multiruns),
``formatting``, ``report`` (cells, report.md/.csv/.json), ``checks``, ``plots``, ``readme`` (the
README's generated results) and ``cli`` (``vaelab-reproduce``).
"""

from __future__ import annotations

import subprocess  # noqa: F401  (tests stand in for the jobs by patching subprocess.call)

from vaelab.reproduce.checks import run_checks
from vaelab.reproduce.cli import main, own_config, reproduce
from vaelab.reproduce.formatting import digits_for, fmt, run_config, wall
from vaelab.reproduce.launch import (
    Plan,
    busy_seconds,
    describe_plan,
    git_commit,
    launch_rows,
    multirun_command,
    package_versions,
    plan_table,
    record_sitting,
    run_plan,
)
from vaelab.reproduce.plots import plot_curves, plot_rate_distortion, read_curves
from vaelab.reproduce.readme import README_END, README_START, readme_section, write_readme
from vaelab.reproduce.report import ReportLine, build_report, report_lines, reproduced_cell
from vaelab.reproduce.rows import (
    ROW_GROUP,
    RUN_ONLY_KEYS,
    RowState,
    compose_row,
    entry_passthrough,
    link_checkpoints,
    row_config,
    row_state,
    table_differences,
)
from vaelab.reproduce.tables import (
    Budget,
    ReproduceError,
    Row,
    Table,
    compose_config,
    load_table,
    table_names,
)

__all__ = [
    "README_END",
    "README_START",
    "ROW_GROUP",
    "RUN_ONLY_KEYS",
    "Budget",
    "Plan",
    "ReportLine",
    "ReproduceError",
    "Row",
    "RowState",
    "Table",
    "build_report",
    "busy_seconds",
    "compose_config",
    "compose_row",
    "describe_plan",
    "digits_for",
    "entry_passthrough",
    "fmt",
    "git_commit",
    "launch_rows",
    "link_checkpoints",
    "load_table",
    "main",
    "multirun_command",
    "own_config",
    "package_versions",
    "plan_table",
    "plot_curves",
    "plot_rate_distortion",
    "read_curves",
    "readme_section",
    "record_sitting",
    "report_lines",
    "reproduce",
    "reproduced_cell",
    "row_config",
    "row_state",
    "run_checks",
    "run_config",
    "run_plan",
    "table_differences",
    "table_names",
    "wall",
    "write_readme",
]
