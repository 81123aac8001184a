"""Discretised latents and the fixed-point models handed to the entropy coder.

Every continuous latent dimension is cut into ``2**prior_prec`` buckets of equal mass under the
standard normal, and a latent is represented by its bucket's centre (the normal's quantile at the
bucket's middle probability). Gaussians over a latent (the posterior ``q(z_t|.)`` and the
conditional prior ``p(z_t|z_{t+1})``) are coded on those buckets as integer counts summing to
``2**latent_prec`` (a bucket far from the mean may get none, as in the papers' code: a posterior
only has to give mass to the buckets it is sampled from); Bernoulli pixels as counts summing to
``2**obs_prec``, each value keeping at least one. The counts are then scaled to the coder's 24-bit
fixed point, with every symbol raised to at least one 24-bit count (constriction's models give
every symbol nonzero mass; this leaks at most ``2**prior_prec / 2**24`` per dimension).

Why no larger leak: the "+1 count per bucket" rule at ``latent_prec`` bits (``cdf * (2**p - n) +
k``) puts ``n / 2**latent_prec`` of every posterior's mass on far-away buckets, 1.6 % per
dimension at 8/14 bits; with 20 latent dimensions a quarter of the popped latents then have a
wild coordinate, and the pixel term grew by 7 bits/image (4 %) on the bbans_vae model.

``coder_pmf`` hands the 24-bit counts to ``constriction``'s categorical model so that its
fixed-point probabilities are *exactly* those counts, so the code length of a stream is
computable from the counts alone (tests check both).

Reference:
    Townsend, Bird & Barber (2019), Practical Lossless Compression with Latent Variables using Bits
    Back Coding, section 3.2 and appendix (buckets of equal prior mass, bucket centres).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# constriction's default ANS coder: 32-bit words, probabilities in 24-bit fixed point.
CODER_PRECISION = 24


def check_precisions(prior_prec: int, latent_prec: int, obs_prec: int) -> None:
    """Raise ``ValueError`` unless ``1 <= prior_prec < latent_prec <= 24`` and ``1 <= obs_prec <= 24``."""
    for name, v in (
        ("prior_prec", prior_prec),
        ("latent_prec", latent_prec),
        ("obs_prec", obs_prec),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= CODER_PRECISION:
            raise ValueError(f"{name} must be an int in [1, {CODER_PRECISION}], got {v!r}")
    if latent_prec <= prior_prec:
        raise ValueError(
            f"latent_prec ({latent_prec}) must exceed prior_prec ({prior_prec}): each of the "
            f"2**prior_prec buckets needs at least one of the 2**latent_prec counts (the papers "
            "use prior_prec 8 with latent_prec 12-14)"
        )


class Buckets:
    """Equal-mass buckets of ``N(loc_j, scale_j^2)`` per latent dimension j: ``2**prior_prec`` each.

    With ``loc = 0, scale = 1`` (the default, and always the top layer's) these are the papers'
    buckets of equal mass under the N(0, 1) prior. Lower layers of a hierarchy can use the
    Gaussian that matches their prior marginal (``LatentChain.prior_marginals``).

    Attributes:
        n: number of buckets per dimension.
        edges: ``(d, n - 1)`` float64 interior edges ``loc + scale * Phi^-1(k / n)``, k = 1..n-1.
        centres: ``(d, n)`` float64 centres ``loc + scale * Phi^-1((k + 1/2) / n)``.
    """

    def __init__(
        self, prior_prec: int, dim: int, loc: Tensor | None = None, scale: Tensor | None = None
    ) -> None:
        self.prior_prec = int(prior_prec)
        self.n = 1 << self.prior_prec
        self.dim = int(dim)
        k = torch.arange(self.n + 1, dtype=torch.float64)
        std_edges = torch.special.ndtri(k[1:-1] / self.n)  # (n - 1,)
        std_centres = torch.special.ndtri((k[:-1] + 0.5) / self.n)  # (n,)
        if loc is None and scale is None:
            self.edges = std_edges.expand(self.dim, -1)
            self.centres = std_centres.expand(self.dim, -1)
        else:
            loc = loc.to(torch.float64).reshape(self.dim, 1)
            scale = scale.to(torch.float64).reshape(self.dim, 1)
            self.edges = loc + scale * std_edges  # (d, n - 1)
            self.centres = loc + scale * std_centres  # (d, n)

    def values(self, index: np.ndarray | Tensor) -> Tensor:
        """Bucket centres ``(b, d)`` (float64) for integer bucket indices of ``b * d`` latents."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1, self.dim)
        return torch.gather(self.centres, 1, idx.T).T.contiguous()


def _to_coder_counts(counts: Tensor, prec: int) -> np.ndarray:
    """Counts at ``prec`` bits (rows summing to 2**prec, zeros allowed) as 24-bit coder counts.

    Each count is scaled by ``2**(24 - prec)``; a zero becomes 1 (constriction's models must give
    every symbol a nonzero probability) and the row's largest count pays for those ones. So the
    coder's probabilities are the ``prec``-bit ones except for a leak of at most ``n / 2**24``.
    """
    c = counts.to(torch.int64) << (CODER_PRECISION - prec)
    zeros = c == 0
    c = torch.where(zeros, torch.ones_like(c), c)
    top = c.argmax(dim=1, keepdim=True)
    c.scatter_add_(1, top, -zeros.sum(dim=1, keepdim=True))
    return c.numpy()


def gaussian_counts(mu: Tensor, sigma: Tensor, buckets: Buckets, latent_prec: int) -> np.ndarray:
    """24-bit coder counts of ``N(mu, sigma^2)`` on the buckets, quantised at ``latent_prec`` bits.

    ``cdf_int[k] = round(2**latent_prec * Phi((e_k - mu) / sigma))`` at the bucket edges
    ``e_0 = -inf < e_1 < ... < e_n = +inf``; its differences are the bucket masses at
    ``latent_prec`` bits (a bucket far in the tails may get 0), then ``_to_coder_counts``.

    Args:
        mu: ``(b, d)`` float64 means, ``d = buckets.dim``.
        sigma: ``(b, d)`` float64 standard deviations.

    Returns:
        ``(prod(...) * d, n)`` int64 counts summing to 2**24, each >= 1, rows in the row-major
        order of ``mu``.
    """
    total = 1 << latent_prec
    d = buckets.dim
    z = (buckets.edges - mu.reshape(-1, d, 1)) / sigma.reshape(-1, d, 1)  # (b, d, n - 1)
    z = z.reshape(-1, buckets.n - 1)  # (rows, n - 1)
    inner = torch.round(torch.special.ndtr(z) * total).to(torch.int64)
    rows = inner.shape[0]
    cdf = torch.cat(
        [
            torch.zeros(rows, 1, dtype=torch.int64),
            inner,
            torch.full((rows, 1), total, dtype=torch.int64),
        ],
        dim=1,
    )  # (rows, n + 1), non-decreasing (ndtr is monotone, and so is rounding)
    return _to_coder_counts(torch.diff(cdf, dim=1), latent_prec)


def bernoulli_counts(probs: Tensor, obs_prec: int) -> np.ndarray:
    """``(numel, 2)`` 24-bit coder counts ``[c0, c1]`` of Bernoulli(p) quantised at ``obs_prec`` bits
    (each value keeps at least one of the 2**obs_prec counts: pixels are pushed, so both must be
    codable)."""
    total = 1 << obs_prec
    c1 = torch.round(probs.reshape(-1) * total).clamp(1, total - 1).to(torch.int64)
    return _to_coder_counts(torch.stack([total - c1, c1], dim=1), obs_prec)


def coder_pmf(counts: np.ndarray) -> np.ndarray:
    """The float table that makes ``constriction``'s categorical model exactly ``counts / 2**24``.

    ``Categorical(perfect=False)`` (constriction's "fast" quantisation, 24-bit precision) assigns
    symbol ``i`` of an ``n``-symbol table ``f`` the left cumulative
    ``floor(sum_{j<i} f_j * (2**24 - n) / sum(f)) + i``. Passing ``f = counts - 1`` for 24-bit
    counts (each >= 1, summing to 2**24; integers below 2**24, so every sum is exact in float32
    and float64) makes the scale exactly 1 and the fixed-point probability of symbol ``i``
    exactly ``counts_i``.
    """
    return counts.astype(np.float64) - 1.0


def information_bits(counts: np.ndarray, symbols: np.ndarray) -> float:
    """``sum_i -log2(counts[i, symbols[i]] / 2**24)``: the ideal code length of the symbols."""
    c = counts[np.arange(symbols.shape[0]), symbols]
    return float(CODER_PRECISION * symbols.shape[0] - np.log2(c.astype(np.float64)).sum())
