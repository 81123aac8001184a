"""Keep the W&B run id in every checkpoint, so a resumed training continues the same W&B run.

``vaelab.train`` adds this callback whenever a W&B logger is configured (:func:`tracking_callbacks`)
and, before building the loggers, reads the saved run back from the checkpoint it resumes from
(:func:`wandb_state_from_checkpoint`, then ``vaelab.loggers.continue_wandb_runs``). The id has to
be read from the file *before* the W&B run starts (Lightning restores callback state only inside
``fit``), which is why it lives under a fixed key: ``checkpoint["callbacks"]["WandbResume"]``.

``vaelab.loggers`` never imports this module (``vaelab.train`` adds the callback), so the two do
not import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from vaelab.loggers.wandb_mode import started_run

log = logging.getLogger(__name__)


class WandbResume(L.Callback):
    """Saves ``{run_id, project, group, name}`` of the first W&B logger in the checkpoint."""

    STATE_KEY = "WandbResume"

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self.restored: dict[str, Any] = {}

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _logger(self) -> _LightningWandbLogger | None:
        loggers = self._trainer.loggers if self._trainer is not None else []
        found = [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]
        return found[0] if found else None

    def state_dict(self) -> dict[str, Any]:
        lg = self._logger()
        if lg is None:
            return dict(self.restored)
        run = started_run(lg)  # never start a run just to save a checkpoint
        if run is None:
            return dict(self.restored) if not lg.version else {"run_id": lg.version}
        return {
            "run_id": run.id,
            "project": getattr(run, "project", None),
            "group": getattr(run, "group", None),
            "name": getattr(run, "name", None),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict)
        lg = self._logger()
        run = started_run(lg) if lg is not None else None
        saved = self.restored.get("run_id")
        if run is not None and saved and run.id != saved:
            log.warning(
                "The checkpoint belongs to W&B run %s but this run logs to %s", saved, run.id
            )


def tracking_callbacks(loggers: Iterable[Logger], callbacks: Iterable[Any] = ()) -> list[Any]:
    """Callbacks the loggers need: ``WandbResume`` (run id in checkpoints) when W&B is used."""
    has_wandb = any(isinstance(lg, _LightningWandbLogger) for lg in loggers)
    if not has_wandb or any(isinstance(c, WandbResume) for c in callbacks):
        return []
    return [WandbResume()]


def wandb_state_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``{run_id, project, group, name}`` saved by ``WandbResume`` (``{}`` when absent)."""
    return dict((checkpoint.get("callbacks") or {}).get(WandbResume.STATE_KEY) or {})


def run_id_from_checkpoint(checkpoint: Mapping[str, Any]) -> str | None:
    """The W&B run id saved by ``WandbResume`` in a loaded checkpoint dict, or None."""
    run_id = wandb_state_from_checkpoint(checkpoint).get("run_id")
    return str(run_id) if run_id else None


__all__ = [
    "WandbResume",
    "run_id_from_checkpoint",
    "tracking_callbacks",
    "wandb_state_from_checkpoint",
]
