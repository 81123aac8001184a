"""Stop a run whose figures leave any sane range: it *diverged*, and says so.

A NaN or an infinity already stops training at its step (``GenerativeModule``). A run can also blow
up while staying finite: ``optimizer.lr=1e6`` reached a test NLL of 1.2e18 nats and ended ``ok``.
:class:`DivergenceStop` has the shape of Lightning's ``EarlyStopping(check_finite=True,
divergence_threshold=...)``, with a threshold that needs no tuning per dataset: a figure is out of
range when it is worse than ``factor`` times the uniform model of the data, in bits per pixel
dimension (the uniform model codes a binary pixel in 1 bit and an 8-bit pixel in 8; ``factor`` =
1000 by default, so 1000 bits/dim on binary MNIST = 543,000 nats/image, 8000 bits/dim on 8-bit
data: a RealNVP on dequantized MNIST starts near 86 bits/dim, and AEVB's smoke run with 200 latents
on a fake MNIST sits near 370 bits/dim for its first steps; ``lr=1e6`` reaches 1e15). It
checks the training negative ELBO at every logging step and at the end of training, and
``val/nll`` after each validation; ``patience`` (3) such checks out of range in a row (a spike
early in training is no divergence: AEVB's Adagrad with 200 latents passes 3600 bits/dim at step
2), or one non-finite figure, raise :class:`DivergedError` with the step, the value and a hint;
``vaelab-train`` records ``status: diverged: ...`` in ``metrics.json`` and exits non-zero.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from vaelab.units import has_bits_per_dim


class DivergedError(FloatingPointError):
    """A run's loss or validation NLL left the sane range for its data."""

    run_status = "diverged"  # metrics.json's status word (vaelab.tasks.TaskRecord.fail)


def uniform_bits_per_dim(data_kind: str | None) -> float:
    """Bits per pixel dimension of the uniform model of the data: 1 for binary, 8 for 8-bit."""
    return 1.0 if data_kind == "binary" else 8.0


def pixel_bits_per_dim(nll: float, num_dims: int, data_kind: str | None) -> float:
    """``nll`` (nats per image, in the model's data space) in bits per pixel dimension.

    Binary and dequantized data: ``vaelab.units.bits_per_dim``. ``unit`` data
    (``x / 255``, no bits/dim defined): the density is moved to pixel space (``+ D ln 255``) for
    this range check only.
    """
    d = max(1, int(num_dims))
    if data_kind == "binary":
        return nll / (d * math.log(2.0))
    scale = 256.0 if data_kind is not None and has_bits_per_dim(data_kind) else 255.0
    return (nll + d * math.log(scale)) / (d * math.log(2.0))


class DivergenceStop(L.Callback):
    """Raise :class:`DivergedError` when a figure is non-finite or worse than ``factor`` x the
    uniform model of the data (see the module docstring).

    Args:
        factor: how many times the uniform model's bits/dim a figure may reach.
        patience: out-of-range checks in a row (training logging steps, validations, the last
            step) that make a divergence; a non-finite figure stops at once.
        check_train: check the training negative ELBO (each logging step, and the last step).
        check_val: check ``val/nll`` after each validation (the sanity check included).
    """

    # Its batch-end hook reads the last logged values, the same after a block of K steps
    # (module.steps_per_batch) as after one step.
    takes_step_blocks = True

    def __init__(
        self,
        factor: float = 1000.0,
        patience: int = 3,
        check_train: bool = True,
        check_val: bool = True,
    ) -> None:
        if not factor > 0:
            raise ValueError(f"callbacks.divergence.factor must be > 0, got {factor}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(
                f"callbacks.divergence.patience must be an integer >= 1, got {patience}"
            )
        self.factor = float(factor)
        self.patience = patience
        self.check_train = bool(check_train)
        self.check_val = bool(check_val)
        self._seen: object = None
        self._strikes = 0  # consecutive checks out of range

    def _check(self, trainer: L.Trainer, module: Any, what: str, nll: float, step: int) -> None:
        kind = getattr(module, "data_kind", None)
        dims = int(getattr(getattr(module, "model", None), "num_dims", 0) or 0)
        if not dims:
            return
        bpd = pixel_bits_per_dim(nll, dims, kind) if math.isfinite(nll) else nll
        bound = self.factor * uniform_bits_per_dim(kind)
        bad = not (math.isfinite(bpd) and bpd <= bound)
        if trainer.world_size > 1:  # train/* are each rank's own: stop all ranks or none
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        # A spike is not a divergence (AEVB's Adagrad at lr 0.02 with 200 latents reaches
        # -L_1 = 2e6 nats at step 2 of the smoke run); a NaN or an infinity counts at once.
        self._strikes = self._strikes + 1 if bad else 0
        if not bad or (math.isfinite(bpd) and self._strikes < self.patience):
            return
        lr = ""
        if trainer.optimizers:
            lr = f" (now optimizer.lr={trainer.optimizers[0].param_groups[0]['lr']:g})"
        raise DivergedError(
            f"training diverged at global step {step} (epoch {trainer.current_epoch}): {what} = "
            f"{nll:.4g} nats/image ({bpd:.4g} bits/dim), worse than {self.factor:g} x the "
            f"uniform model of this data ({bound:g} bits/dim) at {self._strikes} checks in a "
            f"row. Lower the learning rate{lr}, "
            "enable gradient clipping (trainer.gradient_clip_val=1.0), or check the data; "
            "callbacks.divergence.factor=<larger> if such figures are expected, "
            "~callbacks.divergence to switch the check off"
        )

    def _check_train(self, trainer: L.Trainer, module: Any, final: bool = False) -> None:
        # GenerativeModule's last logged train/* (floats, no device sync), or the last step's.
        values = (
            module.final_train_metrics() if final else getattr(module, "last_train_metrics", {})
        )
        if not self.check_train or "train/elbo" not in values:
            return
        if not final and values is self._seen:
            return
        self._seen = values
        step = trainer.global_step - 1 if final else getattr(module, "_last_logged_step", -1)
        self._check(trainer, module, "the training negative ELBO", -values["train/elbo"], step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._check_train(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if hasattr(pl_module, "final_train_metrics"):
            self._check_train(trainer, pl_module, final=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        nll = trainer.callback_metrics.get("val/nll")
        if self.check_val and nll is not None:
            self._check(trainer, pl_module, "val/nll", float(nll), trainer.global_step)


__all__ = ["DivergedError", "DivergenceStop", "pixel_bits_per_dim", "uniform_bits_per_dim"]
