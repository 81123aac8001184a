"""Exact resume: every random stream training draws from is saved in checkpoints and restored.

``vaelab.train`` puts :class:`ResumeState` first among the callbacks of every run. Its state (in
``checkpoint["callbacks"]["ResumeState"]``) holds the RNG states of torch (CPU and every CUDA
device), NumPy and Python's ``random``, and the Hydra multirun job number (so ``ckpt_path=last``
under ``--multirun`` prefers the checkpoint of the same job).

Without it, ``seed_everything`` at the start of a resumed run re-seeds the global torch RNG, so
the resumed epochs replay epoch 0's reparameterisation noise (1 epoch + resume 1 differed from 2
straight epochs by max |dW| = 3.1e-2). The states are restored after loading at the first
``on_train_epoch_start`` or ``on_train_batch_start``, whichever comes first: after the sanity
check and the ``on_train_start`` hooks, right where the saved run went on. A run resumed from an
epoch end gets the epoch start; a run resumed inside an epoch (a step-based ``ModelCheckpoint``,
a validation inside the epoch) gets no epoch start from Lightning, and the states come back at
its next batch start instead (before this, they came back only at the next epoch start, one
epoch late). So a resume from any checkpoint equals the uninterrupted run, bit for bit on a CPU:
``tests/integration/test_resume_exact.py`` (N epochs + resume M) and
``tests/integration/test_resume_mid_epoch.py`` (from a step checkpoint inside an epoch or at its
last step, K = 1 and K > 1).

The data module's generators need no saving: ``IndexBatchLoader`` reseeds its order and its
transform noise (dynamic binarization, dequantization, flips) from ``(data.seed, epoch)`` at each
epoch start, and Lightning restores the epoch; inside an epoch, Lightning also restores the
loader's position (``IndexBatchLoader.state_dict``), and the loader replays the noise of the
minibatches it skips. ``ckpt_path=last`` checks that ``data.seed`` is the same. All states are
stored as tensors, ints and lists of ints, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


def collect_rng_states() -> dict[str, Any]:
    """The RNG states of torch (CPU, CUDA), NumPy and Python, in weights-only-loadable types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        n = states["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in states:
        p = states["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    cuda = states.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another machine: keep what can be kept
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


class ResumeState(L.Callback):
    """Saves the RNG states (and the multirun job number) in checkpoints; restores them on resume.

    Args:
        job_num: the Hydra multirun job number of this run (None outside a multirun).
    """

    STATE_KEY = "ResumeState"
    # The one thing a callback declares about K-step blocks (vaelab.training.takes_step_blocks):
    # its batch-start hook restores the RNG once after a resume, as well before a block as
    # before a single step, so module.steps_per_batch=auto keeps its K for it.
    takes_step_blocks = True

    def __init__(self, job_num: int | None = None) -> None:
        self.job_num = job_num
        self._pending: dict[str, Any] | None = None
        self._check_epoch_count = False

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states(), "job_num": self.job_num}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at the next epoch or batch start, not now: the sanity check and on_train_start
        # hooks run in between on resume but not at this point of the saved run.
        self._pending = state_dict.get("rng")
        self._check_epoch_count = True

    def _restore(self) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A restart inside an epoch skips on_train_epoch_start (Lightning's FitLoop); nothing
        # that draws runs between a training batch's fetch and this hook.
        self._restore()
        if self._check_epoch_count:
            self._check_epoch_count = False
            _count_the_started_epoch(trainer)


def _count_the_started_epoch(trainer: L.Trainer) -> None:
    """Count the start of the epoch in progress where Lightning 2.6 has not.

    Restarted from a checkpoint written at the last batch of an epoch (``on_train_batch_end``, a
    step-based ``ModelCheckpoint``), the FitLoop marks that epoch done and trains the next one
    without counting its start (``epoch_progress`` ``ready``/``started``; nor does it call
    ``on_train_epoch_start``). The checkpoints of that run then say that no epoch is in progress,
    and a resume from one of them trained no batch at all in the epoch it should have continued
    (found with ``tests/integration/test_resume_mid_epoch.py``). During an epoch, ``started``
    is always ``processed + 1``; this puts it back.
    """
    progress = trainer.fit_loop.epoch_progress
    if progress.current.started == progress.current.processed:
        progress.increment_ready()
        progress.increment_started()


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, rewritten after every epoch (or every validation), whatever the metrics.

    Since Lightning 2.6, ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only in steps
    where it also writes a top-k checkpoint: with ``monitor=val/nll`` it goes stale whenever
    val/nll does not improve, and ``ckpt_path=last`` would resume an older epoch. This is a plain
    monitor-less ModelCheckpoint named ``last`` with a state key of its own (so it can sit beside
    a monitor-less ``model_checkpoint``).

    Args:
        dirpath: the checkpoint folder.
        filename: the file's stem (``last``: ``ckpt_path=last`` looks for ``last*.ckpt``).
        **kwargs: other ``ModelCheckpoint`` arguments (``every_n_epochs``, ``verbose``, ...).
    """

    def __init__(self, dirpath: str, filename: str = "last", **kwargs: Any) -> None:
        kwargs.update(monitor=None, save_top_k=1, save_last=False, enable_version_counter=False)
        super().__init__(dirpath=dirpath, filename=filename, **kwargs)

    @property
    def state_key(self) -> str:
        return f"LastCheckpoint[{self.filename}]"


__all__ = ["LastCheckpoint", "ResumeState", "collect_rng_states", "restore_rng_states"]
