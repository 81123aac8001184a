"""The protocol every generative model in vaelab speaks.

A model is a plain ``nn.Module``; the Lightning side (``vaelab.lit``) is written once for all of them.

Units: every log-likelihood is in nats, of the data exactly as the DataModule delivers it
(binary pixels for binarized MNIST; ``(x + u) / 256`` in ``[0, 1)`` for dequantized 8-bit images).
Converting to bits/dim in pixel space is ``vaelab.units.bits_per_dim``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.objectives import importance_weighted_bound


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
    #: True when ``forward``'s ``elbo`` is the exact ``log p(x)`` (flows): the LightningModule then
    #: reports it as ``nll`` without a second pass. Part of the protocol; no attribute probing.
    exact_likelihood: bool = False

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

        ``data_kind`` is ``"binary"`` (values in {0, 1}), ``"dequantized"`` (``(x + u) / 256``)
        or ``"unit"`` (``x / 255``); see ``vaelab.units``. The default accepts all.
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


class LatentVariableModel(GenerativeModel):
    """What the VAE and the hierarchical VAE share: ``L_k``, posterior means, data checks.

    Subclasses set ``decoder`` (a ``vaelab.distributions.Likelihood``), ``prior`` and
    ``objective`` (an ``ELBOObjective``) and implement:

    - ``encode(x) -> q(z_1 | x)``, the posterior of the layer next to the data;
    - ``log_weights(x, k, posterior) -> (k, B)``: ``log p(x, z_i) - log q(z_i | x)`` for ``k``
      samples of all latents, given ``posterior = encode(x)`` (computed once per batch);
    - ``posterior_means(x) -> {layer: (B, d)}``, what active units are counted on.

    ``log_likelihood`` is then ``vaelab.objectives.importance_weighted_bound``, written once.
    ``eval_chunk_rows`` bounds ``k * B`` decoder rows per chunk (``None``: the device's default).
    """

    decoder: nn.Module
    eval_chunk_rows: int | None = None
    _values_checked: bool = False

    def encode(self, x: Tensor) -> Distribution:  # pragma: no cover - abstract
        """``q(z_1 | x)``: batch shape ``(B,)``."""
        raise NotImplementedError

    def log_weights(
        self, x: Tensor, num_samples: int, posterior: Distribution | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """``(k, B)`` log importance weights ``log p(x, z_i) - log q(z_i | x)``, ``z_i ~ q``."""
        raise NotImplementedError

    def posterior_means(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """``{layer name: (B, d) posterior means}``, for active units."""
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, num_samples: int = 1) -> Tensor:
        """``L_k`` with ``k = num_samples``: ``(B,)`` lower bound on ``log p(x)`` in nats.

        Chunked over samples (so ``k = 5000`` fits in memory), float32 under any autocast; see
        ``vaelab.objectives.importance_weighted_bound``.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self._check_values(x)
        return importance_weighted_bound(self, x, num_samples, self.eval_chunk_rows)

    def decode_mean(self, z: Tensor) -> Tensor:
        """Mean of ``p(x | z_1)`` (for reconstructions and image grids)."""
        return self.decoder(z).mean

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mean: ``E[x | z_1 = E_q[z_1|x]]``."""
        return self.decode_mean(self.encode(x).mean)

    # -- protocol shared by both -------------------------------------------------------------------
    def set_training_step(self, step: int) -> None:
        self.objective.step = int(step)

    def check_data(self, data_kind: str) -> None:
        self.decoder.check_data(data_kind)

    def init_from_data(self, mean: Tensor) -> None:
        self.decoder.init_from_data(mean)

    def _check_values(self, x: Tensor) -> None:
        """Once per model: refuse non-binary ``x`` for a Bernoulli decoder."""
        if not self._values_checked:
            self.decoder.check_values(x)
            self._values_checked = True
