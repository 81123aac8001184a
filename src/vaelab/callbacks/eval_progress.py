"""Log lines for a long test pass: where it is and how long it has left, also without a terminal.

The default test pass (``L_5000`` over 10,000 test images) takes minutes to hours on a CPU, and
a progress bar draws nothing when the output goes to a file (``vaelab-train > log``, a cluster
job). :class:`EvaluationProgressLog` writes one line through ``logging`` (so into the run's
``train.log`` / ``eval.log`` too) every ``every_percent`` percent of the test batches or every
``every_seconds`` seconds, whichever comes first, with the elapsed time and an estimate of the
time left: ``test: 30/100 batches (30 %), 2m05s elapsed, about 4m52s left (k = 5000)``.
With a terminal and a progress bar shown, it logs only every ``every_seconds`` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class EvaluationProgressLog(L.Callback):
    """One log line every ``every_percent`` % of the test batches or ``every_seconds`` seconds.

    Args:
        every_percent: log each time this share of the batches more is done (without a terminal).
        every_seconds: log at least this often while batches finish.
    """

    def __init__(self, every_percent: float = 10.0, every_seconds: float = 30.0) -> None:
        if not every_percent > 0 or not every_seconds > 0:
            raise ValueError(
                "callbacks.eval_progress: every_percent and every_seconds must be > 0, got "
                f"{every_percent} and {every_seconds}"
            )
        self.every_percent = float(every_percent)
        self.every_seconds = float(every_seconds)
        self._t0 = self._last = 0.0
        self._next_percent = 0.0
        self.lines: list[str] = []  # what was logged (tests, notebooks)

    def _quiet_terminal(self, trainer: L.Trainer) -> bool:
        return sys.stderr.isatty() and trainer.progress_bar_callback is not None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last = time.monotonic()
        self._next_percent = self.every_percent
        self.lines = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.num_test_batches[dataloader_idx] if trainer.num_test_batches else 0
        done = batch_idx + 1
        now = time.monotonic()
        percent = 100.0 * done / total if total and total != float("inf") else None
        due = now - self._last >= self.every_seconds
        if percent is not None and percent >= self._next_percent:
            while self._next_percent <= percent:
                self._next_percent += self.every_percent
            due = due or not self._quiet_terminal(trainer)
        if not due or (percent is not None and percent >= 100.0):
            return
        self._last = now
        elapsed = now - self._t0
        k = getattr(pl_module, "test_num_samples", None)
        where = f"{done}/{total} batches ({percent:.0f} %)" if percent is not None else f"{done}"
        left = f", about {_duration(elapsed * (total - done) / done)} left" if percent else ""
        line = f"test: {where}, {_duration(elapsed)} elapsed{left}" + (
            f" (k = {k})" if k is not None else ""
        )
        self.lines.append(line)
        log.info(line)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and time.monotonic() - self._t0 >= self.every_seconds:
            log.info("test: done in %s", _duration(time.monotonic() - self._t0))


__all__ = ["EvaluationProgressLog"]
