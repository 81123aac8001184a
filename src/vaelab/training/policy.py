"""How a fit's optimizer steps run: K per Lightning batch, and what ``auto`` picks.

:func:`plan_fit` decides at ``setup`` (``fit``): K (``module.steps_per_batch``), and whether the
steps run through :class:`~vaelab.training.blocks.StepBlocks` under manual optimization (K > 1,
or K = 1 where that is exactly what Lightning's automatic optimization would do, without its
per-step loop machinery) or through Lightning's automatic optimization. :func:`plan_optimizers`
revisits the plan at ``on_fit_start``, once the schedulers exist (``ReduceLROnPlateau``).

``auto`` (vaelab-train's default) picks ``K = AUTO_STEPS_PER_BATCH`` when nothing in the run can
tell K-step blocks from K = 1, and K = 1 otherwise, saying why. With a step-based checkpoint
(``every_n_train_steps``) it picks the largest K <= 20 that divides both the epoch's steps and
every checkpoint interval, so that every checkpoint step ends a block in every epoch (an epoch of
550 steps with checkpoints every 1000 steps: K = 10); K = 1 when only 1 does.

What this module reads of Lightning's private state is marked where it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, Timer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

# ``steps_per_batch: auto``: 20 pays Lightning's per-batch loop once per 20 steps: on 2026-12-07
# the default (auto, K = 20) ran at 1.04-1.19x the hand-written loop and K = 1 at 1.19-1.45x in
# the same runs (two threads, batch 100 and 20; docs "Speed").
AUTO_STEPS_PER_BATCH = 20

# The hooks Lightning's manual_backward and LightningOptimizer.step dispatch at every optimizer step.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
# LightningModule hooks that only automatic optimization calls.
AUTOMATIC_ONLY_HOOKS = (
    "optimizer_step",
    "optimizer_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
    "on_before_zero_grad",
)
# Callback hooks Lightning calls once per Lightning batch (or only under automatic optimization):
# under ``auto`` a callback with one of them keeps K = 1 unless it takes blocks
# (:func:`takes_step_blocks`).
PER_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_zero_grad")


def overrides(obj: Any, base: type, hook: str) -> bool:
    """Whether ``type(obj)`` defines ``hook`` otherwise than ``base``."""
    return getattr(type(obj), hook, None) is not getattr(base, hook, None)


def takes_step_blocks(callback: L.Callback) -> bool:
    """Whether a callback's per-batch hooks do the same with K-step blocks as with K = 1.

    The one interface a callback declares: ``takes_step_blocks = True`` (vaelab's
    ``ResumeState``; benchmarks' timers). Lightning's progress bars (they count blocks),
    checkpoints (their step interval is checked against K) and ``Timer`` (it reads the clock) are
    known to. Others, e.g. ``LearningRateMonitor(logging_interval="step")``, would run once per
    block, so ``auto`` keeps K = 1 for them.
    """
    if getattr(callback, "takes_step_blocks", False):
        return True
    return isinstance(callback, ProgressBar | ModelCheckpoint | Timer)


def check_steps_per_batch(value: int | str) -> int | str:
    """``"auto"`` or an integer >= 1 (as an int); refuses the rest."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ValueError(f"steps_per_batch must be an integer >= 1 or 'auto', got {value!r}")
    if int(value) < 1:
        raise ValueError(f"steps_per_batch must be an integer >= 1 or 'auto', got {value!r}")
    return int(value)


@dataclass(frozen=True)
class StepPlan:
    """How this fit's steps run.

    Attributes:
        k: optimizer steps per Lightning batch (the resolved K).
        blocks: run them through ``StepBlocks`` (manual optimization); else Lightning's
            automatic optimization, one step per batch.
        reason: ``auto`` only: why it trains K = 1 (None when it does not, or not ``auto``).
    """

    k: int = 1
    blocks: bool = False
    reason: str | None = None


def _say_auto_keeps_k1(reason: str) -> None:
    rank_zero_info(
        f"module.steps_per_batch=auto: one optimizer step per Lightning batch, since {reason}; "
        f'blocks of {AUTO_STEPS_PER_BATCH} steps would not keep that (docs "Speed": '
        "module.steps_per_batch)"
    )


def _checkpoint_intervals(trainer: L.Trainer) -> list[int]:
    # ModelCheckpoint keeps every_n_train_steps only privately (no public property).
    return [
        n for cb in trainer.checkpoint_callbacks if (n := getattr(cb, "_every_n_train_steps", 0))
    ]


def _steps_per_epoch(dm: Any) -> int | None:
    """Optimizer steps per epoch of the training loader (None if it does not say)."""
    return getattr(dm.train_dataloader(), "num_minibatches", None)


def _blocks_obstacle(trainer: L.Trainer, dm: Any, k: int) -> tuple[str, str] | None:
    """What makes K-step blocks impossible in this fit, as ``(why, fix)``, or None, apart from
    step checkpoints (:func:`_checkpoint_obstacle`)."""
    t = trainer
    if not hasattr(dm, "use_step_blocks"):
        what = "dataloaders passed to fit" if dm is None else f"{type(dm).__name__}"
        return (
            f"the training data ({what}) cannot be handed out {k} minibatches at once",
            "Use one of vaelab's DataModules (data=...)",
        )
    if t.gradient_clip_val:
        return (
            f"gradients are clipped (trainer.gradient_clip_val={t.gradient_clip_val}), which "
            "Lightning does for one optimizer step per batch",
            "Set trainer.gradient_clip_val=null",
        )
    if t.accumulate_grad_batches != 1:
        return (
            f"gradients are accumulated (trainer.accumulate_grad_batches="
            f"{t.accumulate_grad_batches})",
            "For larger effective batches raise data.batch_size",
        )
    if t.world_size > 1:
        return (
            f"it runs on {t.world_size} processes, and DDP synchronises gradients once per "
            "Lightning batch",
            "Use trainer.devices=1",
        )
    return None


def _auto_obstacle(
    trainer: L.Trainer, module: L.LightningModule, base: type, dm: Any
) -> str | None:
    """Why ``auto`` keeps K = 1 in this fit, or None: what K > 1 refuses, and what it would
    change rather than refuse (counts of Lightning batches, hooks called once per batch)."""
    k = AUTO_STEPS_PER_BATCH
    found = _blocks_obstacle(trainer, dm, k)
    if found:
        return found[0]
    t = trainer
    if t.fast_dev_run:
        return "trainer.fast_dev_run is set"
    # Lightning's int settings count batches; the float 1.0 defaults mean "the whole epoch".
    if not (isinstance(t.limit_train_batches, float) and t.limit_train_batches == 1.0):
        return (
            f"trainer.limit_train_batches={t.limit_train_batches} counts Lightning batches, "
            f"which would be blocks of {k} steps"
        )
    if not (isinstance(t.val_check_interval, float) and t.val_check_interval == 1.0):
        return (
            f"trainer.val_check_interval={t.val_check_interval} counts Lightning batches, "
            f"which would be blocks of {k} steps"
        )
    if t.check_val_every_n_epoch is None:
        return "validation is scheduled in Lightning batches (check_val_every_n_epoch=null)"
    if type(t.profiler) is not PassThroughProfiler:
        return f"a profiler ({type(t.profiler).__name__}) times Lightning's batches"
    if getattr(t.precision_plugin, "scaler", None) is not None:
        return f"precision {t.precision} scales the loss (a GradScaler)"
    for cb in t.callbacks:
        if takes_step_blocks(cb):
            continue
        hooks = [h for h in PER_BATCH_HOOKS if overrides(cb, L.Callback, h)]
        if hooks:
            return (
                f"the callback {type(cb).__name__} has {', '.join(hooks)}, which Lightning "
                f"would call once per block of {k} steps"
            )
    own = ("on_train_batch_start", "on_train_batch_end", *AUTOMATIC_ONLY_HOOKS)
    hooks = [h for h in own if overrides(module, base, h)]
    if hooks:
        return f"{type(module).__name__} overrides {', '.join(hooks)}"
    return None


def _auto_k(trainer: L.Trainer, dm: Any) -> tuple[int, str | None]:
    """``auto``'s K when nothing else stands in the way: 20, or with step checkpoints the
    largest K <= 20 dividing the epoch's steps and every interval (each checkpoint step then
    ends a block in every epoch: epochs start at multiples of K, blocks end at multiples of K).
    Blocks are not cut at checkpoint steps instead: that would change the number of Lightning
    batches from epoch to epoch, and Lightning fixes that number at the first epoch
    (``FitLoop.setup_data``)."""
    intervals = _checkpoint_intervals(trainer)
    if not intervals:
        return AUTO_STEPS_PER_BATCH, None
    steps = _steps_per_epoch(dm)
    g = math.gcd(steps or 1, *intervals)
    k = max(d for d in range(1, AUTO_STEPS_PER_BATCH + 1) if g % d == 0)
    every = ", ".join(map(str, intervals))
    if k == 1:
        return 1, (
            f"a checkpoint every {every} optimizer steps would fall inside a block of "
            f"{AUTO_STEPS_PER_BATCH} steps (an epoch is {steps} steps)"
        )
    if k < AUTO_STEPS_PER_BATCH:
        rank_zero_info(
            f"module.steps_per_batch=auto: blocks of {k} optimizer steps, so that a checkpoint "
            f"every {every} steps ends a block in every epoch of {steps} steps"
        )
    return k, None


def _checkpoint_obstacle(trainer: L.Trainer, dm: Any, k: int) -> tuple[str, str] | None:
    """An explicit K > 1: step checkpoints must fall on block ends (refused otherwise); warns
    when the epoch's steps are not a multiple of K, so that later epochs' blocks miss them."""
    intervals = _checkpoint_intervals(trainer)
    for n in intervals:
        if n % k:
            return (
                f"a checkpoint every {n} optimizer steps would fall inside a block of {k} steps",
                f"Use an every_n_train_steps that is a multiple of {k}",
            )
    steps = _steps_per_epoch(dm) if intervals else None
    if steps and steps % k and trainer.max_epochs != 1:
        rank_zero_warn(
            f"module.steps_per_batch={k}: an epoch is {steps} optimizer steps, not a multiple of "
            f"{k}, so after the first epoch blocks end off the multiples of {k} and a checkpoint "
            f"every {', '.join(map(str, intervals))} steps is written only where a block ends "
            "on one. module.steps_per_batch=auto picks a K that keeps every checkpoint step."
        )
    return None


def step_hooks_are_no_ops(trainer: L.Trainer, module: L.LightningModule, opt: Any) -> bool:
    """Whether the blocks may run backward and the optimizer step directly.

    Per optimizer step, Lightning's ``manual_backward`` and ``LightningOptimizer.step`` pass
    through the strategy and the precision plugin and dispatch ``on_before_backward``,
    ``on_after_backward`` and ``on_before_optimizer_step`` to every callback and the module:
    about 0.2 ms a step on a small CPU model, where the whole step is 2.5 ms. When none of that
    can do anything (one device, no loss scaling, no profiler, and no callback or module
    overriding those hooks), ``StepBlocks`` calls ``loss.backward()`` and the optimizer's
    ``step`` itself. ``opt``: the ``LightningOptimizer``, or None when asked before the
    optimizers exist; it must have the private step callables ``StepBlocks`` uses.
    """
    t = trainer
    pp = t.precision_plugin
    if not (type(pp) is Precision or (type(pp) is MixedPrecision and pp.scaler is None)):
        return False
    if type(t.strategy) is not SingleDeviceStrategy or type(t.profiler) is not PassThroughProfiler:
        return False
    for cb in t.callbacks:
        if any(overrides(cb, L.Callback, h) for h in STEP_HOOKS):
            return False
    for h in ("backward", "on_before_backward", "on_after_backward"):
        if overrides(module, L.LightningModule, h):
            return False
    if opt is None:
        return True
    return all(callable(getattr(opt, a, None)) for a in ("_on_before_step", "_on_after_step"))


def _single_step_blocks(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether K = 1 may run through one-step blocks: exactly what Lightning's automatic
    optimization would do, without its per-step loop machinery (7-15 % of a small model's CPU
    step at batch 20): one device, no gradient clipping or accumulation, no loss scaler or
    profiler, and no callback or module hook that only automatic optimization calls or that the
    block would skip."""
    t = trainer
    if t.gradient_clip_val or t.accumulate_grad_batches != 1 or t.world_size != 1:
        return False
    if any(overrides(cb, L.Callback, "on_before_zero_grad") for cb in t.callbacks):
        return False
    if any(overrides(module, L.LightningModule, h) for h in AUTOMATIC_ONLY_HOOKS):
        return False
    return step_hooks_are_no_ops(trainer, module, None)


def plan_fit(
    trainer: L.Trainer, module: L.LightningModule, base: type, dm: Any, requested: int | str
) -> StepPlan:
    """The plan of a fit, at ``setup``: ``requested`` is ``"auto"`` or K; ``base`` is the
    module class whose own per-batch hooks are known to take blocks. An explicit K > 1 that
    cannot be kept is refused with a ``ValueError`` naming the option and the fix."""
    reason = None
    if requested == "auto":
        reason = _auto_obstacle(trainer, module, base, dm)
        k = 1
        if reason is None:
            k, reason = _auto_k(trainer, dm)
        if reason:
            _say_auto_keeps_k1(reason)
    else:
        k = int(requested)
        found = k > 1 and (_blocks_obstacle(trainer, dm, k) or _checkpoint_obstacle(trainer, dm, k))
        if found:
            why, fix = found
            raise ValueError(
                f"module.steps_per_batch={k} cannot train this run in blocks: {why}. {fix}, or "
                "set module.steps_per_batch=1 (or auto, which picks K = 1 for such a run)."
            )
    blocks = k > 1 or _single_step_blocks(trainer, module)
    return StepPlan(k=k, blocks=blocks, reason=reason)


def plan_optimizers(plan: StepPlan, trainer: L.Trainer, auto: bool) -> StepPlan:
    """The plan once the optimizers exist (``on_fit_start``; the training loader does not yet):
    a ``ReduceLROnPlateau`` waits for a metric Lightning reports per batch, so ``auto`` goes back
    to K = 1 and blocks to automatic optimization; an explicit K > 1 is refused."""
    if not plan.blocks:
        return plan
    plateau = any(
        isinstance(c.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        for c in trainer.lr_scheduler_configs
    )
    if not plateau:
        return plan
    if auto and plan.k > 1:
        reason = "a ReduceLROnPlateau scheduler waits for a metric Lightning reports per batch"
        _say_auto_keeps_k1(reason)
        return StepPlan(k=1, blocks=False, reason=reason)
    if plan.k == 1:
        return StepPlan(k=1, blocks=False, reason=plan.reason)
    raise ValueError(
        f"module.steps_per_batch={plan.k} cannot drive ReduceLROnPlateau (it waits for a metric "
        "Lightning reports per batch); use another scheduler or module.steps_per_batch=1"
    )


__all__ = [
    "AUTO_STEPS_PER_BATCH",
    "StepPlan",
    "check_steps_per_batch",
    "plan_fit",
    "plan_optimizers",
    "step_hooks_are_no_ops",
    "takes_step_blocks",
]
