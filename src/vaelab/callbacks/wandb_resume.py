"""Keep the W&B run id in every checkpoint, so a resumed training continues the same W&B run.

``vaelab.train`` adds this callback whenever a W&B logger is configured, and before fitting reads the
id back from the checkpoint it resumes from (``vaelab.loggers.resume_loggers``). The id has to be
read from the file *before* the W&B run starts (Lightning restores callback state only inside
``fit``), which is why it lives under a fixed key: ``checkpoint["callbacks"]["WandbResume"]``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

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

    def _logger(self) -> Any | None:
        from vaelab.loggers import wandb_loggers

        found = wandb_loggers(self._trainer.loggers) if self._trainer is not None else []
        return found[0] if found else None

    def state_dict(self) -> dict[str, Any]:
        lg = self._logger()
        if lg is None:
            return dict(self.restored)
        run = lg._experiment  # not lg.experiment: never start a run just to save a checkpoint
        if run is None or not getattr(run, "id", None):
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
        run = getattr(lg, "_experiment", None) if lg is not None else None
        saved = self.restored.get("run_id")
        if run is not None and saved and getattr(run, "id", saved) != saved:
            log.warning(
                "The checkpoint belongs to W&B run %s but this run logs to %s", saved, run.id
            )


__all__ = ["WandbResume"]
