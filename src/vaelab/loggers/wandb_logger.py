"""Lightning's W&B logger, made to work with no account and no network, and its run lifecycle.

``logger=wandb`` builds :class:`WandbLogger` (``conf/logger/wandb.yaml``); see the package docstring
(:mod:`vaelab.loggers`) for what it does. Resume: the run id, name and group saved in a checkpoint
(``vaelab.callbacks.wandb_resume.WandbResume``) are put into the logger's *config* before it is
built (:func:`continue_wandb_runs`: its ``id`` argument, Lightning's public constructor), so the
resumed run continues the same W&B run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from vaelab.extras import require
from vaelab.loggers.naming import hydra_run_names
from vaelab.loggers.wandb_mode import resolve_mode, started_run

log = logging.getLogger(__name__)


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with automatic offline mode, a bounded start and resume by id.

    Args:
        save_dir: where ``wandb/`` (run files, offline runs) is written; default the run directory.
        project: W&B project.
        name: run name; None: derived from the Hydra job (:func:`hydra_run_names`).
        group: run group; None: the sweep under multirun, none for a single run.
        job_type: e.g. the task name (``train``).
        tags: run tags.
        offline: None (auto: offline without an API key), True (force offline), False (online).
        id: run id to continue (set from the checkpoint on resume: :func:`continue_wandb_runs`).
        init_timeout: seconds ``wandb.init`` may take before it gives up.
        fallback_offline: when an online start fails, go on offline (True) or raise (False).
        log_model: upload checkpoints as artifacts (online only; ignored offline, with a warning).
        settings: extra ``wandb.Settings`` fields as a dict (e.g. ``{x_disable_stats: true}``).
        **kwargs: passed to ``wandb.init`` (``entity``, ``notes``, ...).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str] = ".",
        project: str | None = "vaelab",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] | None = None,
        offline: bool | None = None,
        id: str | None = None,
        init_timeout: float = 60.0,
        fallback_offline: bool = True,
        log_model: bool | str = False,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        require("wandb", "logger=wandb")  # the pip install to run, not Lightning's bare hint
        mode = resolve_mode(offline)
        if mode == "offline" and offline is None:
            log.info(
                "W&B logs offline (no API key found, or WANDB_MODE=offline); upload later with "
                "`wandb sync <run dir>/wandb/offline-run-*`"
            )
        if mode != "online" and log_model:
            log.warning(
                "W&B runs %s: log_model=%s is ignored (nothing is uploaded)", mode, log_model
            )
            log_model = False
        names = hydra_run_names(job_type)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        settings = {"init_timeout": float(init_timeout), **dict(settings or {})}
        super().__init__(
            name=name if name is not None else names.get("name"),
            save_dir=os.fspath(save_dir),
            id=id,
            project=project,
            log_model=log_model,
            offline=False,  # the mode is passed to wandb.init; Lightning's flag sets WANDB_MODE globally
            group=group if group is not None else names.get("group"),
            job_type=job_type,
            tags=list(tags) if tags else None,
            mode=mode,
            settings=settings,
            **kwargs,
        )
        self.fallback_offline = bool(fallback_offline)
        self._mode = mode

    @property
    def mode(self) -> str:
        """``online``, ``offline`` or ``disabled`` (the mode of the next or current ``wandb.init``)."""
        return self._mode

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use; an online start that fails falls back offline."""
        # Lightning's WandbLogger has no public way to change the wandb.init arguments or to drop
        # the run after construction: ``_experiment`` and ``_wandb_init`` are what its own
        # ``experiment`` property reads (Lightning 2.4-2.6), so the offline fallback sets them.
        if self._experiment is not None:
            return self._experiment
        try:
            return super().experiment
        except Exception as err:  # wandb raises CommError, UsageError, AuthenticationError, ...
            if self.mode != "online" or not self.fallback_offline:
                raise
            log.warning(
                "W&B could not start online (%s: %s); logging offline instead. Upload later with "
                "`wandb sync %s/wandb/offline-run-*`.",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                self._save_dir,
            )
            self._wandb_init["mode"] = self._mode = "offline"
            self._log_model = False
            self._experiment = None
            return super().experiment

    @property
    def run_dir(self) -> Path | None:
        """The run's local folder (``.../wandb/offline-run-<time>-<id>``), once started."""
        run = started_run(self)
        if run is None or not getattr(run, "dir", None):
            return None
        return Path(run.dir).parent  # run.dir is <run dir>/files


def wandb_loggers(loggers: Iterable[Logger]) -> list[_LightningWandbLogger]:
    """The W&B loggers among ``loggers`` (Lightning's class or ours)."""
    return [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]


def is_wandb_logger_config(node: Any) -> bool:
    """Whether a logger config node builds a W&B logger (its ``_target_`` subclasses Lightning's)."""
    target = node.get("_target_") if isinstance(node, Mapping) or hasattr(node, "get") else None
    if not target:
        return False
    try:
        from hydra.utils import get_class

        return issubclass(get_class(str(target)), _LightningWandbLogger)
    except Exception:  # an unimportable target fails later, at instantiate, with Hydra's error
        return False


def continue_wandb_runs(logger_cfg: Any, state: Mapping[str, Any]) -> int:
    """Point the W&B logger configs in ``logger_cfg`` at the saved run ``state``; returns how many.

    ``state`` is what ``WandbResume`` saved (``run_id``, ``name``, ``group``). The id goes to the
    logger's ``id`` argument (Lightning then resumes with ``resume="allow"``); name and group are
    kept unless the config gives its own.
    """
    from omegaconf import open_dict

    if not state.get("run_id") or not logger_cfg:
        return 0
    count = 0
    for node in logger_cfg.values():
        if not is_wandb_logger_config(node):
            continue
        with open_dict(node):
            node.id = str(state["run_id"])
            for key in ("name", "group"):
                if node.get(key) is None and state.get(key):
                    node[key] = state[key]
        count += 1
    return count


def finish_loggers(
    loggers: Iterable[Logger], summary: Mapping[str, float] | None = None, ok: bool = True
) -> None:
    """Write ``summary`` into each W&B run's summary and finish the run (rank zero only).

    Called at the end of every ``vaelab.train.train``: the next Hydra job in the same process then
    starts its own run instead of reusing this one.
    """
    for lg in wandb_loggers(loggers):
        run = started_run(lg)
        if run is None or not hasattr(run, "finish"):
            continue
        try:
            if summary:
                run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
            run.finish(exit_code=0 if ok else 1)
        except Exception as err:  # a tracker must never turn a finished run into a failure
            log.warning("W&B run %s did not finish cleanly: %s", getattr(run, "id", "?"), err)
        # No public way to drop a finished run from Lightning's logger: without this, the next
        # Hydra job in this process would log into the finished run.
        lg._experiment = None


__all__ = [
    "WandbLogger",
    "continue_wandb_runs",
    "finish_loggers",
    "is_wandb_logger_config",
    "wandb_loggers",
]
