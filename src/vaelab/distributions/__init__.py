"""Probability lives here: encoders q(z|x), likelihoods p(x|z), priors p(z).

Networks (``vaelab.nn``) emit parameters; everything here returns ``torch.distributions`` objects.
"""

from vaelab.distributions.encoders import GaussianEncoder
from vaelab.distributions.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    IndependentBernoulli,
    Likelihood,
)
from vaelab.distributions.priors import StandardNormalPrior

__all__ = [
    "BernoulliLikelihood",
    "GaussianEncoder",
    "GaussianLikelihood",
    "IndependentBernoulli",
    "Likelihood",
    "StandardNormalPrior",
]
