"""Lightning callbacks: PNG grids of samples, reconstructions, latent traversals, interpolations."""

from vaelab.callbacks.images import (
    PICTURES,
    ImageGrids,
    has_encoder,
    interpolation_grid,
    log_grid,
    rank_latent_dims,
    reconstruction_grid,
    sample_grid,
    traversal_grid,
)

__all__ = [
    "PICTURES",
    "ImageGrids",
    "has_encoder",
    "interpolation_grid",
    "log_grid",
    "rank_latent_dims",
    "reconstruction_grid",
    "sample_grid",
    "traversal_grid",
]

# Workflow callbacks (progress bar with throughput; W&B run id in checkpoints; RNG states in
# checkpoints for an exact resume, added to every run by vaelab.train).
from vaelab.callbacks.progress import ThroughputProgressBar
from vaelab.callbacks.resume import ResumeState
from vaelab.callbacks.wandb_resume import WandbResume

__all__ += ["ResumeState", "ThroughputProgressBar", "WandbResume"]
