"""K optimizer steps per Lightning batch, exactly as K batches of automatic optimization.

``StepBlocks.run`` takes one Lightning batch, a block of minibatches ``(K, B, ...)`` (or one
minibatch ``(B, ...)`` when K = 1), and runs a complete optimizer step on each: zero_grad,
backward, the module's ``on_before_optimizer_step``, the optimizer step, the per-step schedulers;
the per-epoch schedulers after the epoch's last block. The minibatches, the noise, the parameters
after every step, the ``train/*`` rows, the NaN stop and ``trainer.max_steps`` (at the exact
step) are those of K = 1, bit for bit (``tests/integration/test_steps_per_batch.py``).

It knows the module only through callables: ``loss_fn(x) -> loss`` (the module's training step
on one minibatch at the current global step: it writes that step's row and stops on a non-finite
loss), ``before_optimizer_step(optimizer)`` and ``backward(loss)``. Every write into Lightning's
private state is here, each next to the public API it stands in for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor


class StepBlocks:
    """Runs the optimizer steps of one Lightning batch (see the module docstring).

    Args:
        trainer: the fitting Trainer.
        optimizer: the module's ``LightningOptimizer`` (``module.optimizers()``).
        k: the plan's K (minibatches per batch); with K = 1 a batch is one minibatch.
        loss_fn: the loss of one minibatch at the current global step.
        before_optimizer_step: called with the torch optimizer before each step.
        backward: the module's ``manual_backward`` (Lightning's hook-dispatching path).
        direct: call ``loss.backward()`` and the optimizer's ``step`` directly, without
            Lightning's per-step hook dispatch (``policy.step_hooks_are_no_ops``).
    """

    def __init__(
        self,
        trainer: L.Trainer,
        optimizer: Any,
        k: int,
        loss_fn: Callable[[Tensor], Tensor],
        before_optimizer_step: Callable[[torch.optim.Optimizer], None],
        backward: Callable[[Tensor], None],
        direct: bool,
    ) -> None:
        self.trainer = trainer
        self.opt = optimizer
        self.raw = optimizer.optimizer
        self.k = int(k)
        self.loss_fn = loss_fn
        self.before_optimizer_step = before_optimizer_step
        self.backward = backward
        self.direct = bool(direct)

    def run(self, xs: Tensor, batch_idx: int) -> Tensor | None:
        """The block's steps; returns the last step's loss (detached), as automatic
        optimization hands callbacks (``on_train_batch_end``'s ``outputs["loss"]``)."""
        t = self.trainer
        if self.k == 1:
            xs = xs[None]
        first = t.global_step
        try:
            completed, loss = self._take_steps(xs)
        finally:
            # Lightning labels epoch-level rows (val/*, test/*, LearningRateMonitor's) with its
            # count of batches that stepped, +1 after each batch; a block of K steps is one batch,
            # so that count would lag the optimizer step K-fold. Adding the block's other steps
            # keeps it equal to what K = 1 has at the same point. Private to Lightning (it has no
            # public setter: the public reading is trainer.global_step's rows); tested against
            # K = 1's rows.
            taken = t.global_step - first
            if taken > 1:
                t.fit_loop.epoch_loop._batches_that_stepped += taken - 1
        if not completed:
            return loss  # stopped by trainer.max_steps inside the block
        # Lightning steps per-epoch schedulers only under automatic optimization, after the
        # epoch's last batch and before its on_train_batch_end; so here, not at the epoch end: a
        # checkpoint written at the epoch's last step then holds the stepped scheduler as with
        # K = 1, and a resume from it, which does not run that epoch's end again, keeps the
        # schedule. (batch_progress: the fit loop's public progress tracker.)
        if (
            batch_idx + 1 >= t.num_training_batches
            or t.fit_loop.epoch_loop.batch_progress.is_last_batch
        ):
            for c in t.lr_scheduler_configs:
                if c.interval == "epoch":
                    c.scheduler.step()
        return loss

    def _take_steps(self, xs: Tensor) -> tuple[bool, Tensor | None]:
        """False if ``trainer.max_steps`` cut the block short, and the last step's loss."""
        t = self.trainer
        step_scheds = [c.scheduler for c in t.lr_scheduler_configs if c.interval == "step"]
        max_steps = t.max_steps
        opt = self.opt
        last = None
        for x in xs:
            if 0 <= max_steps <= t.global_step:
                return False, last  # trainer.max_steps: stop at the exact step, not at the end
            loss = self.loss_fn(x)
            if self.direct:
                self._direct_step(loss)
            else:
                opt.zero_grad(set_to_none=True)
                self.backward(loss)
                opt.step()
            for sched in step_scheds:
                sched.step()
            last = loss.detach()
        return True, last

    def _direct_step(self, loss: Tensor) -> None:
        """What ``manual_backward(loss)`` + ``opt.step()`` do when no hook can act: the same
        arithmetic in the same order. Lightning's step counter (``global_step``) still advances,
        through the ``LightningOptimizer``'s own before/after-step callables: private, standing
        in for ``LightningOptimizer.step``, Lightning's only public way to count a step."""
        raw = self.raw
        raw.zero_grad(set_to_none=True)
        loss.backward()
        self.opt._on_before_step()
        self.before_optimizer_step(raw)
        raw.step()
        self.opt._on_after_step()


def carry_step_count(trainer: L.Trainer, automatic: bool) -> None:
    """Carry the optimizer-step count over between automatic and manual optimization.

    Lightning counts optimizer steps separately under each (``global_step`` reads the active
    mode's counter), so a checkpoint written under one mode and resumed under the other would
    restart ``global_step`` at 0 (a K = 1 run resumed with gradient clipping added, or a
    checkpoint of a vaelab version that trained K = 1 automatically). Called at
    ``on_train_start``, when the loops are restored; keeps the larger count. Private to
    Lightning (``trainer.global_step`` has no public setter); tested across both directions.
    """
    loop = trainer.fit_loop.epoch_loop
    auto = loop.automatic_optimization.optim_progress.optimizer.step
    manual = loop.manual_optimization.optim_step_progress
    active, other = (auto, manual) if automatic else (manual, auto)
    if other.total.completed > active.total.completed:
        active.total.ready = other.total.ready
        active.total.completed = other.total.completed


class FastHookNames:
    """Mixin for a LightningModule: sets Lightning's ``_current_fx_name`` as a plain attribute.

    Lightning sets it (a string or None) around every hook call, some 45 times a training step;
    ``nn.Module.__setattr__`` checks each value against parameters, modules and buffers first. A
    plain attribute set is exact here and saves ~0.1 ms a step on a small CPU model.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


__all__ = ["FastHookNames", "StepBlocks", "carry_step_count"]
