"""The one LightningModule: what a training or evaluation step computes, for any ``GenerativeModel``.

Nothing here is model-specific. The model returns ``Terms``; ``vaelab.evaluation.term_figures``
turns them into named figures for training rows (batch means) and evaluation alike: every term as
``{stage}/{name}``, ``{stage}/nll`` (``-L_k`` with ``k = val_num_samples`` or ``test_num_samples``
at validation and test) and ``{stage}/bpd`` (bits per dimension in pixel space, from ``-ELBO`` in
training). Every validation and test figure that is a mean over images also gets its standard
error over the images, ``{stage}/{name}_se`` (``vaelab.evaluation.stats``), exact under DDP.
Training stops on a non-finite loss or gradient, and no checkpoint holds non-finite weights.

How the steps run (K optimizer steps per Lightning batch, ``auto``, ``torch.compile``) is
``vaelab.training``'s business; this module hands it ``training_loss``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vaelab.checkpoints import finite_checkpoint_note, non_finite_weights
from vaelab.data.base import TensorImageDataModule
from vaelab.data.loader import global_batch_index
from vaelab.evaluation import ActiveUnitStatistic, MeanWithError, batch_figures, term_figures
from vaelab.models.base import GenerativeModel, LatentVariableModel, Terms
from vaelab.objectives import full_precision
from vaelab.stop import check_num_samples
from vaelab.training import (
    FastHookNames,
    StepBlocks,
    StepPlan,
    carry_step_count,
    check_compile,
    check_steps_per_batch,
    pause_nvml_check,
    plan_fit,
    plan_optimizers,
    step_hooks_are_no_ops,
    training_forward,
)
from vaelab.units import check_kind

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; training stops, checkpoints are kept."""


def _to_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """One device-to-host copy for all of them (a NaN stays a NaN: it is reported, not dropped)."""
    return dict(
        zip(values, torch.stack([v.float() for v in values.values()]).tolist(), strict=True)
    )


