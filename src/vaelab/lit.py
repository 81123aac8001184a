"""The one LightningModule: trains and evaluates any ``GenerativeModel``.

Nothing here is model-specific. The model returns ``Terms``; this module logs every term as
``{stage}/{name}`` (batch means in training, exact dataset means at validation and test),
adds ``{stage}/nll`` (``-L_k`` with ``k = val_num_samples`` or ``test_num_samples``) and
``{stage}/bpd`` (bits per dimension in pixel space), and stops on a non-finite loss or gradient.
Every validation and test figure that is a mean over images also gets its standard error over the
images, ``{stage}/{name}_se`` (``vaelab.evaluation.stats``), exact under DDP.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, Timer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor

from vaelab.data.base import TensorImageDataModule
from vaelab.data.loader import global_batch_index
from vaelab.evaluation import (
    ActiveUnitStatistic,
    MeanWithError,
    batch_figures,
    bits_per_dim,
    check_kind,
    full_precision,
    has_bits_per_dim,
)
from vaelab.evaluation.stop import check_num_samples
from vaelab.graphs import CudaGraphBackend, EagerStand, GraphedStep
from vaelab.models.base import GenerativeModel, LatentVariableModel, Terms

# Validation and test figures are logged already reduced over processes (MeanWithError sums values,
# squares and counts), so Lightning's advice to add sync_dist=True does not apply to them.
warnings.filterwarnings(
    "ignore",
    message=r".*when logging on epoch level in distributed setting.*",
    category=PossibleUserWarning,
)

# This module writes the train/* rows itself, at every log_every_n_steps-th optimizer step
# (_loss_and_log), so Lightning's warning that an epoch has fewer *batches* than that interval is
# wrong with K-step blocks (module.steps_per_batch): the default run's 550 steps an epoch are 28
# Lightning batches, and its rows at steps 0, 50, 100, ... are all written.
warnings.filterwarnings(
    "ignore",
    message=r"The number of training batches \(\d+\) is smaller than the logging interval",
    category=PossibleUserWarning,
)

# Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, so that asking whether CUDA is
# available does not initialise CUDA before a fork. Until CUDA is initialised torch then answers
# torch.cuda.is_available() by loading NVML afresh (dlopen + nvmlInit) on every call, and every
# Adam/AdamW step asks (Optimizer._accelerator_graph_capture_health_check): on a CPU run with a
# CUDA build of torch that is paid once per optimizer step, by vaelab and by anything else that
# imports Lightning; a plain PyTorch script does not pay it. A CPU run never initialises CUDA, so
# for the duration of ``fit`` the CUDA runtime's own cached device count answers instead (the
# variable is put back at teardown).
_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

# The hooks Lightning's manual_backward and LightningOptimizer.step dispatch at every optimizer step.
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
# LightningModule hooks that only automatic optimization calls.
_AUTOMATIC_ONLY_HOOKS = (
    "optimizer_step",
    "optimizer_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
    "on_before_zero_grad",
)

# Callback hooks Lightning calls once per Lightning batch (or only under automatic optimization):
# under ``steps_per_batch: auto`` a callback with one of them keeps K = 1 unless it is known to
# take K-step blocks (``_takes_step_blocks``).
_PER_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_zero_grad")


def _overrides(obj: Any, base: type, hook: str) -> bool:
    return getattr(type(obj), hook, None) is not getattr(base, hook, None)


def _takes_step_blocks(callback: L.Callback) -> bool:
    """Whether a callback's per-batch hooks do the same with K-step blocks as with K = 1.

    Lightning's progress bars (they count blocks), checkpoints (their step interval is checked
    against K: ``_step_blocks_obstacle``) and ``Timer`` (it reads the clock); and any callback
    with ``takes_step_blocks = True`` (vaelab's ``ResumeState``; benchmarks' timers). Others, e.g.
    ``LearningRateMonitor(logging_interval="step")``, would run once per block, so ``auto`` keeps
    K = 1 for them.
    """
    if getattr(callback, "takes_step_blocks", False):
        return True
    return isinstance(callback, ProgressBar | ModelCheckpoint | Timer)


# ``steps_per_batch: auto`` (vaelab-train's default): K optimizer steps per Lightning batch when
# nothing in the run can tell K-step blocks from K = 1 (``GenerativeModule._auto_steps_obstacle``).
# 20 pays Lightning's per-batch loop once per 20 steps: on 2026-12-07 the default (auto, K = 20)
# ran at 1.04-1.19x the hand-written loop and K = 1 at 1.19-1.45x in the same runs (README
# "Speed", two threads, batch 100 and 20).
AUTO_STEPS_PER_BATCH = 20


def _say_auto_keeps_k1(reason: str) -> None:
    """The one line ``auto`` logs (rank 0) when a fit trains one step per Lightning batch."""
    rank_zero_info(
        f"module.steps_per_batch=auto: one optimizer step per Lightning batch, since {reason}; "
        f'blocks of {AUTO_STEPS_PER_BATCH} steps would not keep that (README "Speed": '
        "module.steps_per_batch)"
    )


OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; training stops, checkpoints are kept."""


