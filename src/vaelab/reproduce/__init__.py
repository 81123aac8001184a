"""``vaelab-reproduce``: a published table as data -> one Hydra multirun -> ours beside theirs.

How tables, budgets, seeds and rows work is the docstring of :mod:`vaelab.reproduce.cli` (what
``vaelab-reproduce --help`` prints) and ``docs/reproduce.md``.

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
from vaelab.reproduce.plots import plot_curves, plot_rate_distortion, plot_sweep, read_curves
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
    "plot_sweep",
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
