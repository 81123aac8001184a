"""Objectives and unit conversions: ELBO, beta/warm-up/capacity, the IWAE bound, bits per dim.

These are the research content of the framework, written by hand on top of ``torch.distributions``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

LN2 = math.log(2.0)


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


def bits_per_dim(nll: Tensor, num_dims: int, data_kind: str) -> Tensor:
    """``vaelab.evaluation.units.bits_per_dim`` (its home; kept here for existing imports)."""
    from vaelab.evaluation.units import bits_per_dim as convert

    return convert(nll, num_dims, data_kind)


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