def _cxx_names() -> tuple[str, ...]:
    """The C++ compilers inductor searches on a CPU (``config.cpp.cxx``: ``$CXX`` or ``g++``)."""
    import torch._inductor.config as inductor_config

    names = inductor_config.cpp.cxx
    return tuple(n for n in (names if isinstance(names, (list, tuple)) else (names,)) if n)


def _cpu_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU, or None if it finds none.

    Asks inductor itself (``cpp_builder.get_cpp_compiler``, private: it runs ``--version`` on
    each of ``_cxx_names``); if that function is gone, looks the names up on ``PATH``.
    """
    try:
        from torch._inductor import cpp_builder, exc

        search = cpp_builder.get_cpp_compiler
    except (ImportError, AttributeError):  # pragma: no cover - another inductor
        import shutil

        return next((n for n in _cxx_names() if shutil.which(n)), None)
    try:
        return search()
    except (exc.InvalidCxxCompiler, OSError):
        return None


class GenerativeModule(L.LightningModule):
    """Lightning wrapper around a ``GenerativeModel``.

    Args:
        model: the generative model.
        optimizer: a partial optimizer (``_partial_: true`` in config), called with the parameters.
        scheduler: optional partial LR scheduler, called with the optimizer.
        scheduler_interval: ``epoch`` or ``step``.
        val_num_samples: k for ``val/nll`` (``L_k``); 0 skips it.
        test_num_samples: k for ``test/nll`` (default 5000, the IWAE protocol).
        data_kind: ``binary``, ``dequantized`` or ``unit`` (``vaelab.evaluation.units``); read
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
        steps_per_batch: K, the optimizer steps per Lightning batch. With ``K > 1`` the
            DataModule hands out K minibatches at once (a ``(K, B, ...)`` tensor) and this module
            runs K complete optimizer steps on them in one ``training_step``, so Lightning's
            per-batch loop overhead is paid once per K steps; its per-step hook dispatch
            (``manual_backward``, ``LightningOptimizer.step``) is skipped too when no callback,
            module, profiler, strategy or loss scaler needs it (``_step_hooks_are_no_ops``). The
            minibatches, the noise, the parameters after every step, the ``train/*`` rows (each
            under the step that computed it; val/* and test/* rows under the same steps as with
            K = 1), the LR scheduler (per step or per epoch), mixed
            precision, ``check_grads`` and the NaN stop (at the exact step, before its backward
            pass) are the same as with ``K = 1``; ``trainer.max_steps`` stops at the exact step.
            A resume is exact as with ``K = 1``, from an epoch-end checkpoint and from one written
            inside an epoch (step-based checkpoints fall on block boundaries; the loader resumes
            at the next block, on the uninterrupted run's block boundaries), including one at an
            epoch's last step (tests/integration/test_resume_mid_epoch.py).
            ``limit_train_batches`` and ``val_check_interval`` (as a count) then count blocks of
            K steps. Refused with a message (they cannot be kept): gradient clipping and
            accumulation, more than one process (DDP), ``ReduceLROnPlateau``, and step-based
            checkpoints whose interval is not a multiple of K. With ``K = 1`` (the default) the
            same block runs with one minibatch, under manual optimization, where that is exactly
            what Lightning's automatic optimization does (``_setup_single_step_blocks``), and
            automatic optimization runs otherwise. ``"auto"`` (``vaelab-train``'s default) picks
            ``K = AUTO_STEPS_PER_BATCH`` (20) at the start of each fit when nothing in the run
            can tell the blocks from K = 1, and K = 1 otherwise, saying why
            (``_auto_steps_obstacle``: what K > 1 refuses, ``limit_train_batches`` or
            ``val_check_interval`` counted in batches, ``fast_dev_run``, a profiler, a loss
            scaler, ``ReduceLROnPlateau``, or a callback or module hook that runs once per
            Lightning batch and is not known to take blocks); the resolved K is
            ``steps_per_batch`` after ``setup``.
        compile: compile the model's training forward pass with ``torch.compile`` (inductor);
            evaluation stays eager. ``True``, ``False``, or ``"cpu"``: compile when training on a
            CPU, where it was measured faster (README "Speed"; the IWAE experiments' default),
            eager on other devices, where it has not been measured. The first step pays the
            compilation (10-60 s on a CPU).
        cuda_graph: on CUDA, capture one whole optimizer step (forward, backward, fused Adam) in a
            CUDA graph after 3 eager warm-up steps and replay it for every later step of the
            same input shape (``vaelab.graphs``): one launch a step instead of one per kernel,
            with ``steps_per_batch`` (K) and ``compile`` as they are. A non-finite loss or
            gradient norm makes the replayed fused Adam skip its update on the device, and
            training stops at the end of the block naming that step, with the weights of the
            step before it; ``train/*`` rows are read once a block and written under their
            steps. The learning rate becomes a float32 tensor on the device (rounded as such:
            equal to an eager run up to that rounding and the CUDA random stream); checkpoints
            store it as a number. Needs a CUDA device, fused Adam or AdamW
            (``optimizer.fused=true``) and the direct step path (one device, 32-bit or
            ``bf16-mixed``, no profiler, no callback or module hook around the backward pass
            and the optimizer step); refused otherwise, with the reason. Not yet run on a GPU
            (README "Speed"): on a CPU its bookkeeping is tested with a stand-in that runs the
            step eagerly (``tests/integration/test_cuda_graph.py``).

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
        self.auto_steps = steps_per_batch == "auto"
        if not self.auto_steps and (
            isinstance(steps_per_batch, bool)
            or not isinstance(steps_per_batch, int | str)
            or not str(steps_per_batch).isdigit()
            or int(steps_per_batch) < 1
        ):
            raise ValueError(
                f"steps_per_batch must be an integer >= 1 or 'auto', got {steps_per_batch!r}"
            )
        # The resolved K (``auto``: decided in ``setup`` at each fit; 1 until then).
        self.steps_per_batch = 1 if self.auto_steps else int(steps_per_batch)
        # ``auto`` only: why this fit trains one step per Lightning batch (None: it does not).
        self.auto_steps_reason: str | None = None
        if compile not in (True, False, "cpu"):
            raise ValueError(
                f"compile must be true, false or cpu (compile when training on a CPU), got "
                f"{compile!r}"
            )
        self.compile: bool | str = compile if compile == "cpu" else bool(compile)
        self._train_forward: Callable[[Tensor], Terms] | None = None
        self.cuda_graph = bool(cuda_graph)
        self._graph: GraphedStep | None = None  # built at the first block of a fit
        self.graph_summary: dict[str, Any] | None = None  # set at the end of a graphed fit
        self._direct_steps: bool | None = None  # decided at the first K-step block of a fit
        self._single_step_blocks = False  # K = 1 trained through one-step blocks (setup)
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

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` (a string or None) around every hook call, some
        # 45 times a training step; nn.Module.__setattr__ checks each value against parameters,
        # modules and buffers first. A plain attribute set is exact here and saves ~0.1 ms a step
        # on a small CPU model (benchmarks/epoch_speed.py).
        if name in ("_current_fx_name", "_last_step"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if isinstance(dm, TensorImageDataModule):
            self.data_kind = dm.info.kind
        if self.data_kind is None:
            raise ValueError(
                "GenerativeModule does not know what kind of data it evaluates: without a vaelab "
                "DataModule pass data_kind='binary', 'dequantized' or 'unit' (it decides bits/dim "
                "and which models are allowed)"
            )
        self.model.check_data(check_kind(self.data_kind))
        # Lightning restores a checkpoint after setup, so a resumed run keeps its trained weights.
        if stage == "fit" and self.init_from_data and isinstance(dm, TensorImageDataModule):
            self.model.init_from_data(dm.train_mean())
        if stage == "fit" and self.cuda_graph and self._graph_backend != "eager":
            device = self.trainer.strategy.root_device
            if device.type != "cuda":
                raise ValueError(
                    f"module.cuda_graph=true captures training steps in a CUDA graph, which needs "
                    f"a CUDA device; this run trains on {device.type}. Train on a GPU "
                    "(trainer=gpu), or set module.cuda_graph=false."
                )
        if stage == "fit" and self.auto_steps:
            self._resolve_auto_steps(dm)
        if stage == "fit" and self.steps_per_batch > 1:
            self._setup_step_blocks(dm)
        elif stage == "fit":
            self._setup_single_step_blocks()

    def _resolve_auto_steps(self, dm: Any) -> None:
        """``steps_per_batch: auto``: K = ``AUTO_STEPS_PER_BATCH`` if nothing in this fit can
        tell K-step blocks from K = 1, else K = 1 with the reason logged (rank 0, once a fit)."""
        self.automatic_optimization = True  # as a fresh module: a second fit decides anew
        self._single_step_blocks = False
        reason = self._auto_steps_obstacle(dm, AUTO_STEPS_PER_BATCH)
        self.auto_steps_reason = reason
        self.steps_per_batch = 1 if reason else AUTO_STEPS_PER_BATCH
        if hasattr(dm, "steps_per_batch"):
            dm.steps_per_batch = 1  # _setup_step_blocks sets K
        if reason:
            _say_auto_keeps_k1(reason)

    def _step_blocks_obstacle(self, dm: Any, k: int) -> tuple[str, str] | None:
        """What makes K-step blocks impossible in this fit, as ``(why, fix)``, or None: an
        explicit K > 1 refuses it (``_setup_step_blocks``), ``auto`` trains K = 1."""
        t = self.trainer
        if not hasattr(dm, "steps_per_batch"):
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
        for cb in t.checkpoint_callbacks:
            n = getattr(cb, "_every_n_train_steps", 0)
            if n and n % k:
                return (
                    f"a checkpoint every {n} optimizer steps would fall inside a block of {k} "
                    "steps",
                    f"Use an every_n_train_steps that is a multiple of {k}",
                )
        return None

    def _auto_steps_obstacle(self, dm: Any, k: int) -> str | None:
        """Why ``auto`` keeps K = 1 in this fit, or None: what K > 1 refuses, and what it would
        change rather than refuse (counts of Lightning batches, hooks called once per batch)."""
        found = self._step_blocks_obstacle(dm, k)
        if found:
            return found[0]
        t = self.trainer
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
            if _takes_step_blocks(cb):
                continue
            hooks = [h for h in _PER_BATCH_HOOKS if _overrides(cb, L.Callback, h)]
            if hooks:
                return (
                    f"the callback {type(cb).__name__} has {', '.join(hooks)}, which Lightning "
                    f"would call once per block of {k} steps"
                )
        own = ("on_train_batch_start", "on_train_batch_end", *_AUTOMATIC_ONLY_HOOKS)
        hooks = [h for h in own if _overrides(self, GenerativeModule, h)]
        if hooks:
            return f"{type(self).__name__} overrides {', '.join(hooks)}"
        return None

    def _setup_step_blocks(self, dm: Any) -> None:
        """Check what ``steps_per_batch > 1`` can keep, refuse the rest, switch to K-step blocks.

        Lightning's own checks of manual optimization run before ``setup`` and see automatic
        optimization still on; the refusals here name this option and the fix instead.
        """
        k = self.steps_per_batch
        found = self._step_blocks_obstacle(dm, k)
        if found:
            why, fix = found
            raise ValueError(
                f"module.steps_per_batch={k} cannot train this run in blocks: {why}. {fix}, or "
                "set module.steps_per_batch=1 (or auto, which picks K = 1 for such a run)."
            )
        dm.steps_per_batch = k
        self.automatic_optimization = False

    def _setup_single_step_blocks(self) -> None:
        """With K = 1, train through the same block of steps (one minibatch a block) when it is
        exactly what Lightning's automatic optimization would do, only without its per-step loop
        machinery (7-15 % of a small model's CPU step at batch 20, ``benchmarks/k1_manual_ab.py``):
        one device, no gradient clipping or accumulation, no loss scaler or profiler, and no
        callback or module hook that only automatic optimization calls (``on_before_zero_grad``,
        ``optimizer_step``, ...) or that the block would skip (``_step_hooks_are_no_ops``).
        Otherwise automatic optimization runs, as before. ``on_fit_start`` goes back to it for a
        ``ReduceLROnPlateau`` scheduler, and ``on_train_start`` carries the optimizer-step count
        over when a checkpoint of the other mode is resumed."""
        t = self.trainer
        if t.gradient_clip_val or t.accumulate_grad_batches != 1 or t.world_size != 1:
            return
        for cb in t.callbacks:
            if type(cb).on_before_zero_grad is not L.Callback.on_before_zero_grad:
                return
        for h in _AUTOMATIC_ONLY_HOOKS:
            if getattr(type(self), h) is not getattr(L.LightningModule, h):
                return
        if self._step_hooks_are_no_ops(None):
            self.automatic_optimization = False
            self._single_step_blocks = True

    def on_fit_start(self) -> None:
        self._direct_steps = None
        self._graph = None
        if self.device.type == "cpu" and os.environ.get(_NVML_CHECK) == "1":
            self._nvml_check = os.environ.pop(_NVML_CHECK)  # see _NVML_CHECK
        if not self.automatic_optimization:
            for config in self.trainer.lr_scheduler_configs:
                if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    if self.auto_steps and self.steps_per_batch > 1:
                        # The optimizers exist only now; the training loader does not yet, so
                        # auto can still go back to K = 1 (and from there to automatic
                        # optimization, below).
                        self._auto_falls_back(
                            "a ReduceLROnPlateau scheduler waits for a metric Lightning "
                            "reports per batch"
                        )
                    if self._single_step_blocks:
                        self.automatic_optimization = True  # Lightning steps it with the metric
                        self._single_step_blocks = False
                        break
                    raise ValueError(
                        f"module.steps_per_batch={self.steps_per_batch} cannot drive "
                        "ReduceLROnPlateau (it waits for a metric Lightning reports per batch); "
                        "use another scheduler or module.steps_per_batch=1"
                    )
        if self.cuda_graph and self.automatic_optimization:
            raise ValueError(
                "module.cuda_graph=true replays vaelab's own optimizer steps, and this run keeps "
                "Lightning's automatic optimization (gradient clipping or accumulation, several "
                "processes, ReduceLROnPlateau, or a callback or module hook that only automatic "
                "optimization calls). Remove that, or set module.cuda_graph=false."
            )

    def _auto_falls_back(self, reason: str) -> None:
        """``auto`` chose K-step blocks in ``setup``; go back to K = 1 (one-step blocks)."""
        dm = self.trainer.datamodule
        self.steps_per_batch = 1
        self.auto_steps_reason = reason
        if dm is not None and hasattr(dm, "steps_per_batch"):
            dm.steps_per_batch = 1
        self._single_step_blocks = True
        _say_auto_keeps_k1(reason)

    def on_train_start(self) -> None:
        # Lightning counts optimizer steps separately under automatic and manual optimization
        # (global_step reads the active mode's counter), so a checkpoint written under one mode
        # and resumed under the other would restart global_step at 0 (e.g. a K = 1 run resumed
        # with gradient clipping added, or a checkpoint of a vaelab version that trained K = 1
        # automatically). The loops are restored by now; carry the larger count over. Private to
        # Lightning (no public setter); tested across both directions.
        loop = self.trainer.fit_loop.epoch_loop
        auto = loop.automatic_optimization.optim_progress.optimizer.step
        manual = loop.manual_optimization.optim_step_progress
        active, other = (auto, manual) if self.automatic_optimization else (manual, auto)
        if other.total.completed > active.total.completed:
            active.total.ready = other.total.ready
            active.total.completed = other.total.completed

    def teardown(self, stage: str) -> None:
        g, self._graph = self._graph, None
        if g is not None:  # what the fit's graph did (tests, and anyone asking after a fit)
            g.release()
            self.graph_summary = {
                "captured": g.captured,
                "eager_steps": g.eager_steps,
                "replays": g.replays,
            }
        value = self.__dict__.pop("_nvml_check", None)
        if value is not None:
            os.environ[_NVML_CHECK] = value

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
        if not self.automatic_optimization:
            # The last step's loss, as automatic optimization hands callbacks
            # (on_train_batch_end's outputs["loss"]).
            return self._training_block(x if self.steps_per_batch > 1 else x[None], batch_idx)
        return self._loss_and_log(x)

    def _loss_and_log(self, x: Tensor) -> Tensor:
        """The loss of one minibatch at the current global step; logs on logging steps."""
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

    def _training_block(self, xs: Tensor, batch_idx: int) -> Tensor | None:
        """K optimizer steps on the minibatches ``xs`` (K, B, ...), exactly as K batches of
        automatic optimization would take them (zero_grad, backward, hooks, step, scheduler)."""
        opt = self.optimizers()
        t = self.trainer
        step_scheds = [c.scheduler for c in t.lr_scheduler_configs if c.interval == "step"]
        max_steps = t.max_steps
        direct = self._direct_steps
        if direct is None:
            direct = self._direct_steps = self._step_hooks_are_no_ops(opt)
        raw = opt.optimizer
        first_step = self.global_step
        try:
            completed, loss = self._take_steps(xs, opt, raw, direct, step_scheds, max_steps)
        finally:
            # Lightning labels epoch-level rows (val/*, test/*, LearningRateMonitor's) with its
            # count of batches that stepped, ``+1`` after each batch; a block of K steps is one
            # batch, so that count would lag the optimizer step K-fold. Adding the block's other
            # steps keeps it equal to what K = 1 has at the same point (global_step after the
            # batch, global_step - 1 during its hooks and checkpoints, as Lightning saves it).
            # Private to Lightning (no public setter); tested against K = 1's rows.
            taken = self.global_step - first_step
            if taken > 1:
                t.fit_loop.epoch_loop._batches_that_stepped += taken - 1
        if not completed:
            return loss  # stopped by trainer.max_steps inside the block
        # Lightning steps per-epoch schedulers only under automatic optimization, after the
        # epoch's last batch and before its on_train_batch_end; so here, not at the epoch end: a
        # checkpoint written at the epoch's last step (a step-based ModelCheckpoint) then holds
        # the stepped scheduler with K > 1 as with K = 1, and a resume from it, which does not
        # run that epoch's end again, keeps the schedule.
        if (
            batch_idx + 1 >= t.num_training_batches
            or t.fit_loop.epoch_loop.batch_progress.is_last_batch
        ):
            for c in t.lr_scheduler_configs:
                if c.interval == "epoch":
                    c.scheduler.step()
        return loss

    def _take_steps(
        self,
        xs: Tensor,
        opt: Any,
        raw: torch.optim.Optimizer,
        direct: bool,
        step_scheds: list[Any],
        max_steps: int,
    ) -> tuple[bool, Tensor | None]:
        """The optimizer steps of one block (``_training_block``): False if ``max_steps`` cut
        the block short, and the last step's loss (detached)."""
        if self.cuda_graph:
            return self._take_graphed_steps(xs, opt, raw, direct, step_scheds, max_steps)
        last = None
        for x in xs:
            if 0 <= max_steps <= self.global_step:
                return False, last  # trainer.max_steps: stop at the exact step, not at the end
            loss = self._loss_and_log(x)
            if direct:
                self._direct_step(loss, opt, raw)
            else:
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt.step()
            for sched in step_scheds:
                sched.step()
            last = loss.detach()
        return True, last

    def _direct_step(self, loss: Tensor, opt: Any, raw: torch.optim.Optimizer) -> None:
        """What manual_backward + opt.step() do here, without dispatching hooks that no callback
        and no module overrides (see _step_hooks_are_no_ops)."""
        raw.zero_grad(set_to_none=True)
        loss.backward()
        opt._on_before_step()  # Lightning's step counter (global_step) and profiler
        self.on_before_optimizer_step(raw)
        raw.step()
        opt._on_after_step()

    # Which backend ``cuda_graph`` uses: None for torch.cuda.CUDAGraph; "eager" for the CPU
    # stand-in of the tests (vaelab.graphs.EagerStand), which runs the step instead of replaying.
    _graph_backend: str | None = None

    def _take_graphed_steps(
        self,
        xs: Tensor,
        opt: Any,
        raw: torch.optim.Optimizer,
        direct: bool,
        step_scheds: list[Any],
        max_steps: int,
    ) -> tuple[bool, Tensor | None]:
        """``_take_steps`` with ``cuda_graph``: eager warm-up steps, then the captured step
        replayed for every minibatch of the captured shape (others run eagerly). The replayed
        steps' rows are read back once, at the end of the block (or before an eager step)."""
        g = self._graph
        if g is None:
            g = self._build_graphed_step(raw, direct)
        g.found.zero_()
        pending: list[tuple[int, Tensor]] = []  # (step, output row) of replayed steps
        last = None
        for x in xs:
            if 0 <= max_steps <= self.global_step:
                self._flush_graphed(pending)
                return False, last  # trainer.max_steps: stop at the exact step
            if not g.ready_for(x):
                self._flush_graphed(pending)  # rows stay in step order
                with g.backend.warmup():
                    loss = self._loss_and_log(x)
                    self._direct_step(loss, opt, raw)
                g.eager_steps += 1
                if g.first_shape is None:
                    g.first_shape = x.shape
                if not g.captured and g.eager_steps >= g.WARMUP_STEPS and x.shape == g.first_shape:
                    g.capture(x)  # records the step; runs nothing
                last = loss.detach()
            else:
                step = self.global_step
                self.model.set_training_step(step)
                opt._on_before_step()
                row = g.step(x)
                opt._on_after_step()
                pending.append((step, row))
                last = row[0]
            for sched in step_scheds:
                sched.step()
        self._flush_graphed(pending)
        return True, last

    def _build_graphed_step(self, raw: torch.optim.Optimizer, direct: bool) -> GraphedStep:
        fix = "or set module.cuda_graph=false"
        overrides = (
            type(self).on_before_optimizer_step is not GenerativeModule.on_before_optimizer_step
        )
        if not direct or overrides:
            raise ValueError(
                "module.cuda_graph=true replays whole optimizer steps, so nothing may run between "
                "the backward pass and the optimizer step: it needs one device, 32-bit or "
                "bf16-mixed precision (no loss scaler), no profiler, and no callback or module "
                "overriding on_before_backward, on_after_backward or on_before_optimizer_step. "
                f"This run has one of these; remove it, {fix}."
            )
        if not isinstance(raw, torch.optim.Adam | torch.optim.AdamW) or not all(
            group.get("fused") for group in raw.param_groups
        ):
            raise ValueError(
                "module.cuda_graph=true needs fused Adam or AdamW (optimizer.fused=true): the "
                "fused kernel is what skips a non-finite step on the device; got "
                f"{type(raw).__name__} with fused={[g.get('fused') for g in raw.param_groups]}. "
                f"Set optimizer.fused=true, {fix}."
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self._graph_backend == "eager":
            backend: CudaGraphBackend | EagerStand = EagerStand(params)
        else:
            backend = CudaGraphBackend(params[0].device)
        g = GraphedStep(
            self.train_forward, self._training_values, params, raw, backend, self.check_grads
        )
        self._graph = g
        return g

    def _flush_graphed(self, pending: list[tuple[int, Tensor]]) -> None:
        """Read the replayed steps' rows (one device-to-host copy), write the logging steps' rows
        under their steps, and stop at the first non-finite step."""
        if not pending:
            return
        g = self._graph
        assert g is not None and g.names is not None
        rows = torch.stack([r for _, r in pending]).tolist()
        steps = [s for s, _ in pending]
        pending.clear()
        every = max(1, self.trainer.log_every_n_steps)
        skipped = "its optimizer step and the block's later ones were skipped on the device"
        for step, row in zip(steps, rows, strict=True):
            loss, norm = row[0], row[-1]
            if not math.isfinite(loss):
                self._stop(f"training loss is {loss}", f"{skipped}, so no weights changed", step)
            if not math.isfinite(norm):
                self._stop(f"gradient norm is {norm}", f"{skipped}, so no weights changed", step)
            if step % every == 0 and step != self._last_logged_step:
                self._last_logged_step = step
                self.log("train/loss", loss, logger=False)
                self._write_training_row(step, dict(zip(g.names, row[:-1], strict=True)))

    def _step_hooks_are_no_ops(self, opt: Any) -> bool:
        """Whether the K-step block may run backward and the optimizer step directly.

        Per optimizer step, Lightning's ``manual_backward`` and ``LightningOptimizer.step`` pass
        through the strategy and the precision plugin and dispatch ``on_before_backward``,
        ``on_after_backward`` and ``on_before_optimizer_step`` to every callback and to this
        module: about 0.2 ms a step on a small CPU model, where the whole step is 2.5 ms. When
        none of that can do anything (one device, no loss scaling, no profiler, and no callback
        or module overriding those hooks), the block calls ``loss.backward()`` and the
        optimizer's ``step`` itself, and still advances Lightning's step counter through the
        ``LightningOptimizer``'s own before/after-step callables (private to Lightning, which has
        no public way to count a step taken outside ``LightningOptimizer.step``; if they are
        gone, the full path runs). Same arithmetic in the same order: the bitwise K = 1 vs K > 1
        tests run through here (``tests/integration/test_steps_per_batch.py``).
        """
        t = self.trainer
        pp = t.precision_plugin
        if not (type(pp) is Precision or (type(pp) is MixedPrecision and pp.scaler is None)):
            return False
        if (
            type(t.strategy) is not SingleDeviceStrategy
            or type(t.profiler) is not PassThroughProfiler
        ):
            return False
        for cb in t.callbacks:
            if any(getattr(type(cb), h) is not getattr(L.Callback, h) for h in _STEP_HOOKS):
                return False
        for h in ("backward", "on_before_backward", "on_after_backward"):
            if getattr(type(self), h) is not getattr(L.LightningModule, h):
                return False
        if opt is None:  # asked before the optimizers exist (K = 1 blocks, setup)
            return True
        return all(callable(getattr(opt, a, None)) for a in ("_on_before_step", "_on_after_step"))

    @property
    def train_forward(self) -> Callable[[Tensor], Terms]:
        """The model's forward for training: compiled once when ``compile`` asks for it on
        this module's device (decided at the first call)."""
        if self._train_forward is None:
            on = self.compile is True or (self.compile == "cpu" and self.device.type == "cpu")
            if on and self.device.type == "cpu":
                on = self._cpu_compiler_or_eager()
            # Kept out of nn.Module's registry: not a second copy of the model in state_dict.
            self.__dict__["_train_forward"] = self._compiled_forward() if on else self.model
        return self._train_forward

    def _cpu_compiler_or_eager(self) -> bool:
        """Whether inductor has a C++ compiler for the CPU; without one, ``compile: cpu`` (the
        IWAE experiments' default) trains eager with a warning and ``compile: true`` is refused,
        both at the first training batch, before any step, not with inductor's error inside it."""
        if _cpu_compiler() is not None:
            return True
        fix = "install one (e.g. `apt install g++`) or point CXX at it, or set module.compile=false"
        looked = ", ".join(_cxx_names()) or "none"
        if self.compile is True:
            raise RuntimeError(
                f"module.compile=true on a CPU needs a C++ compiler for torch.compile (inductor) "
                f"and none was found (looked for {looked}): {fix}"
            )
        warnings.warn(
            f"module.compile=cpu: no C++ compiler for torch.compile on this machine (looked for "
            f"{looked}), so it trains eager (slower; equal up to float rounding). To compile, "
            f"{fix.split(', or ')[0]}; module.compile=false silences this",
            stacklevel=2,
        )
        return False

    def _compiled_forward(self) -> Callable[[Tensor], Terms]:
        """``torch.compile(model)``, primed by one eager forward of the first batch.

        Traced on the first call, two things break the graph and then fail its guards, so the
        whole forward was compiled twice: the model's once-only check of the data values (a
        data-dependent ``bool(bad.any())``, then the flag it sets) and torch's first
        ``kl_divergence`` for a pair of types (``_dispatch_kl`` searches the registry with
        ``min`` over a generator, then memoises). The priming forward runs both eagerly, without
        autograd and with the random state put back (``torch.random.fork_rng``), so the training
        steps draw exactly what they would have drawn without it.
        """
        compiled = torch.compile(self.model)
        primed = False

        def forward(x: Tensor) -> Terms:
            nonlocal primed
            if not primed:
                rank_zero_info(
                    f"module.compile={self.compile}: compiling the training forward with "
                    f"torch.compile on {x.device.type} (once per run: 10-60 s on 2 CPU cores, "
                    "less with inductor's cache warm)"
                )
                devices = [x.device] if x.device.type != "cpu" else []
                with torch.no_grad(), torch.random.fork_rng(devices=devices):
                    self.model(x)
                primed = True
            return compiled(x)

        return forward

    def _log_training_terms(self, step: int, loss: Tensor, terms: Terms) -> None:
        """Write this step's training terms to every logger, labelled with this step.

        They go to the loggers directly rather than through ``self.log``, for two reasons:
        Lightning writes step metrics when ``(step + 1) % log_every_n_steps == 0``, so values
        computed at step ``s`` would be labelled ``s + log_every_n_steps - 1``; and it keeps every
        key ever passed to ``self.log`` for the rest of the epoch, re-reading all of them after each
        batch (~5 us a key a step, a measurable share of a small model's step). ``train/loss`` still
        goes through ``self.log`` (``logger=False``) for ``callback_metrics`` (e.g.
        ``ModelCheckpoint(monitor="train/loss")``), but not with ``prog_bar=True``: Lightning would
        call ``.item()`` on it after every batch, a host-device sync each step on a GPU. The last
        values written are kept as floats in ``last_train_metrics``; the progress bar shows
        ``train/loss`` from there, and ``vaelab-train`` puts them in ``metrics.json``.
        """
        values = self._training_values(loss, terms)
        self.log("train/loss", values["train/loss"], logger=False)
        # One device-to-host copy for all of them (a NaN stays a NaN: it is reported, not dropped).
        scalars = torch.stack([v.float() for v in values.values()]).tolist()
        self._write_training_row(step, dict(zip(values, scalars, strict=True)))

    def _training_values(self, loss: Tensor, terms: Terms) -> dict[str, Tensor]:
        """The ``train/*`` values of one step, as 0-d tensors (the loss first)."""
        values = {"train/loss": loss.detach()}
        for name, value in terms.items().items():
            values[f"train/{name}"] = value.detach().float().mean()
        if has_bits_per_dim(self.data_kind):  # not defined for x / 255 ("unit") data
            values["train/bpd"] = self._bpd(-terms.elbo.detach().float()).mean()
        return values

    def final_train_metrics(self) -> dict[str, float]:
        """The ``train/*`` values of the last training step taken (what ``metrics.json`` reports):
        ``last_train_metrics`` are those of the last *logging* step, which in a run shorter
        than ``trainer.log_every_n_steps`` is step 0."""
        if self._last_step is None or self._last_step[0] == self._last_logged_step:
            return dict(self.last_train_metrics)
        _, loss, terms = self._last_step
        values = self._training_values(loss, terms)
        scalars = torch.stack([v.float() for v in values.values()]).tolist()
        return dict(zip(values, scalars, strict=True))

    def _write_training_row(self, step: int, scalars: dict[str, float]) -> None:
        self.last_train_metrics = scalars
        if self.trainer.is_global_zero:  # train/* are rank 0's batch means
            row = {**self.last_train_metrics, "epoch": self.current_epoch}
            for logger in self.loggers:
                logger.log_metrics(row, step=step)

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
        self,
        what: str,
        when: str = "before the optimizer step, so no weights changed",
        step: int | None = None,
    ) -> None:
        from vaelab.checkpoints import finite_checkpoint_note

        last = f" {finite_checkpoint_note(self.trainer)}"
        raise NonFiniteError(
            f"{what} at global step {self.global_step if step is None else step} (epoch "
            f"{self.current_epoch}); training "
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

    def _bpd(self, nll: Tensor) -> Tensor:
        return bits_per_dim(nll, self.model.num_dims, self.data_kind)

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the file is written: raising here keeps the previous checkpoint intact.
        bad = [
            k
            for k, v in checkpoint["state_dict"].items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            self._stop(
                f"weights {', '.join(bad[:3])} are not finite",
                "before writing the checkpoint, so no checkpoint holds them",
            )
        if self._graph is not None:  # learning rates as numbers, as a run without a graph has
            self._graph.restore_checkpoint_types(checkpoint)
        # The current run's config (vaelab.train checks on resume that it matches the stored one).
        if self.run_config is not None:
            checkpoint["vaelab_config"] = self.run_config


__all__ = ["GenerativeModule", "NonFiniteError"]
