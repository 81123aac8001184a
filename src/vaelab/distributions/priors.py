"""Priors p(z)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, register_kl
from torch.distributions.kl import _kl_independent_independent

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant Normal.log_prob subtracts


class StandardNormal(Independent):
    """``N(0, I)``: ``Independent(Normal(0, 1), 1)``, a type of its own so that the KL from a
    diagonal Gaussian and ``log_prob`` skip the arithmetic with the zeros and ones.

    Every value is bit for bit the one torch's generic ``Normal`` formulas give (dividing by 1,
    subtracting 0 and ``log 1`` are exact in floating point, forward and backward; a test checks
    it). On the 784-200-200-50 VAE at batch 20 this saves about 10 % of the forward pass.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        # Normal.log_prob: -((v - 0) ** 2) / (2 * 1) - log(1) - log(sqrt(2 pi)), summed over D.
        return (-(value**2) / 2 - _LOG_SQRT_2PI).sum(-1)


@register_kl(Independent, StandardNormal)
def _kl_diagonal_gaussian_standard_normal(q: Independent, p: StandardNormal) -> Tensor:
    """``KL(N(mu, diag sigma^2) || N(0, I))``: torch's ``_kl_normal_normal`` with ``p`` = N(0, 1)
    written out (``(sigma / 1)^2``, ``((mu - 0) / 1)^2``), then summed over the event dim."""
    base = q.base_dist
    if (
        type(base) is not Normal
        or q.reinterpreted_batch_ndims != 1
        or q.batch_shape != p.batch_shape
        or q.event_shape != p.event_shape
    ):
        return _kl_independent_independent(q, p)
    var_ratio = base.scale.pow(2)
    t1 = base.loc.pow(2)
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)


class StandardNormalPrior(nn.Module):
    """``N(0, I)`` over ``latent_dim`` dims; its parameters are buffers, so it follows ``.to(device)``.

    ``forward(batch_shape)`` returns a ``StandardNormal``; the last one built is reused while the
    batch shape and the buffers are the same (it holds no state beyond them), so a training step
    builds no distribution for the prior.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)
        self._cached: tuple | None = None

    def forward(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> StandardNormal:
        shape, loc, scale = tuple(batch_shape), self.loc, self.scale
        compiling = torch.compiler.is_compiling()
        c = self._cached  # (shape, loc, scale, versions, dist): reused while all are the same
        # Traced by torch.compile, building it costs nothing at run time, and the cache's
        # ``_version`` test cannot be traced (it broke the graph and forced a recompile).
        if (
            not compiling
            and c is not None
            and c[0] == shape
            and c[1] is loc
            and c[2] is scale
            and c[3] == (loc._version, scale._version)
        ):
            return c[4]
        dist = StandardNormal(
            Normal(
                loc.expand(*shape, self.latent_dim),
                scale.expand(*shape, self.latent_dim),
                validate_args=False,
            ),
            1,
            validate_args=False,
        )
        if not compiling:
            self._cached = (shape, loc, scale, (loc._version, scale._version), dist)
        return dist

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)`` for ``z`` of any leading shape (``StandardNormal.log_prob``)."""
        return StandardNormal.log_prob(self(z.shape[:-1]), z)
