"""The one home of every reported figure: batch figures, active units, standard errors.

- ``likelihood``: the per-image figures of an evaluation batch (``batch_figures``: terms, ``nll``
  from the exact likelihood or ``L_k``, ``bpd``; ``term_figures``, shared with the training rows),
  in float32 under any autocast. ``L_k`` itself lives next to the objectives
  (``vaelab.objectives.importance_weighted_bound``), data kinds and bits per dimension in
  ``vaelab.units``.
- ``active_units``: Burda et al.'s ``Cov_x(E_q[u|x])`` per latent layer, streaming, float64,
  reduced over processes.
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
from vaelab.evaluation.likelihood import batch_figures, term_figures
from vaelab.evaluation.stats import MeanWithError, format_with_error, mean_and_standard_error

__all__ = [
    "ActiveUnitStatistic",
    "HasPosteriorMeans",
    "MeanWithError",
    "RunningVariance",
    "active_units",
    "batch_figures",
    "count_active",
    "format_with_error",
    "mean_and_standard_error",
    "term_figures",
    "unit_variances",
]
