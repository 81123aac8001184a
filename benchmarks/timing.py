"""Shared by the benchmarks: an epoch timer callback and one epoch through vaelab's Trainer."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from vaelab.train import build


class EpochTimer(Callback):
    """Wall and CPU time of each training epoch (the Trainer's own overhead included), and the
    intervals between consecutive batch starts (one whole step each)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.steps: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._last = None

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.steps.append(now - self._last)
        self._last = now

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._cpu0)


Timing = tuple[float, float, list[float]]  # epoch wall s, epoch CPU s, step intervals s


def run_vaelab(cfg: DictConfig, data: torch.Tensor) -> Timing:
    """One epoch through the Trainer built by ``vaelab.train.build`` (logging, checks, callbacks)."""
    L.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    timer = EpochTimer()
    objects["trainer"].callbacks.append(timer)
    dm = objects["datamodule"]
    dm.splits = {"train": data, "val": data[:0], "test": data[:0]}  # the same pre-loaded tensor
    objects["trainer"].fit(objects["module"], datamodule=dm)
    return timer.times[-1], timer.cpu[-1], timer.steps
