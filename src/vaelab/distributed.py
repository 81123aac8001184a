"""DDP inside Hydra multiruns: each sweep job launches its own processes, and cleans up after.

Lightning's DDP launcher (``strategy=ddp`` on one machine) starts ranks 1..N-1 by re-running the
command line with ``hydra.run.dir=<the run dir>``. Under ``--multirun`` that command line is the
whole sweep (``-m seed=0,1,2``): every child would start a sweep of its own, pair with whichever
job the parent is in, and write to a second sweep folder. :func:`hydra_ddp_jobs` fixes this for the
duration of a job: children are started as a *single run* of this job (its own overrides, Optuna's
sampled values included, ``hydra.mode=RUN``, the job's output folder), and the process group is
shut down at the end of the job so that the next job starts fresh processes.

Clusters that start one process per GPU themselves (SLURM via ``hydra/launcher=slurm``, torchrun)
do not go through this launcher and are unaffected.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# hydra.* overrides a child must not repeat: it is one run, in the job's folder.
_HYDRA_DROP = (
    "hydra.mode",
    "hydra.run",
    "hydra.sweep",
    "hydra/launcher",
    "hydra.launcher",
    "hydra/sweeper",
    "hydra.sweeper",
    "hydra.job.name",
    "hydra.job.num",
    "hydra.job.id",
    "hydra.output_subdir",
)
# Set by Lightning's launcher in the parent process; left behind, the next job would believe its
# processes are started externally (LOCAL_RANK present) and wait for ranks that never come.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Lightning's DDP launcher builds the children's command line in the private function
# ``_hydra_subprocess_cmd`` (lightning 2.4-2.6) and offers no public hook to change it (a custom
# launcher would mean a custom strategy copying the launcher's private process handling), so that
# one function is swapped for the duration of a multirun job, and left alone when it is absent.
_PATCHED_MODULES = (
    "lightning.fabric.strategies.launchers.subprocess_script",
    "lightning.pytorch.strategies.launchers.subprocess_script",
)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _strip_prefix(override: str) -> str:
    return override.lstrip("+~")


def child_command(entry_module: str, local_rank: int) -> tuple[list[str], str]:
    """``(command, cwd)`` that starts rank ``local_rank`` of the current multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    command = [sys.executable, "-m", entry_module]
    for source in hc.runtime.config_sources:
        path = str(source.path)
        if source.provider == "main" and path.startswith("file://"):
            command += ["--config-path", path[len("file://") :]]
        elif source.provider == "command-line" and path.startswith("file://"):
            command += ["--config-dir", path[len("file://") :]]
    command += ["--config-name", str(hc.job.config_name)]
    command += [str(o) for o in hc.overrides.task]
    command += [
        str(o)
        for o in hc.overrides.hydra
        if not _strip_prefix(str(o)).split("=", 1)[0].startswith(_HYDRA_DROP)
    ]
    command += [
        "hydra.mode=RUN",
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def _patch(entry_module: str) -> list[tuple[Any, Callable[..., Any]]]:
    import importlib

    restore = []
    for name in _PATCHED_MODULES:
        try:
            mod = importlib.import_module(name)
            original = mod._hydra_subprocess_cmd
        except (ImportError, AttributeError):  # another Lightning layout: leave it alone
            log.debug(
                "%s._hydra_subprocess_cmd not found; DDP under multirun is not adjusted", name
            )
            continue

        def patched(
            local_rank: int, _original: Callable[..., Sequence[Any]] = original
        ) -> Sequence[Any]:
            if _in_multirun():
                return child_command(entry_module, local_rank)
            return _original(local_rank)

        mod._hydra_subprocess_cmd = patched
        restore.append((mod, original))
    return restore


def _shutdown_process_group() -> None:
    """Destroy this process's process group (local; children exit on their own after the job)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # the job's results are written; never fail it here
            log.warning("could not shut down the process group: %s", err)


@contextmanager
def hydra_ddp_jobs(entry_module: str) -> Iterator[None]:
    """Run one Hydra job so that a DDP launch inside it works under ``--multirun``.

    Children of a multirun job start this job only; at the end of the job the process group is
    shut down and the launcher's environment variables are restored, so the next job in the same
    process launches its own children.

    Args:
        entry_module: the module children run with ``python -m`` (``vaelab.train``).
    """
    restore = _patch(entry_module)
    env = {k: os.environ.get(k) for k in _LAUNCHER_ENV}
    try:
        yield
    finally:
        for mod, original in restore:
            mod._hydra_subprocess_cmd = original
        if _in_multirun():
            _shutdown_process_group()
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


__all__ = ["child_command", "hydra_ddp_jobs"]
