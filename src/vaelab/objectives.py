"""Objectives: ELBO, beta/warm-up/capacity, and the importance-weighted bound ``L_k``, chunked.

These are the research content of the framework, written by hand on top of ``torch.distributions``.

``L_k`` is written once for every latent-variable model (:func:`importance_weighted_bound`): a
model exposes ``encode(x) -> q(z|x)`` and its log importance weights ``log_weights(x, k,
posterior) -> (k, B)`` (``log p(x, z_i) - log q(z_i | x)`` with ``z_i ~ q``), the
:class:`ImportanceSampled` protocol; the bound draws them chunk by chunk so ``k = 5000`` fits in
memory and combines them with one log-sum-exp over all ``k`` (never a mean of per-chunk bounds,
which is smaller). Models import this module, never the other way round.

Precision: ``L_k`` is computed with autocast switched off (:func:`full_precision`), so log weights
and their log-sum-exp are float32 (float64 for a float64 model) whatever ``trainer.precision``
says; ``vaelab.evaluation`` computes every reported figure the same way.

Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, eq. 8.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from vaelab.stop import check_stop

# Decoder rows per L_k chunk. On the CPU a chunk's (rows x 784) float32 temporaries must stay under
# glibc's largest mmap threshold (32 MiB), or each chunk maps fresh pages and page-faults on every
# touch: 4096 rows made L_5000 23 % faster than 32768 on this project's machine (7.5 million page
# faults fewer per 200 images). A GPU wants large chunks.
CPU_CHUNK_ROWS = 1 << 12
CUDA_CHUNK_ROWS = 1 << 15


def kl_or_estimate(q: Distribution, p: Distribution, z: Tensor | None = None) -> Tensor:
    """KL(q || p): analytic where ``torch.distributions`` registers it, else a sampled estimate.

    Args:
        q: the approximate posterior.
        p: the prior (or conditional prior), same batch and event shape as ``q``.
        z: a sample from ``q`` (with its reparameterised graph) used by the sampled estimate
            ``log q(z) - log p(z)``; drawn with ``rsample`` if not given.

    Returns:
        Per-example KL in nats, shape ``q.batch_shape`` (or ``z``'s sample shape + batch shape).

    Reference: the analytic-with-fallback pattern of pyro's ``TraceMeanField_ELBO``.
    """
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        if z is None:
            z = q.rsample()
        return q.log_prob(z) - p.log_prob(z)


def iwae_bound(log_w: Tensor, dim: int = 0) -> Tensor:
    """L_k = log (1/k) sum_i w_i from log importance weights along ``dim``.

    Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, eq. 8.
    """
    k = log_w.shape[dim]
    if log_w.dtype in (torch.float16, torch.bfloat16):
        log_w = log_w.float()  # the log-sum-exp is always at least float32
    return torch.logsumexp(log_w, dim=dim) - math.log(k)


class ImportanceSampled(Protocol):
    """What :func:`importance_weighted_bound` needs of a model (``LatentVariableModel`` has it)."""

    def encode(self, x: Tensor) -> Distribution:
        """``q(z_1 | x)``, batch shape ``(B,)``."""
        ...

    def log_weights(self, x: Tensor, num_samples: int, posterior: Distribution) -> Tensor:
        """``(k, B)`` log importance weights ``log p(x, z_i) - log q(z_i | x)``, ``z_i ~ q``."""
        ...


def chunk_rows(configured: int | None, device: torch.device) -> int:
    """``configured``, or the default for ``device`` when it is ``None``."""
    if configured is not None:
        return int(configured)
    return CPU_CHUNK_ROWS if device.type == "cpu" else CUDA_CHUNK_ROWS


def sample_chunks(num_samples: int, batch_size: int, chunk_rows: int) -> list[int]:
    """Split ``num_samples`` importance samples into chunks of at most ``chunk_rows`` rows in total.

    A chunk of ``c`` samples costs ``c * batch_size`` decoder rows; this bounds peak memory.
    """
    per = max(1, chunk_rows // max(1, batch_size))
    return [min(per, num_samples - i) for i in range(0, num_samples, per)]


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Switch autocast off on ``device`` (reported figures are never computed in bf16/fp16)."""
    with torch.autocast(device.type, enabled=False):
        yield


# Log importance weights kept at once before L_k is streamed: k * B <= 2**22 (16 MiB of float32;
# k = 5000 at batch 100 is 500,000) takes one log-sum-exp over all of them; beyond it a running
# log-sum-exp (float64) keeps one chunk at a time.
LOG_WEIGHTS_KEPT = 1 << 22


def importance_weighted_bound(
    model: ImportanceSampled, x: Tensor, num_samples: int, rows: int | None = None
) -> Tensor:
    """``L_k`` with ``k = num_samples``: a ``(B,)`` lower bound on ``log p(x)`` in nats.

    ``q(z|x)`` is computed once; the ``k`` samples are drawn in chunks of at most ``rows`` decoder
    rows (``chunk_rows``: 4096 on the CPU, 32768 on a GPU by default), and the log-sum-exp runs
    over all ``k`` log weights at once, so the result does not depend on the chunking. Beyond
    ``k * B = LOG_WEIGHTS_KEPT`` the log-sum-exp is a running one (float64), so memory stays that
    of one chunk whatever ``k`` is. A SIGTERM stops it at the next chunk (:mod:`vaelab.stop`).

    Reference: Burda et al. (2015), eq. 8.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    per = max(1, chunk_rows(rows, x.device) // max(1, x.shape[0]))  # as sample_chunks, lazily
    sizes = (min(per, num_samples - i) for i in range(0, num_samples, per))
    with full_precision(x.device):
        posterior = model.encode(x)
        if num_samples * x.shape[0] <= LOG_WEIGHTS_KEPT:
            chunks = []
            for c in sizes:
                check_stop()  # SIGTERM (vaelab.stop)
                chunks.append(model.log_weights(x, c, posterior))  # (c, B)
            return iwae_bound(torch.cat(chunks, dim=0), dim=0)
        # Streamed: a running log-sum-exp in float64, one chunk alive at a time, so memory is
        # bounded by the chunk whatever k is (k = 1e8 grew to 17 GB when all were kept).
        acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        total = torch.full((x.shape[0],), -math.inf, dtype=acc, device=x.device)
        dtype = torch.float32
        for c in sizes:
            check_stop()
            log_w = model.log_weights(x, c, posterior)  # (c, B)
            dtype = torch.promote_types(log_w.dtype, torch.float32)  # as iwae_bound reports it
            total = torch.logaddexp(total, torch.logsumexp(log_w.to(acc), dim=0))
            del log_w
        return (total - math.log(num_samples)).to(dtype)


class ELBOObjective(nn.Module):
    """``loss = distortion + beta_t * rate``, or Burgess et al.'s ``distortion + gamma |rate - C_t|``.

    ``beta_t`` is warmed up linearly from 0 to ``beta`` over ``warmup_steps`` optimizer steps;
    ``C_t`` rises linearly from 0 to ``capacity_max`` nats over ``capacity_steps``. With ``beta = 1``
    and no warm-up or capacity this is exactly the negative ELBO. ``iwae_samples > 1`` asks the
    model for the importance-weighted bound L_k instead (then beta must be 1 and no capacity is set).
    ``elbo_samples = k > 1`` keeps the ELBO but estimates it with the mean over k samples of
    ``log p(x, z_i) - log q(z_i|x)`` (Burda et al.'s "VAE, k samples" column; not importance-weighted).

    References:
        Higgins et al. (2017), beta-VAE. Burgess et al. (2018), Understanding disentangling in beta-VAE.
        Burda et al. (2015), Importance Weighted Autoencoders.
    """

    def __init__(
        self,
        beta: float = 1.0,
        warmup_steps: int = 0,
        capacity_max: float | None = None,
        capacity_gamma: float = 1000.0,
        capacity_steps: int = 100_000,
        iwae_samples: int = 1,
        elbo_samples: int = 1,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if warmup_steps < 0 or capacity_steps < 0:
            raise ValueError("warmup_steps and capacity_steps must be >= 0")
        if iwae_samples < 1:
            raise ValueError(f"iwae_samples must be >= 1, got {iwae_samples}")
        if iwae_samples > 1 and (beta != 1.0 or capacity_max is not None or warmup_steps):
            raise ValueError(
                "iwae_samples > 1 trains the importance-weighted bound, which has no beta, warm-up "
                "or capacity; set beta=1, warmup_steps=0 and capacity_max=null, or iwae_samples=1"
            )
        if elbo_samples < 1:
            raise ValueError(f"elbo_samples must be >= 1, got {elbo_samples}")
        if elbo_samples > 1 and iwae_samples > 1:
            raise ValueError(
                "elbo_samples > 1 (ELBO averaged over k samples, the 'VAE, k samples' column) and "
                "iwae_samples > 1 (the importance-weighted bound) exclude each other; set one to 1"
            )
        self.beta = float(beta)
        self.warmup_steps = int(warmup_steps)
        self.capacity_max = None if capacity_max is None else float(capacity_max)
        self.capacity_gamma = float(capacity_gamma)
        self.capacity_steps = int(capacity_steps)
        self.iwae_samples = int(iwae_samples)
        self.elbo_samples = int(elbo_samples)
        # beta_t and C_t for torch.compile: the compiled forward reads them from these 0-d
        # tensors, not as Python numbers (which dynamo guards as constants: a recompile every
        # optimizer step of a schedule). Eager keeps the Python numbers, so no eager number
        # changes. Not persistent: checkpoints are as before; they follow the module's device.
        # Only for a schedule: a plain objective has no buffers (DDP broadcasts buffers).
        if self.warmup_steps:
            self.register_buffer("_beta_t", torch.tensor(0.0), persistent=False)
        if self.capacity_max is not None:
            self.register_buffer("_capacity_t", torch.tensor(0.0), persistent=False)
        self.step = 0

    @property
    def step(self) -> int:
        """The optimizer step the schedules are at (set before each training step)."""
        return self._step

    @step.setter
    def step(self, step: int) -> None:
        self._step = int(step)
        if self.warmup_steps:
            self._beta_t.fill_(self.current_beta())
        if self.capacity_max is not None:
            self._capacity_t.fill_(self.current_capacity())

    @property
    def is_plain_elbo(self) -> bool:
        return self.beta == 1.0 and self.warmup_steps == 0 and self.capacity_max is None

    def current_beta(self) -> float:
        if self.warmup_steps and self.step < self.warmup_steps:
            return self.beta * self.step / self.warmup_steps
        return self.beta

    def current_capacity(self) -> float:
        assert self.capacity_max is not None
        if self.capacity_steps == 0:
            return self.capacity_max
        return self.capacity_max * min(1.0, self.step / self.capacity_steps)

    def forward(self, distortion: Tensor, rate: Tensor) -> Tensor:
        """Scalar loss from ``(B,)`` distortion and rate (nats)."""
        compiling = torch.compiler.is_compiling()
        if self.capacity_max is not None:
            c = self._capacity_t if compiling else self.current_capacity()
            return distortion.mean() + self.capacity_gamma * (rate.mean() - c).abs()
        if self.is_plain_elbo:
            return (distortion + rate).mean()
        beta = self._beta_t if compiling and self.warmup_steps else self.current_beta()
        return (distortion + beta * rate).mean()

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, warmup_steps={self.warmup_steps}, capacity_max={self.capacity_max}, "
            f"iwae_samples={self.iwae_samples}, elbo_samples={self.elbo_samples}"
        )


__all__ = [
    "CPU_CHUNK_ROWS",
    "CUDA_CHUNK_ROWS",
    "LOG_WEIGHTS_KEPT",
    "ELBOObjective",
    "ImportanceSampled",
    "chunk_rows",
    "full_precision",
    "importance_weighted_bound",
    "iwae_bound",
    "kl_or_estimate",
    "sample_chunks",
]
