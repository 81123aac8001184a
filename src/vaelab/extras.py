"""Optional integrations: the pip extra each one needs, and a clear error when it is missing.

``pip install vaelab`` installs what training, evaluation and the CSV/TensorBoard loggers need.
The heavy integrations are extras (``make install`` installs them all, through the ``dev`` extra):

- ``vaelab[wandb]``: ``logger=wandb`` (Weights & Biases);
- ``vaelab[sweeps]``: ``hparams_search=...`` / ``hydra/sweeper=optuna`` (hydra-optuna-sweeper),
  ``hydra/launcher=parallel`` (hydra-joblib-launcher), ``hydra/launcher=slurm``
  (hydra-submitit-launcher);
- ``vaelab[compression]``: ``vaelab-compress`` (constriction; ``vaelab.compression`` names it);
- ``vaelab[all]``: all of them.

Hydra looks for sweeper and launcher configs before vaelab's code runs, so the command line is
checked first (:func:`check_command_line`); W&B is checked when its logger is built
(:func:`require`).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from vaelab.config import config_dir

#: module -> (pip package, vaelab extra)
PACKAGES = {
    "wandb": ("wandb", "wandb"),
    "hydra_plugins.hydra_optuna_sweeper": ("hydra-optuna-sweeper", "sweeps"),
    "hydra_plugins.hydra_joblib_launcher": ("hydra-joblib-launcher", "sweeps"),
    "hydra_plugins.hydra_submitit_launcher": ("hydra-submitit-launcher", "sweeps"),
}
_LAUNCHERS = {
    "parallel": "hydra_plugins.hydra_joblib_launcher",
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "slurm": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
}


class MissingExtraError(ModuleNotFoundError):
    """An optional integration was asked for but its package is not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def message(module: str, what: str) -> str:
    package, extra = PACKAGES[module]
    return (
        f"{what} needs {package}, which is not installed. Install it with: "
        f"pip install 'vaelab[{extra}]'  (or: pip install {package})"
    )


def require(module: str, what: str) -> None:
    """Raise :class:`MissingExtraError` naming the ``pip install`` if ``module`` is missing."""
    if not _installed(module):
        raise MissingExtraError(message(module, what))


def _uses_optuna(search: str) -> bool:
    packaged = Path(config_dir()) / "hparams_search" / f"{search}.yaml"
    return packaged.is_file() and "hydra/sweeper: optuna" in packaged.read_text()


def needed_modules(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``[(module, the override that needs it)]`` for the plugins a command line asks for."""
    out = []
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if (key == "hydra/sweeper" and value == "optuna") or (
            key == "hparams_search" and _uses_optuna(value)
        ):
            out.append(("hydra_plugins.hydra_optuna_sweeper", arg))
        elif key == "hydra/launcher" and value in _LAUNCHERS:
            out.append((_LAUNCHERS[value], arg))
    return out


def check_command_line(argv: Sequence[str] | None = None, prog: str = "vaelab-train") -> None:
    """Exit with a clear message (status 2) if the command line asks for a missing plugin."""
    argv = sys.argv[1:] if argv is None else argv
    for module, arg in needed_modules(argv):
        if not _installed(module):
            print(f"{prog}: {message(module, arg)}", file=sys.stderr)
            raise SystemExit(2)


__all__ = ["PACKAGES", "MissingExtraError", "check_command_line", "needed_modules", "require"]
