"""Shared by the benchmarks: an epoch timer callback and one epoch through vaelab's Trainer."""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from vaelab.train import build


def settle() -> None:
    """Collect the garbage the previous arm left, before an arm's timed epoch starts.

    A Trainer run leaves many Python objects behind; without this, the next arm's epoch pays
    their cyclic garbage collection (0.17 s measured after one RealNVP ``vaelab-train`` epoch, on
    epochs of 0.2-2 s): a bias against whichever arm comes next, not noise. Every arm's timed
    epoch starts after one (``EpochTimer`` does it for the Trainer arms; the benchmarks call it
    before the plain-PyTorch arms). The collector stays on during the epoch, as in training.
    """
    gc.collect()


def write_json(path: str | None, result: dict, complete: bool) -> None:
    """Write ``result`` (with ``"complete": complete``) to ``path`` whole or not at all: a
    benchmark writes after each arm or batch size it finishes, so a run stopped by a time limit
    (e.g. under ``timeout``) keeps what it measured, and a kill during the write leaves
    the previous file (a temporary file renamed over it)."""
    if not path:
        return
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**result, "complete": complete}, indent=2) + "\n")
    os.replace(tmp, dest)


def record_failure(result: dict, key: str, exc: Exception) -> None:
    """Note in ``result["errors"][key]`` (and on stderr, with the traceback) a variant this machine
    cannot run (say, inductor without a compiler), so that the benchmark measures the others
    rather than lose them with it; ``exit_if_failed`` makes the run exit non-zero at the end."""
    traceback.print_exc()
    result["errors"][key] = f"{type(exc).__name__}: {exc}"[:2000]


def exit_if_failed(result: dict) -> None:
    if result["errors"]:
        sys.exit(f"variants that failed: {', '.join(result['errors'])} (see above and the JSON)")


def alternating_medians(
    arms: dict[str, Callable[..., object]],
    inputs: Callable[[int], tuple],
    reps: int,
    device: torch.device,
) -> dict[str, float]:
    """Median microseconds per call of each arm, called in turn on the same ``inputs(r)`` for
    ``r`` in ``range(reps)`` (built before the clock starts), so the machine's drift moves every
    arm alike; on CUDA each call is timed to its end (``synchronize``)."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(reps):
        args = inputs(r)
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn(*args)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: round(1e6 * statistics.median(v), 1) for name, v in times.items()}


class EpochTimer(Callback):
    """Wall and CPU time of each training epoch (the Trainer's own overhead included), the
    intervals between consecutive batch starts divided by the optimizer steps taken in between
    (one whole optimizer step each, also when a batch holds several), and the optimizer steps of
    each epoch, and the K of the module's fit (``steps_per_batch``, as ``auto`` resolved it)."""

    # Its batch hook times blocks of K steps per step (above), so module.steps_per_batch=auto
    # keeps the K it would pick without this timer (before: auto kept K = 1 for it, and the
    # default arm of epoch_speed.py timed K = 1).
    takes_step_blocks = True

    def __init__(self) -> None:
        self.steps_per_batch = 1
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.steps: list[float] = []
        self.optimizer_steps: list[int] = []
        self._last: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.steps_per_batch = int(getattr(module, "steps_per_batch", 1))

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        settle()
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._last = None
        self._step0 = trainer.global_step

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        step = trainer.global_step
        if self._last is not None and step > self._last_step:
            per = (now - self._last) / (step - self._last_step)
            self.steps.extend([per] * (step - self._last_step))
        self._last, self._last_step = now, step

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._cpu0)
        self.optimizer_steps.append(trainer.global_step - self._step0)


Timing = tuple[float, float, list[float]]  # epoch wall s, epoch CPU s, step intervals s
# epoch wall s, optimizer-step intervals s, epoch CPU s, optimizer steps
EpochTiming = tuple[float, list[float], float, int]


def run_vaelab_epoch(cfg: DictConfig, data: torch.Tensor, info: dict | None = None) -> EpochTiming:
    """One epoch through the Trainer built by ``vaelab.train.build`` (logging, checks, callbacks).
    ``info``, if given, gets the fit's ``steps_per_batch`` (the K it ran)."""
    L.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    timer = EpochTimer()
    objects["trainer"].callbacks.append(timer)
    dm = objects["datamodule"]
    dm.splits = {"train": data, "val": data[:0], "test": data[:0]}  # the same pre-loaded tensor
    objects["trainer"].fit(objects["module"], datamodule=dm)
    if info is not None:
        info["steps_per_batch"] = timer.steps_per_batch
    return timer.times[-1], timer.steps, timer.cpu[-1], timer.optimizer_steps[-1]


def run_vaelab(cfg: DictConfig, data: torch.Tensor, info: dict | None = None) -> Timing:
    """``run_vaelab_epoch`` as (epoch wall s, epoch CPU s, step intervals s)."""
    wall, steps, cpu, _ = run_vaelab_epoch(cfg, data, info)
    return wall, cpu, steps


class PlainModule(L.LightningModule):
    """The least a LightningModule can be: the loss, an optimizer, nothing else (no logging,
    checks or callbacks). Timing it shows what Lightning's loop itself costs."""

    def __init__(self, model: torch.nn.Module, optimizer) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model(x).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.parameters())


def run_plain_lightning(cfg: DictConfig, data: torch.Tensor) -> EpochTiming:
    """One epoch of ``PlainModule`` under a bare ``L.Trainer`` (no logger, checkpoints or bar)."""
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)
    objects = build(cfg)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=cfg.trainer.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    dm = objects["datamodule"]
    dm.splits = {"train": data, "val": data[:0], "test": data[:0]}
    trainer.fit(PlainModule(objects["model"], instantiate(cfg.optimizer)), datamodule=dm)
    return timer.times[-1], timer.steps, timer.cpu[-1], timer.optimizer_steps[-1]
