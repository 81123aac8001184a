"""The protocol every generative model in vaelab speaks.

A model is a plain ``nn.Module``; the Lightning side (``vaelab.lit``) is written once for all of them.

Units: every log-likelihood is in nats, of the data exactly as the DataModule delivers it
(binary pixels for binarized MNIST; ``(x + u) / 256`` in ``[0, 1)`` for dequantized 8-bit images).
Converting to bits/dim in pixel space is ``vaelab.objectives.bits_per_dim``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Terms:
    """The training objective for a batch and the named quantities behind it.

    Attributes:
        loss: scalar to minimise (already averaged over the batch).
        elbo: ``(B,)`` per-example lower bound on ``log p(x)`` in nats (for flows: exact ``log p(x)``).
        terms: named ``(B,)`` per-example tensors in nats, e.g. ``rate``, ``distortion``,
            ``rate/z1``. The LightningModule logs each as ``{stage}/{name}`` (batch mean).
    """

    loss: Tensor
    elbo: Tensor
    terms: Mapping[str, Tensor] = field(default_factory=dict)

    def items(self) -> dict[str, Tensor]:
        """All per-example quantities, ``elbo`` included, keyed by name."""
        return {"elbo": self.elbo, **self.terms}


class GenerativeModel(nn.Module):
    """Base class: ``forward(x) -> Terms``, ``log_likelihood(x, num_samples)``, ``sample(n)``.

    Subclasses set ``data_shape`` (C, H, W) and may override ``set_training_step`` (for annealed
    objectives) and ``check_data`` (to refuse data their likelihood cannot model).
    """

    data_shape: tuple[int, ...]

    def forward(self, x: Tensor) -> Terms:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, num_samples: int = 1) -> Tensor:  # pragma: no cover
        """``(B,)`` estimate of ``log p(x)`` in nats: exact for flows, ``L_k`` for latent models."""
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:  # pragma: no cover
        """``n`` samples in data space, shape ``(n, *data_shape)``."""
        raise NotImplementedError

    def set_training_step(self, step: int) -> None:
        """Told the global optimizer step before each training batch (for annealing schedules)."""

    def init_from_data(self, mean: Tensor) -> None:
        """Initialise data-dependent parameters from the training set's mean ``(C, H, W)`` (in
        the units the DataModule delivers), before training. The default does nothing."""

    def check_data(self, data_kind: str) -> None:
        """Raise ``ValueError`` if this model cannot model data of ``data_kind``.

        ``data_kind`` is ``"binary"`` (values in {0, 1}) or ``"pixels"`` (8-bit images scaled to
        ``[0, 1]``, dequantized or not). The default accepts both.
        """

    @property
    def num_dims(self) -> int:
        """Number of data dimensions D (sub-pixels) per example."""
        n = 1
        for s in self.data_shape:
            n *= int(s)
        return n

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        if p is not None:
            return p.device
        b = next(self.buffers(), None)
        return b.device if b is not None else torch.device("cpu")
