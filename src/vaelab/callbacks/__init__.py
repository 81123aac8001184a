"""Lightning callbacks: PNG grids of samples, reconstructions, latent traversals, interpolations
(drawn by ``vaelab.viz``), throughput progress bar, W&B run ids and RNG states in checkpoints."""

from vaelab.callbacks.images import PICTURES, ImageGrids, log_grid

__all__ = ["PICTURES", "ImageGrids", "log_grid"]

# Workflow callbacks (progress bar with throughput; W&B run id in checkpoints; RNG states in
# checkpoints for an exact resume, added to every run by vaelab.train).
from vaelab.callbacks.progress import ThroughputProgressBar
from vaelab.callbacks.resume import ResumeState
from vaelab.callbacks.wandb_resume import WandbResume

__all__ += ["ResumeState", "ThroughputProgressBar", "WandbResume"]