class GenerativeModule(FastHookNames, L.LightningModule):
    """Lightning wrapper around a ``GenerativeModel``.

    Args:
        model: the generative model.
        optimizer: a partial optimizer (``_partial_: true`` in config), called with the parameters.
        scheduler: optional partial LR scheduler, called with the optimizer.
        scheduler_interval: ``epoch`` or ``step``.
        val_num_samples: k for ``val/nll`` (``L_k``); 0 skips it.
        test_num_samples: k for ``test/nll`` (default 5000, the IWAE protocol).
        data_kind: ``binary``, ``dequantized`` or ``unit`` (``vaelab.units``); read
            from the DataModule's ``info`` when there is one, required otherwise (no default).
        eval_seed: seed of the evaluation noise (each batch seeded by its global index, so results
            do not depend on the number of processes).
        active_units: compute active units per latent layer at test time (latent models only).
        check_grads: also stop on a non-finite gradient before the optimizer step (off by default:
            it costs ~0.9 ms a step on a small CPU model, and the checks below already guarantee
            that no NaN reaches a checkpoint).
        init_from_data: before training from scratch, let the model initialise data-dependent
            parameters from the training set's mean image (``GenerativeModel.init_from_data``:
            the decoder's output bias, as in Burda et al. 2015). A resumed run's checkpoint
            overwrites it.
        steps_per_batch: K, the optimizer steps per Lightning batch, or ``"auto"``
            (``vaelab-train``'s default). With ``K > 1`` the DataModule hands out K minibatches at
            once and ``vaelab.training.StepBlocks`` runs K complete optimizer steps on them in one
            ``training_step``, so Lightning's per-batch loop is paid once per K steps: the
            minibatches, the noise, the parameters after every step, the rows, the schedulers,
            the NaN stop, ``max_steps`` and resuming are those of ``K = 1``, bit for bit.
            ``limit_train_batches`` and ``val_check_interval`` (as counts) then count blocks.
            What blocks cannot keep is refused (gradient clipping or accumulation, DDP,
            ``ReduceLROnPlateau``, a step checkpoint interval that is not a multiple of K).
            ``"auto"`` picks K at each fit (``vaelab.training.policy``): 20 when nothing in the
            run can tell blocks from K = 1, a smaller K that keeps every step checkpoint on a
            block end, or K = 1 saying why. The resolved K is ``steps_per_batch`` after
            ``setup`` (``auto_steps_reason``: why ``auto`` trains K = 1).
        compile: compile the model's training forward with ``torch.compile`` (inductor);
            evaluation stays eager. ``True``, ``False``, or ``"cpu"``: compile when training on a
            CPU, where it was measured faster (the IWAE experiments' default), eager on other
            devices. The first step pays the compilation (10-60 s on a CPU).
        cuda_graph: removed (CUDA-graph training never ran on a GPU); ``False`` is accepted so
            that checkpoints of earlier versions rebuild. Its code is at commit f8bd73e.

    Non-finite values: a NaN or infinite loss stops training before its backward pass, and a
    checkpoint whose weights are not all finite is never written (``on_save_checkpoint`` raises),
    so the last good checkpoint always survives.
    """

    def __init__(
        self,
        model: GenerativeModel,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        val_num_samples: int = 100,
        test_num_samples: int = 5000,
        data_kind: str | None = None,
        eval_seed: int = 1234,
        active_units: bool = True,
        check_grads: bool = False,
        init_from_data: bool = True,
        steps_per_batch: int | str = 1,
        compile: bool | str = False,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        if cuda_graph:
            raise ValueError(
                "module.cuda_graph was removed: it never ran on a GPU. Set module.cuda_graph=false "
                "(or drop the key); the code is at vaelab commit f8bd73e"
            )
        self.requested_steps = check_steps_per_batch(steps_per_batch)
        self.auto_steps = self.requested_steps == "auto"
        # The resolved K (``auto``: decided in ``setup`` at each fit; 1 until then).
        self.steps_per_batch = 1 if self.auto_steps else int(self.requested_steps)
        self.auto_steps_reason: str | None = None  # auto only: why this fit trains K = 1
        self.compile = check_compile(compile)
        self._train_forward: Callable[[Tensor], Terms] | None = None
        self._plan = StepPlan(k=self.steps_per_batch)
        self._blocks: StepBlocks | None = None  # built at the first training batch of a fit
        self.model = model
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        self.scheduler_interval = scheduler_interval
        # Refused naming the keys (-1 ended ok with no test/nll); 0 is allowed: no L_k.
        self.val_num_samples = check_num_samples(val_num_samples, "eval.val_num_samples", 0)
        self.test_num_samples = check_num_samples(test_num_samples, "eval.num_samples", 0)
        self.data_kind = data_kind
        self.eval_seed = int(eval_seed)
        self.active_units = bool(active_units)
        self.check_grads = bool(check_grads)
        self.init_from_data = bool(init_from_data)
        self.run_config: dict[str, Any] | None = None  # set by vaelab.train; saved in checkpoints
        self._metrics: dict[str, MeanWithError] = {}
        self._au_stats = ActiveUnitStatistic()
        self.last_train_metrics: dict[str, float] = {}  # the last train/* values written
        self._last_logged_step = -1
        self._last_step: tuple[int, Tensor, Terms] | None = None  # final_train_metrics

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule  # Lightning calls setup with the trainer attached
        if isinstance(dm, TensorImageDataModule):
            self.data_kind = dm.info.kind
        if self.data_kind is None:
            raise ValueError(
                "GenerativeModule does not know what kind of data it evaluates: without a vaelab "
                "DataModule pass data_kind='binary', 'dequantized' or 'unit' (it decides bits/dim "
                "and which models are allowed)"
            )
        self.model.check_data(check_kind(self.data_kind))
        if stage != "fit":
            return
        # Lightning restores a checkpoint after setup, so a resumed run keeps its trained weights.
        if self.init_from_data and isinstance(dm, TensorImageDataModule):
            self.model.init_from_data(dm.train_mean())
        self._use_plan(plan_fit(self.trainer, self, GenerativeModule, dm, self.requested_steps))

    def _use_plan(self, plan: StepPlan) -> None:
        """Run this fit's steps as ``plan`` says, and tell the DataModule its K."""
        self._plan, self._blocks = plan, None
        self.steps_per_batch, self.auto_steps_reason = plan.k, plan.reason
        self.automatic_optimization = not plan.blocks
        dm = self.trainer.datamodule
        if hasattr(dm, "use_step_blocks"):
            dm.use_step_blocks(plan.k)

    def on_fit_start(self) -> None:
        self._restore_nvml = pause_nvml_check(self.device)
        plan = plan_optimizers(self._plan, self.trainer, self.auto_steps)
        if plan != self._plan:
            self._use_plan(plan)

    def on_train_start(self) -> None:
        carry_step_count(self.trainer, self.automatic_optimization)

    def teardown(self, stage: str) -> None:
        self.__dict__.pop("_restore_nvml", lambda: None)()

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval},
        }

    # -- training ------------------------------------------------------------------------------
    def training_step(self, x: Tensor, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self.training_loss(x)
        if self._blocks is None:
            opt = self.optimizers()
            direct = step_hooks_are_no_ops(self.trainer, self, opt)
            self._blocks = StepBlocks(
                self.trainer,
                opt,
                self.steps_per_batch,
                self.training_loss,
                self.on_before_optimizer_step,
                self.manual_backward,
                direct,
            )
        return self._blocks.run(x, batch_idx)

    def training_loss(self, x: Tensor) -> Tensor:
        """The training step on one minibatch at the current global step: its loss, stopped if
        not finite, and its ``train/*`` row written on logging steps."""
        step = self.global_step
        self.model.set_training_step(step)
        terms = self.train_forward(x)
        loss = terms.loss
        value = loss.item()  # one read (bool(torch.isfinite(loss)) is an op more: 6.7 vs 0.3 us)
        self._last_step = (step, loss, terms)  # references only: read by final_train_metrics
        if not math.isfinite(value):
            self._stop(f"training loss is {value}")
        # Once per logging step (with gradient accumulation several batches share a global step).
        if step % max(1, self.trainer.log_every_n_steps) == 0 and step != self._last_logged_step:
            self._last_logged_step = step
            self._log_training_terms(step, loss, terms)
        return loss

    @property
    def train_forward(self) -> Callable[[Tensor], Terms]:
        """The model's forward for training: compiled once when ``compile`` asks for it on
        this module's device (decided at the first call; ``vaelab.training.compile``)."""
        if self._train_forward is None:
            # Kept out of nn.Module's registry: not a second copy of the model in state_dict.
            self.__dict__["_train_forward"] = training_forward(
                self.model, self.compile, self.device
            )
        return self._train_forward

    def _log_training_terms(self, step: int, loss: Tensor, terms: Terms) -> None:
        """Write this step's training figures to every logger, labelled with this step.

        They go to the loggers directly rather than through ``self.log``: Lightning writes step
        metrics when ``(step + 1) % log_every_n_steps == 0``, so values computed at step ``s``
        would be labelled ``s + log_every_n_steps - 1``, and it re-reads every key ever logged
        after each batch (~5 us a key a step). ``train/loss`` still goes through ``self.log``
        (``logger=False``) for ``callback_metrics`` (e.g. ``ModelCheckpoint(monitor=
        "train/loss")``), without ``prog_bar=True`` (a ``.item()`` after every batch: a
        host-device sync each step on a GPU). The last values written are kept as floats in
        ``last_train_metrics`` (the progress bar and ``metrics.json`` read them).
        """
        values = self._training_values(loss, terms)
        self.log("train/loss", values["train/loss"], logger=False)
        self.last_train_metrics = _to_floats(values)
        if self.trainer.is_global_zero:  # train/* are rank 0's batch means
            row = {**self.last_train_metrics, "epoch": self.current_epoch}
            for logger in self.loggers:
                logger.log_metrics(row, step=step)

    def _training_values(self, loss: Tensor, terms: Terms) -> dict[str, Tensor]:
        """The ``train/*`` values of one step, 0-d tensors (the loss first): batch means of
        :func:`~vaelab.evaluation.term_figures`, the figures evaluation reports per image."""
        values = {"train/loss": loss.detach()}
        figures = term_figures(
            terms, -terms.elbo.detach().float(), self.model.num_dims, self.data_kind
        )
        del figures["nll"]  # -ELBO: train/elbo already says it
        values.update({f"train/{name}": v.mean() for name, v in figures.items()})
        return values

    def final_train_metrics(self) -> dict[str, float]:
        """The ``train/*`` values of the last training step taken (what ``metrics.json`` reports):
        ``last_train_metrics`` are those of the last *logging* step, which in a run shorter
        than ``trainer.log_every_n_steps`` is step 0."""
        if self._last_step is None or self._last_step[0] == self._last_logged_step:
            return dict(self.last_train_metrics)
        _, loss, terms = self._last_step
        return _to_floats(self._training_values(loss, terms))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.check_grads:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)  # one foreach kernel
        if not torch.isfinite(norm):
            self._stop(f"gradient norm is {norm.item()}")

    def _stop(
        self, what: str, when: str = "before the optimizer step, so no weights changed"
    ) -> None:
        last = f" {finite_checkpoint_note(self.trainer)}"
        raise NonFiniteError(
            f"{what} at global step {self.global_step} (epoch {self.current_epoch}); training "
            f"stopped {when}.{last} Lower the learning rate, enable gradient clipping "
            "(trainer.gradient_clip_val=...), or check the data."
        )

    # -- evaluation ----------------------------------------------------------------------------
    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._eval_step(x, batch_idx, "val", self.val_num_samples)

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._eval_step(x, batch_idx, "test", self.test_num_samples)

    def _eval_step(self, x: Tensor, batch_idx: int, stage: str, num_samples: int) -> None:
        # Seed each batch by its global index: same noise whatever the number of processes,
        # without disturbing the training RNG stream.
        b = global_batch_index(batch_idx, self.global_rank, self.trainer.world_size)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.eval_seed + 1_000_003 * b)
            # Every figure in float32 whatever the trainer's precision (vaelab.evaluation).
            figures = batch_figures(self.model, x, num_samples, self.data_kind)
            for name, value in figures.items():
                self._update(f"{stage}/{name}", value)
            if (
                stage == "test"
                and self.active_units
                and isinstance(self.model, LatentVariableModel)
            ):
                with full_precision(x.device):
                    self._au_stats.update(self.model.posterior_means(x))

    def _update(self, name: str, value: Tensor) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            # Sums in float64; a NaN is reported as NaN, never averaged away.
            metric = MeanWithError().to(self.device)
            self._metrics[name] = metric
        metric.update(value.detach())

    def _flush(self, stage: str) -> None:
        for name in sorted(k for k in self._metrics if k.startswith(f"{stage}/")):
            metric = self._metrics.pop(name)
            # Reduced over all processes: sums of values, of squares and of counts.
            mean, se = metric.compute()
            self.log(name, mean.float(), prog_bar=name == f"{stage}/nll", sync_dist=False)
            if name != f"{stage}/loss":  # the loss is a batch mean, not a per-image value
                self.log(f"{name}_se", se.float(), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._flush("val")

    def on_test_epoch_start(self) -> None:
        self._au_stats = ActiveUnitStatistic()

    def on_test_epoch_end(self) -> None:
        self._flush("test")
        if self._au_stats:
            gather = self.all_gather if self.trainer.world_size > 1 else None
            for layer, count in self._au_stats.counts(all_gather=gather).items():
                self.log(f"test/active_units/{layer}", float(count), sync_dist=False)

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the file is written: raising here keeps the previous checkpoint intact.
        bad = non_finite_weights(checkpoint["state_dict"])
        if bad:
            self._stop(
                f"weights {', '.join(bad[:3])} are not finite",
                "before writing the checkpoint, so no checkpoint holds them",
            )
        # The current run's config (vaelab.train checks on resume that it matches the stored one).
        if self.run_config is not None:
            checkpoint["vaelab_config"] = self.run_config


__all__ = ["GenerativeModule", "NonFiniteError"]
