"""A rich progress bar with the loss and the throughput (images per second), cheap per step.

Lightning's ``RichProgressBar`` updates its task, reads the progress-bar metrics and converts
them on every batch. For a small model a step takes about a millisecond on a GPU, so that work is
a visible share of it. :class:`ThroughputProgressBar` updates at most ``refresh_rate`` times per
second (always on the last batch), shows images per second over all processes next to it/s, and
drops Lightning's ``v_num``. With ``module.steps_per_batch`` K > 1 (``auto``, the default, picks
K = 20 where it can) the training bar still counts optimizer steps, not Lightning's K-step
batches: the same total, position and it/s as with K = 1. The loss shown is ``train/loss`` as last logged (every
``trainer.log_every_n_steps`` steps), read from the module's ``last_train_metrics`` (a float
copied once per logging step) rather than from a ``prog_bar=True`` metric, which Lightning turns
into a Python number after every batch: a host-device sync each step on a GPU.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme
from lightning.pytorch.trainer.states import TrainerFn
from rich.progress import ProgressColumn, Task
from rich.text import Text
from torch import Tensor


def batch_items(batch: Any) -> int | None:
    """Examples in a batch: a tensor's first dimension, or that of the first tensor of a tuple."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, list | tuple) and batch:
        return batch_items(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_items(next(iter(batch.values())))
    return None


class ThroughputColumn(ProgressColumn):
    """``12.3it/s 1,234 img/s``: batches and examples per second (over all processes)."""

    max_refresh = 0.5  # seconds; avoids jitter

    def __init__(self, bar: ThroughputProgressBar, style: Any = "dim underline") -> None:
        self.bar = bar
        self.style = style
        super().__init__()

    def render(self, task: Task) -> Text:
        speed = task.speed
        if speed is None:
            return Text("--it/s", style=self.style)
        text = f"{speed:.2f}it/s"
        items = self.bar.items_per_batch.get(task.id)
        if items:
            text += f" {speed * items:,.0f} {self.bar.unit}/s"
        return Text(text, style=self.style)


class ThroughputProgressBar(RichProgressBar):
    """Rich progress bar: loss, it/s and images/s, updated at most ``refresh_rate`` times a second.

    Args:
        refresh_rate: display updates per second (0 hides the bar).
        leave: keep each epoch's finished bar on screen.
        unit: what an example is called in the throughput column (``img``).
        theme: Lightning's ``RichProgressBarTheme`` (or a dict of its fields).
        console_kwargs: passed to ``rich.console.Console``.
    """

    def __init__(
        self,
        refresh_rate: float = 4,
        leave: bool = False,
        unit: str = "img",
        theme: RichProgressBarTheme | dict[str, Any] | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(theme, dict):
            theme = RichProgressBarTheme(**theme)
        super().__init__(
            refresh_rate=refresh_rate,  # type: ignore[arg-type]  # rich takes a float rate
            leave=leave,
            theme=theme or RichProgressBarTheme(),
            console_kwargs=console_kwargs,
        )
        self.unit = unit
        self.items_per_batch: dict[Any, int] = {}
        self._interval = 1.0 / refresh_rate if refresh_rate > 0 else float("inf")
        self._next_update = 0.0

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        return [*columns[:-1], ThroughputColumn(self, style=self.theme.processing_speed)]

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        loss = getattr(pl_module, "last_train_metrics", {}).get("train/loss")
        if loss is not None and trainer.state.fn == TrainerFn.FITTING:
            items["train/loss"] = loss
        return items

    def _steps_per_batch(self) -> int:
        """K, the minibatches per training batch, as the training loader declares it
        (``IndexBatchLoader.steps_per_batch``; 1 when not training, or for another loader)."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return 1
        return int(getattr(trainer.train_dataloader, "steps_per_batch", 1) or 1)

    @property
    def total_train_batches(self) -> int | float:
        """Optimizer steps of the epoch (Lightning counts its batches, K steps each with K > 1)."""
        total = super().total_train_batches
        k = self._steps_per_batch()
        steps = getattr(self.trainer.train_dataloader, "num_minibatches", None)
        if k == 1 or steps is None or total == float("inf"):
            return total
        t = self.trainer
        if t.max_epochs == -1 and t.max_steps is not None and t.max_steps > 0:
            return min(int(steps), t.max_steps - t.global_step)  # Lightning's rule, in steps
        return int(steps)

    def _due(self, batch_idx: int, total: float) -> bool:
        """Whether to redraw now: the interval has passed, or this is the last batch."""
        now = time.monotonic()
        if now >= self._next_update or batch_idx + 1 >= total:
            self._next_update = now + self._interval
            return True
        return False

    def _note_items(self, task_id: Any, batch: Any, trainer: L.Trainer) -> None:
        if task_id is not None and task_id not in self.items_per_batch:
            n = batch_items(batch)
            if self._steps_per_batch() > 1 and isinstance(batch, Tensor) and batch.dim() > 1:
                n = int(batch.shape[1])  # K minibatches of B; the bar counts steps of B each
            if n:
                self.items_per_batch[task_id] = n * trainer.world_size

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._next_update = 0.0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        total = self.total_train_batches
        k = self._steps_per_batch()
        if k > 1:  # the steps done in this epoch, as position: the bar counts optimizer steps
            batch_idx = min((batch_idx + 1) * k, total) - 1
        if self.is_disabled or not self._due(batch_idx, total):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._note_items(self.train_progress_bar_id, batch, trainer)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.is_disabled:
            return
        if not self._due(batch_idx, self.total_val_batches_current_dataloader):
            return
        super().on_validation_batch_end(
            trainer, pl_module, outputs, batch, batch_idx, dataloader_idx
        )
        task = (
            self.val_sanity_progress_bar_id if trainer.sanity_checking else self.val_progress_bar_id
        )
        self._note_items(task, batch, trainer)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.is_disabled:
            return
        if not self._due(batch_idx, self.total_test_batches_current_dataloader):
            return
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._note_items(self.test_progress_bar_id, batch, trainer)


__all__ = ["ThroughputColumn", "ThroughputProgressBar", "batch_items"]
