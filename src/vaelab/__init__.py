"""vaelab: Lightning + Hydra experiments for likelihood-based deep generative models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaelab import config as _config  # noqa: F401  (registers the OmegaConf resolvers)
from vaelab.models.base import GenerativeModel, Terms

if TYPE_CHECKING:  # pragma: no cover
    from vaelab.runs import LoadedRun, load_run

__all__ = ["GenerativeModel", "LoadedRun", "Terms", "load_run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``vaelab.load_run`` / ``vaelab.LoadedRun``, imported on first use: every ``import
    vaelab.<module>`` runs this file, and ``vaelab.runs`` imports Lightning (seconds)."""
    if name in ("load_run", "LoadedRun"):
        from vaelab import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
