"""Run names under Hydra: one W&B group per sweep, one run name per job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _swept_keys(hc: Any) -> set[str]:
    """Keys a sweep varies: ``hydra.sweeper.params`` (Optuna, basic) and the sweep overrides of the
    command line (``seed=0,1,2``, read back from the sweep's ``multirun.yaml``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = {str(k) for k in (hc.sweeper.get("params") or {})}
    saved = Path(str(hc.sweep.dir)) / "multirun.yaml"
    if saved.is_file():
        try:
            task = OmegaConf.load(saved).hydra.overrides.task
            for o in OverridesParser.create().parse_overrides([str(t) for t in task]):
                if o.is_sweep_override():
                    keys.add(o.key_or_group)
        except Exception as err:  # a name is never worth failing a run for
            log.debug("could not read the sweep overrides from %s: %s", saved, err)
    return keys


def _job_label(hc: Any) -> str:
    """``key=value`` of the job's swept overrides (all its overrides when they cannot be told)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = _swept_keys(hc)
    task = [str(t) for t in hc.overrides.task]
    if swept:
        try:
            parsed = OverridesParser.create().parse_overrides(task)
            chosen = [t.lstrip("+~") for t, o in zip(task, parsed) if o.key_or_group in swept]
            if chosen:
                return ",".join(chosen)
        except Exception as err:
            log.debug("could not parse the job overrides %s: %s", task, err)
    return str(hc.job.override_dirname or "default")


def hydra_run_names(task_name: str | None = None) -> dict[str, str | None]:
    """W&B ``group`` and ``name`` for the current Hydra job (``{}`` outside Hydra).

    Multirun: ``group = <task_name>-<sweep dir name>`` (one group per sweep, Optuna included) and
    ``name = <job num>-<swept overrides>`` (e.g. ``3-model.objective.beta=2,seed=1``; 120 characters
    at most). Single run: ``group = None``, ``name = <task_name>-<run dir name>``.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return {}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    task = task_name or hc.job.name
    if hc.mode == RunMode.MULTIRUN:
        return {
            "group": f"{task}-{Path(str(hc.sweep.dir)).name}",
            "name": f"{hc.job.num}-{_job_label(hc)}"[:120],
        }
    return {"group": None, "name": f"{task}-{Path(str(hc.runtime.output_dir)).name}"}


__all__ = ["hydra_run_names"]
