"""Discretised latents and the fixed-point models handed to the entropy coder.

Every continuous latent dimension is cut into ``2**prior_prec`` buckets of equal mass under the
standard normal, and a latent is represented by its bucket's centre (the normal's quantile at the
bucket's middle probability). Gaussians over a latent (the posterior ``q(z_t|.)`` and the
conditional prior ``p(z_t|z_{t+1})``) are coded on those buckets as integer counts summing to
``2**latent_prec``; Bernoulli pixels as counts summing to ``2**obs_prec``. Every bucket and both
pixel values keep at least one count, so every symbol stays codable.

The counts are this module's model: ``coder_pmf`` hands them to ``constriction``'s 24-bit
categorical model so that its fixed-point probabilities are *exactly* ``count / 2**prec`` (see
there), so the code length of a stream is computable from the counts alone (a test checks it).

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
    """Equal-mass buckets of N(0, 1): ``2**prior_prec`` of them, their edges and centres.

    Attributes:
        n: number of buckets.
        edges: ``(n - 1,)`` float64 interior edges ``Phi^-1(k / n)``, k = 1..n-1.
        centres: ``(n,)`` float64 centres ``Phi^-1((k + 1/2) / n)``.
    """

    def __init__(self, prior_prec: int) -> None:
        self.prior_prec = int(prior_prec)
        self.n = 1 << self.prior_prec
        k = torch.arange(self.n + 1, dtype=torch.float64)
        self.edges = torch.special.ndtri(k[1:-1] / self.n)  # (n - 1,)
        self.centres = torch.special.ndtri((k[:-1] + 0.5) / self.n)  # (n,)

    def values(self, index: np.ndarray | Tensor) -> Tensor:
        """Bucket centres for integer bucket indices of any shape (float64)."""
        return self.centres[torch.as_tensor(np.asarray(index), dtype=torch.long)]


def gaussian_counts(mu: Tensor, sigma: Tensor, buckets: Buckets, latent_prec: int) -> np.ndarray:
    """Integer counts of ``N(mu, sigma^2)`` on the buckets, per dimension, summing to 2**latent_prec.

    ``cdf_int[k] = round(Phi((e_k - mu) / sigma) * (2**latent_prec - n)) + k`` at the bucket edges
    ``e_0 = -inf < e_1 < ... < e_n = +inf``; the counts are its differences, so each is at least 1.

    Args:
        mu, sigma: ``(..., d)`` float64.

    Returns:
        ``(prod(...) * d, n)`` int64 counts, rows in the row-major order of ``mu``.
    """
    n = buckets.n
    scale = (1 << latent_prec) - n
    z = (buckets.edges - mu.reshape(-1, 1)) / sigma.reshape(-1, 1)  # (rows, n - 1)
    inner = torch.round(torch.special.ndtr(z) * scale).to(torch.int64)
    rows = inner.shape[0]
    cdf = torch.cat(
        [
            torch.zeros(rows, 1, dtype=torch.int64),
            inner + torch.arange(1, n, dtype=torch.int64),
            torch.full((rows, 1), 1 << latent_prec, dtype=torch.int64),
        ],
        dim=1,
    )  # (rows, n + 1), non-decreasing by construction, so the differences are >= 1
    return torch.diff(cdf, dim=1).numpy()


def bernoulli_counts(probs: Tensor, obs_prec: int) -> np.ndarray:
    """``(numel, 2)`` int64 counts ``[c0, c1]`` of Bernoulli(p) summing to 2**obs_prec, each >= 1."""
    total = 1 << obs_prec
    c1 = torch.round(probs.reshape(-1) * total).clamp(1, total - 1).to(torch.int64)
    return torch.stack([total - c1, c1], dim=1).numpy()


def coder_pmf(counts: np.ndarray, prec: int) -> np.ndarray:
    """The float table that makes ``constriction``'s categorical model exactly ``counts / 2**prec``.

    ``Categorical(perfect=False)`` (constriction's "fast" quantisation, 24-bit precision) assigns
    symbol ``i`` of an ``n``-symbol table ``f`` the left cumulative
    ``floor(sum_{j<i} f_j * (2**24 - n) / sum(f)) + i``. Passing ``f = counts * 2**(24 - prec) - 1``
    (integers below 2**24, so every sum is exact in float32 and float64) makes the scale exactly
    1 and the fixed-point probability of symbol ``i`` exactly ``counts_i * 2**(24 - prec)``.
    """
    return (counts.astype(np.float64) * float(1 << (CODER_PRECISION - prec))) - 1.0


def information_bits(counts: np.ndarray, symbols: np.ndarray, prec: int) -> float:
    """``sum_i -log2(counts[i, symbols[i]] / 2**prec)``: the ideal code length of the symbols."""
    c = counts[np.arange(symbols.shape[0]), symbols]
    return float(prec * symbols.shape[0] - np.log2(c.astype(np.float64)).sum())
