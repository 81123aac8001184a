"""Pictures of a model while it trains: sample grids, reconstructions, latent traversals, interpolations.

``ImageGrids`` is a Lightning callback that writes PNG grids (``torchvision.utils.make_grid`` /
``save_image``) into ``<run dir>/images/`` every ``every_n_epochs`` epochs and at the end of fit
(optionally at the end of test), named ``{picture}_{tag}.png`` with ``tag`` one of
``epoch003`` (the 0-based epoch, as in checkpoint names), ``final`` or ``test``; and sends each grid
to every image-capable logger (W&B, TensorBoard) under ``images/{picture}``.

The pictures:

- ``samples``: ``model.sample(n)`` (decoder means for latent models, ``use_mean=True``), drawn
  under a fixed seed so grids are comparable across epochs (the training RNG is left untouched).
- ``reconstructions``: a fixed batch of test images and their reconstructions, in alternating
  rows (row 1 inputs, row 2 their reconstructions, ...).
- ``traversals``: one row per latent dimension, the most active first (ranked by Burda et al.'s
  activity ``Cov_x(E_q[u|x])`` over a fixed batch of test images); each row moves one unit over
  ``±span`` standard deviations of the aggregate posterior around the posterior mean of a fixed
  test image (or around 0) and decodes the mean.
- ``interpolations``: one row per pair of test images: the first image, the decoded means along
  the straight line between the two posterior means, the second image.
- ``denoising`` and ``snr`` (diffusion models, ``vaelab.viz.is_diffusion``): ancestral chains
  from ``t = 1`` to ``0``, ``z_t`` above the denoised ``x_hat(z_t)``; the learned ``log SNR(t)``.

Latent-variable models (``VAE``, ``HierarchicalVAE``) need ``encode(x) -> q(z|x)`` and
``decode_mean(z)``; for the hierarchical VAE that is the layer next to the data, ``z_1``. Models
without them (flows such as RealNVP) get samples only: their latent space is the data space, so
traversals and interpolations of single units are not informative, and their reconstructions are
exact by construction.

The grid functions (``sample_grid``, ``reconstruction_grid``, ``traversal_grid``,
``interpolation_grid``, ``rank_latent_dims``) live in ``vaelab.viz``, apart from this callback, so
notebooks draw the same pictures.

Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, section 5.2
(active units).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torchvision.utils import save_image

from vaelab.loggers import log_images
from vaelab.viz import (
    denoising_grid,
    has_encoder,
    interpolation_grid,
    is_diffusion,
    reconstruction_grid,
    sample_grid,
    snr_curve,
    traversal_grid,
)

log = logging.getLogger(__name__)

PICTURES = ("samples", "reconstructions", "traversals", "interpolations", "denoising", "snr")
LATENT_PICTURES = ("reconstructions", "traversals", "interpolations")


# -- loggers -----------------------------------------------------------------------------------
def log_grid(trainer: L.Trainer, key: str, grid: Tensor, step: int) -> int:
    """Send a ``(3, H, W)`` grid in ``[0, 1]`` to every image-capable logger (W&B, TensorBoard).

    A thin wrapper of ``vaelab.loggers.log_images``; CSV and other loggers are skipped. Returns
    how many loggers took it.
    """
    return log_images(trainer, key, [grid], step)


# -- the callback ------------------------------------------------------------------------------
class ImageGrids(L.Callback):
    """Write PNG grids of samples, reconstructions, traversals and interpolations while training.

    Every ``every_n_epochs`` epochs (at the end of epochs 0, n, 2n, ...) and at the end of fit
    (``*_final.png``: a copy of the last epoch's files when they show the same weights) and of
    test (with ``at_test_end``), on global rank zero only, with the LightningModule in
    eval mode and under ``torch.no_grad()`` (its mode is restored). Costs a handful of forward
    passes: one decoder pass per picture and one encoder pass over ``num_images`` test images.

    The test images are fixed for the run (the first ``num_images`` of ``split``, from
    ``trainer.datamodule.batch(split, n)``, or the first validation batch without such a
    datamodule) and samples are drawn under ``seed``, so grids are comparable across epochs.
    Models without ``encode``/``decode_mean`` (flows) get samples only.

    Args:
        dirpath: folder of the PNGs; default ``<trainer.default_root_dir>/images``.
        every_n_epochs: period in epochs; 0 writes only at the end of fit.
        pictures: any of ``samples``, ``reconstructions``, ``traversals``, ``interpolations``,
            ``denoising``, ``snr`` (the last two: diffusion models only).
        num_samples: images in the sample grid.
        nrow: images per row in the sample and reconstruction grids.
        num_reconstructions: inputs in the reconstruction grid (cut to a multiple of ``nrow``).
        traversal_dims: rows of the traversal grid (the most active units).
        traversal_steps: images per traversal row.
        traversal_span: half-width of a traversal, in aggregate-posterior standard deviations.
        traversal_center: ``image`` (posterior mean of the first test image) or ``zero``.
        num_interpolations: rows (pairs of test images) of the interpolation grid.
        interpolation_steps: decoded images between (and including) the two endpoints.
        num_images: fixed test images encoded to rank units (and the source of the others).
        split: data split of the fixed images (``test`` or ``val``).
        seed: seed of the sample draw.
        use_mean: show decoder means rather than sampled pixels (latent models).
        temperature: sampling temperature for models that take one (flows); None: their default.
        at_fit_end: write ``*_final.png`` when fit ends.
        at_test_end: write ``*_test.png`` when test ends (the tested checkpoint's weights).
        log_to_loggers: also send each grid to the image-capable loggers.
        padding: pixels between images.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_epochs: int = 5,
        pictures: Sequence[str] = PICTURES,
        num_samples: int = 64,
        nrow: int = 8,
        num_reconstructions: int = 32,
        traversal_dims: int = 10,
        traversal_steps: int = 11,
        traversal_span: float = 3.0,
        traversal_center: str = "image",
        num_interpolations: int = 8,
        interpolation_steps: int = 10,
        num_images: int = 256,
        split: str = "test",
        seed: int = 0,
        use_mean: bool = True,
        temperature: float | None = None,
        at_fit_end: bool = True,
        at_test_end: bool = False,
        log_to_loggers: bool = True,
        padding: int = 2,
    ) -> None:
        super().__init__()
        pictures = tuple(str(p) for p in pictures)
        unknown = sorted(set(pictures) - set(PICTURES))
        if unknown:
            raise ValueError(f"unknown pictures {unknown}; choose from {list(PICTURES)}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if traversal_center not in ("image", "zero"):
            raise ValueError(
                f"traversal_center must be 'image' or 'zero', got {traversal_center!r}"
            )
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_epochs = int(every_n_epochs)
        self.pictures = pictures
        self.num_samples = int(num_samples)
        self.nrow = int(nrow)
        self.num_reconstructions = int(num_reconstructions)
        self.traversal_dims = int(traversal_dims)
        self.traversal_steps = int(traversal_steps)
        self.traversal_span = float(traversal_span)
        self.traversal_center = traversal_center
        self.num_interpolations = int(num_interpolations)
        self.interpolation_steps = int(interpolation_steps)
        self.num_images = max(
            int(num_images), self.num_reconstructions, 2 * self.num_interpolations
        )
        self.split = split
        self.seed = int(seed)
        self.use_mean = bool(use_mean)
        self.temperature = temperature
        self.at_fit_end = bool(at_fit_end)
        self.at_test_end = bool(at_test_end)
        self.log_to_loggers = bool(log_to_loggers)
        self.padding = int(padding)
        self._images: Tensor | None = None  # (N, C, H, W) on the CPU, fixed for the run
        self._said_samples_only = False
        self._epoch_write: tuple[int, list[Path]] | None = None  # last epoch's (step, PNGs)
        self.written: list[Path] = []  # every PNG written, in order

    # -- Lightning hooks -----------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs > 0 and trainer.current_epoch % self.every_n_epochs == 0:
            paths = self.write(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")
            self._epoch_write = (trainer.global_step, paths)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_write = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.at_fit_end:
            return
        last = self._epoch_write
        if last is not None and last[0] == trainer.global_step and trainer.is_global_zero:
            # The last epoch's pictures show these very weights: copy them, do not draw again
            # (a flow's 64 samples cost seconds on a CPU) nor log the same grids twice.
            for path in last[1]:
                final = path.with_name(path.name.rsplit("_", 1)[0] + "_final.png")
                shutil.copyfile(path, final)
                self.written.append(final)
            return
        self.write(trainer, pl_module, "final")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_test_end:
            self.write(trainer, pl_module, "test")

    # -- drawing -------------------------------------------------------------------------------
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> list[Path]:
        """Draw every picture, save ``{picture}_{tag}.png`` and log it; returns the paths.

        Does nothing (returns ``[]``) on processes other than global rank zero.
        """
        if not trainer.is_global_zero:
            return []
        model = getattr(pl_module, "model", pl_module)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                grids = self.draw(model, trainer)
        finally:
            pl_module.train(was_training)
        folder = self.dirpath or Path(trainer.default_root_dir) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, grid in grids.items():
            path = folder / f"{name}_{tag}.png"
            save_image(grid, path)
            paths.append(path)
            if self.log_to_loggers:
                log_grid(trainer, f"images/{name}", grid, trainer.global_step)
        self.written.extend(paths)
        return paths

    def draw(self, model: nn.Module, trainer: L.Trainer | None = None) -> dict[str, Tensor]:
        """``{picture: (3, H, W) grid}`` for the configured pictures this model can draw."""
        grids: dict[str, Tensor] = {}
        if "samples" in self.pictures:
            grids["samples"] = sample_grid(
                model,
                self.num_samples,
                self.nrow,
                seed=self.seed,
                padding=self.padding,
                use_mean=self.use_mean,
                temperature=self.temperature,
            )
        if is_diffusion(model):
            if "denoising" in self.pictures:
                grids["denoising"] = denoising_grid(model, seed=self.seed, padding=self.padding)
            if "snr" in self.pictures:
                grids["snr"] = snr_curve(model)
        wanted = [p for p in self.pictures if p in LATENT_PICTURES]
        if not wanted:
            return grids
        if not has_encoder(model):
            if not self._said_samples_only:
                log.info("%s has no encode/decode_mean: writing samples only", type(model).__name__)
                self._said_samples_only = True
            return grids
        x = self.fixed_images(trainer)
        if x is None:
            return grids
        if "reconstructions" in wanted:
            grids["reconstructions"] = reconstruction_grid(
                model, x[: self.num_reconstructions], self.nrow, padding=self.padding
            )
        if "traversals" in wanted:
            grids["traversals"], dims = traversal_grid(
                model,
                x,
                num_dims=self.traversal_dims,
                steps=self.traversal_steps,
                span=self.traversal_span,
                center=self.traversal_center,
                padding=self.padding,
            )
            log.debug("traversal rows (most active first): %s", dims.tolist())
        if "interpolations" in wanted and x.shape[0] >= 2:
            grids["interpolations"] = interpolation_grid(
                model,
                x,
                num_pairs=self.num_interpolations,
                steps=self.interpolation_steps,
                padding=self.padding,
            )
        return grids

    def fixed_images(self, trainer: L.Trainer | None) -> Tensor | None:
        """The first ``num_images`` images of ``split``, read once and kept on the CPU."""
        if self._images is None and trainer is not None:
            self._images = self._read_images(trainer)
        return self._images

    def _read_images(self, trainer: L.Trainer) -> Tensor | None:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and callable(getattr(dm, "batch", None)):
            return dm.batch(self.split, self.num_images).detach().cpu()
        loaders = trainer.val_dataloaders or trainer.test_dataloaders
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            log.info("no test images available: writing samples only")
            return None
        batch = next(iter(loaders))
        if isinstance(batch, list | tuple):
            batch = batch[0]
        return batch[: self.num_images].detach().cpu()


__all__ = ["LATENT_PICTURES", "PICTURES", "ImageGrids", "log_grid"]
