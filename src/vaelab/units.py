"""Data kinds and unit conversions: what the numbers a model reports are measured in.

The vocabulary every layer may import (data, models, objectives, evaluation, lit): it imports
nothing of vaelab. ``LN2`` and ``bits_per_dim`` are written here once.

Data kinds (``DataInfo.kind``, ``GenerativeModel.check_data``):

- ``binary``: values in {0, 1} (binarized MNIST). A log-likelihood is a log-probability, in nats
  per image; ``bpd = nll / (D ln 2)``.
- ``dequantized``: 8-bit images as ``y = (x + u) / 256``, ``u ~ U[0, 1)``. A continuous density on
  ``y`` bounds the discrete log-likelihood of the 8-bit ``x``; in pixel space
  ``bpd = (nll + D ln 256) / (D ln 2)`` (PAPERS.md, Units).
- ``unit``: 8-bit images as ``x / 255`` in ``[0, 1]``, no noise. A density on these values is not
  a bound on anything discrete, so bits/dim is not defined for it (``bits_per_dim`` refuses).

Anything else is an error, never a default.
"""

from __future__ import annotations

import math

from torch import Tensor

#: ln 2: nats per bit.
LN2 = math.log(2.0)
#: ln 256: the log-Jacobian per sub-pixel from a density on ``[0, 1)`` back to 8-bit pixel units.
LN256 = math.log(256.0)
DATA_KINDS = ("binary", "dequantized", "unit")


def check_kind(data_kind: object) -> str:
    """``data_kind`` if it is one of ``DATA_KINDS``; else a ``ValueError`` naming them."""
    if data_kind not in DATA_KINDS:
        hint = (
            " ('pixels' was split into 'dequantized', (x + u) / 256, and 'unit', x / 255)"
            if data_kind == "pixels"
            else ""
        )
        raise ValueError(
            f"unknown data kind {data_kind!r}{hint}; the kinds are {', '.join(DATA_KINDS)}"
        )
    return str(data_kind)


def has_bits_per_dim(data_kind: str) -> bool:
    """Whether bits/dim in pixel space is defined for data of this kind."""
    return check_kind(data_kind) != "unit"


def bits_per_dim(nll: Tensor, num_dims: int, data_kind: str) -> Tensor:
    """Convert ``-log p(x)`` in nats per example to bits per dimension in pixel space.

    Binary data: ``bpd = nll / (D ln 2)``. Dequantized 8-bit images, a density on
    ``y = (x + u) / 256``: ``bpd = (nll + D ln 256) / (D ln 2)``; the ``D ln 256`` term is the
    log-Jacobian that takes the density on ``[0, 1)`` back to pixel units.

    Args:
        nll: ``-log p(x)`` in nats, any shape.
        num_dims: D, the number of sub-pixels per example.
        data_kind: ``binary`` or ``dequantized`` (``unit`` data has no bits/dim).

    Raises:
        ValueError: for ``unit`` data (not defined) or an unknown kind.
    """
    kind = check_kind(data_kind)
    if kind == "binary":
        return nll / (num_dims * LN2)
    if kind == "dequantized":
        return (nll + num_dims * LN256) / (num_dims * LN2)
    raise ValueError(
        "bits/dim is not defined for 'unit' data (x / 255 without dequantization): a density on "
        "those values bounds no discrete likelihood. Use data.dequantize=true."
    )


__all__ = ["DATA_KINDS", "LN2", "LN256", "bits_per_dim", "check_kind", "has_bits_per_dim"]
