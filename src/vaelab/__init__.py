"""vaelab: Lightning + Hydra experiments for likelihood-based deep generative models."""

from vaelab import config as _config  # noqa: F401  (registers the OmegaConf resolvers)
from vaelab.models.base import GenerativeModel, Terms

__all__ = ["GenerativeModel", "Terms"]
__version__ = "0.1.0"
