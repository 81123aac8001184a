"""The one home of every reported figure: L_k, active units, unit conversions, standard errors.

- ``likelihood``: the chunked importance-weighted bound ``L_k`` and the per-image figures of an
  evaluation batch (``batch_figures``; ``term_figures``, shared with the training rows), in float32 under any autocast.
- ``active_units``: Burda et al.'s ``Cov_x(E_q[u|x])`` per latent layer, streaming, float64,
  reduced over processes.
- ``units``: data kinds (``binary``, ``dequantized``, ``unit``) and bits per dimension.
- ``stats``: means over images with their standard errors, exact under DDP.
"""

from vaelab.evaluation.active_units import (
    ActiveUnitStatistic,
    HasPosteriorMeans,
    RunningVariance,
    active_units,
    count_active,
    unit_variances,
)
from vaelab.evaluation.likelihood import (
    batch_figures,
    chunk_rows,
    full_precision,
    importance_weighted_bound,
    sample_chunks,
    term_figures,
)
from vaelab.evaluation.stats import MeanWithError, format_with_error, mean_and_standard_error
from vaelab.evaluation.units import DATA_KINDS, bits_per_dim, check_kind, has_bits_per_dim

__all__ = [
    "DATA_KINDS",
    "ActiveUnitStatistic",
    "HasPosteriorMeans",
    "MeanWithError",
    "RunningVariance",
    "active_units",
    "batch_figures",
    "bits_per_dim",
    "check_kind",
    "chunk_rows",
    "count_active",
    "format_with_error",
    "full_precision",
    "has_bits_per_dim",
    "importance_weighted_bound",
    "mean_and_standard_error",
    "sample_chunks",
    "term_figures",
    "unit_variances",
]
