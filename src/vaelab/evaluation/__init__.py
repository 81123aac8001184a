"""Evaluation of trained models: active units per latent layer (and, from the spine, NLL)."""

from vaelab.evaluation.active_units import (
    HasPosteriorMeans,
    RunningVariance,
    active_units,
    count_active,
    unit_variances,
)

__all__ = [
    "HasPosteriorMeans",
    "RunningVariance",
    "active_units",
    "count_active",
    "unit_variances",
]
