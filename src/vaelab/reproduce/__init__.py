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

The package, one job a module: ``tables`` (the YAML schema, and the one Hydra compose helper),
``rows`` (generated row configs, a row's run on disk), ``launch`` (plan, provenance, multiruns),
``seeds`` (a row's runs over seeds: mean, s.e. over seeds), ``formatting``, ``cells`` (ours beside
theirs, CSV and Markdown), ``checks``, ``plots``, ``report`` (report.md/.csv/.json), ``readme`` (the
README's generated results) and ``cli`` (``vaelab-reproduce``).
"""

from __future__ import annotations

import subprocess  # noqa: F401  (tests stand in for the jobs by patching subprocess.call)

from vaelab.reproduce.cells import ReportLine, report_lines, reproduced_cell
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
from vaelab.reproduce.report import build_report, protocol_line
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
from vaelab.reproduce.seeds import RowResult, SeedStats, row_results, standard_error
from vaelab.reproduce.tables import (
    DATA_PROTOCOLS,
    Budget,
    ReproduceError,
    Row,
    Table,
    compose_config,
    load_table,
    table_names,
)

__all__ = [
    "DATA_PROTOCOLS",
    "README_END",
    "README_START",
    "ROW_GROUP",
    "RUN_ONLY_KEYS",
    "Budget",
    "Plan",
    "ReportLine",
    "ReproduceError",
    "Row",
    "RowResult",
    "RowState",
    "SeedStats",
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
    "protocol_line",
    "read_curves",
    "readme_section",
    "record_sitting",
    "report_lines",
    "reproduce",
    "reproduced_cell",
    "row_config",
    "row_results",
    "row_state",
    "run_checks",
    "run_config",
    "run_plan",
    "standard_error",
    "table_differences",
    "table_names",
    "wall",
    "write_readme",
]
