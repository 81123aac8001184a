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

Latent-variable models (``VAE``, ``HierarchicalVAE``) need ``encode(x) -> q(z|x)`` and
``decode_mean(z)``; for the hierarchical VAE that is the layer next to the data, ``z_1``. Models
without them (flows such as RealNVP) get samples only: their latent space is the data space, so
traversals and interpolations of single units are not informative, and their reconstructions are
exact by construction.

The grid functions (``sample_grid``, ``reconstruction_grid``, ``traversal_grid``,
``interpolation_grid``) are public, so notebooks draw the same pictures.

Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, section 5.2
(active units).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from vaelab.loggers import log_images

log = logging.getLogger(__name__)

PICTURES = ("samples", "reconstructions", "traversals", "interpolations")
LATENT_PICTURES = ("reconstructions", "traversals", "interpolations")


# -- what a model can draw ---------------------------------------------------------------------
def has_encoder(model: nn.Module) -> bool:
    """True for latent-variable models with ``encode(x) -> Distribution`` and ``decode_mean(z)``.

    Flows have an ``encode`` too, but it returns a tensor and they have no ``decode_mean``.
    """
    return callable(getattr(model, "encode", None)) and callable(
        getattr(model, "decode_mean", None)
    )


def _param_dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to_model(model: nn.Module, x: Tensor) -> Tensor:
    return x.to(device=_device(model), dtype=_param_dtype(model))


def _display(x: Tensor) -> Tensor:
    """Images for a PNG: float32 on the CPU, clipped to [0, 1] (Gaussian means may overshoot)."""
    return x.detach().float().cpu().clamp(0.0, 1.0)


def _decode(model: nn.Module, z: Tensor, image_shape: Sequence[int]) -> Tensor:
    return model.decode_mean(z).reshape(z.shape[0], *image_shape)


# -- ranking latent units ----------------------------------------------------------------------
def rank_latent_dims(means: Tensor) -> tuple[Tensor, Tensor]:
    """Latent dimensions ordered by activity, most active first.

    Activity is Burda et al.'s ``A_u = Cov_x(E_q[u|x])``: the population variance (divide by N)
    over a batch of the posterior means of each unit, computed in float64. Ties keep the lower
    index first.

    Args:
        means: ``(B, D)`` posterior means ``E_q[z|x]`` of ``B`` images.

    Returns:
        ``(order, variances)``: ``order`` is a ``(D,)`` long tensor of dimension indices, most
        active first; ``variances`` the ``(D,)`` float64 activity of each dimension (unsorted).

    Reference: Burda, Grosse & Salakhutdinov (2015), section 5.2.
    """
    if means.dim() != 2 or means.shape[0] < 1:
        raise ValueError(f"expected (B, D) posterior means with B >= 1, got {tuple(means.shape)}")
    variances = means.detach().double().var(0, unbiased=False)  # (D,)
    order = torch.sort(variances, descending=True, stable=True).indices
    return order, variances


def _aggregate_std(q: Any, means: Tensor) -> Tensor:
    """Per-unit std of the aggregate posterior over the batch: ``sqrt(Var_x(mu) + E_x[sigma^2])``."""
    try:
        within = q.variance.float().mean(0)  # (D,)
    except NotImplementedError:
        within = torch.ones_like(means[0])
    return (means.float().var(0, unbiased=False) + within).sqrt()


# -- grids -------------------------------------------------------------------------------------
def sample_grid(
    model: nn.Module,
    num_samples: int = 64,
    nrow: int = 8,
    seed: int | None = 0,
    padding: int = 2,
    **sample_kwargs: Any,
) -> Tensor:
    """A ``(3, H, W)`` grid of ``model.sample(num_samples, **sample_kwargs)``.

    Args:
        model: any ``GenerativeModel``.
        num_samples: number of images.
        nrow: images per row.
        seed: seed of the draw (the global RNG is restored afterwards); None draws from the
            current RNG state.
        padding: pixels between images.
        **sample_kwargs: passed to ``model.sample`` where its signature accepts them (e.g.
            ``use_mean=True`` for VAEs, ``temperature=0.7`` for flows); others are dropped.
    """
    params = inspect.signature(model.sample).parameters
    kwargs = {k: v for k, v in sample_kwargs.items() if k in params and v is not None}
    with _seeded(seed, _device(model)):
        x = model.sample(int(num_samples), **kwargs)  # (n, C, H, W)
    return make_grid(_display(x), nrow=nrow, padding=padding)


def reconstruction_grid(model: nn.Module, x: Tensor, nrow: int = 8, padding: int = 2) -> Tensor:
    """Inputs and reconstructions in alternating rows: ``x[0:nrow]``, their reconstructions, ...

    The reconstruction is the decoder mean at the posterior mean (``model.reconstruct`` when the
    model has one). ``x`` is cut to a multiple of ``nrow`` images (at least one row).

    Args:
        model: a latent-variable model (``has_encoder(model)``).
        x: ``(B, C, H, W)`` images.
        nrow: images per row.
        padding: pixels between images.
    """
    nrow = max(1, min(int(nrow), x.shape[0]))
    n = (x.shape[0] // nrow) * nrow
    x = _to_model(model, x[:n])
    if callable(getattr(model, "reconstruct", None)):
        rec = model.reconstruct(x).reshape(x.shape)
    else:
        rec = _decode(model, model.encode(x).mean, x.shape[1:])
    pairs = torch.stack(  # (rows, 2, nrow, C, H, W): a row of inputs, then its reconstructions
        [x.reshape(-1, nrow, *x.shape[1:]), rec.reshape(-1, nrow, *x.shape[1:])], dim=1
    )
    return make_grid(_display(pairs.reshape(-1, *x.shape[1:])), nrow=nrow, padding=padding)


def traversal_grid(
    model: nn.Module,
    x: Tensor,
    num_dims: int = 10,
    steps: int = 11,
    span: float = 3.0,
    center: str = "image",
    ref_index: int = 0,
    padding: int = 2,
) -> tuple[Tensor, Tensor]:
    """Latent traversals, one row per latent dimension, the most active first.

    Dimensions are ranked by ``rank_latent_dims`` on the posterior means of ``x``. Row ``r``
    starts from ``z0`` (the posterior mean of ``x[ref_index]``, or 0) and sets unit ``d = order[r]``
    to ``z0[d] + t * s_d`` for ``t`` in ``linspace(-span, span, steps)``, where ``s_d`` is the std
    of the aggregate posterior of unit ``d`` over ``x`` (``sqrt(Var_x(mu_d) + E_x[sigma_d^2])``,
    about 1 for a unit that matches its N(0, 1) prior); each point is decoded to its mean.

    Args:
        model: a latent-variable model (``has_encoder(model)``).
        x: ``(B, C, H, W)`` images used to rank the units and to pick the start point; more
            images give a steadier ranking (a few hundred cost one encoder pass).
        num_dims: rows (the top ``num_dims`` units; all units if fewer).
        steps: images per row.
        span: half-width of the traversal in aggregate-posterior standard deviations.
        center: ``"image"`` (posterior mean of ``x[ref_index]``) or ``"zero"``.
        ref_index: which image of ``x`` to start from.
        padding: pixels between images.

    Returns:
        ``(grid, dims)``: the ``(3, H, W)`` grid and the ``(num_dims,)`` unit of each row.

    Reference: Burda, Grosse & Salakhutdinov (2015), section 5.2 (activity ranking).
    """
    if center not in ("image", "zero"):
        raise ValueError(f"center must be 'image' or 'zero', got {center!r}")
    xs = _to_model(model, x)
    q = model.encode(xs)
    mu = q.mean  # (B, D)
    order, _ = rank_latent_dims(mu)
    dims = order[: max(1, min(int(num_dims), mu.shape[1]))].to(mu.device)  # (K,)
    std = _aggregate_std(q, mu).to(mu.dtype)  # (D,)
    z0 = mu[ref_index] if center == "image" else torch.zeros_like(mu[0])  # (D,)
    offsets = torch.linspace(-span, span, int(steps), device=mu.device, dtype=mu.dtype)  # (S,)
    k, s = dims.shape[0], offsets.shape[0]
    z = z0.expand(k, s, -1).clone()  # (K, S, D)
    rows = torch.arange(k, device=mu.device)
    z[rows, :, dims] = z0[dims][:, None] + offsets[None, :] * std[dims][:, None]
    images = _decode(model, z.reshape(k * s, -1), x.shape[1:])  # (K*S, C, H, W)
    return make_grid(_display(images), nrow=s, padding=padding), dims.cpu()


def interpolation_grid(
    model: nn.Module, x: Tensor, num_pairs: int = 8, steps: int = 10, padding: int = 2
) -> Tensor:
    """Interpolations between pairs of images, linear between their posterior means.

    Row ``i`` pairs ``x[2i]`` with ``x[2i + 1]``: the first image, ``steps`` decoded means at
    ``z = (1 - t) mu_a + t mu_b`` for ``t`` in ``linspace(0, 1, steps)``, the second image.

    Args:
        model: a latent-variable model (``has_encoder(model)``).
        x: ``(B, C, H, W)`` images, ``B >= 2``.
        num_pairs: rows (at most ``B // 2``).
        steps: interpolated images per row (endpoints included).
        padding: pixels between images.
    """
    p = min(int(num_pairs), x.shape[0] // 2)
    if p < 1:
        raise ValueError(f"interpolations need at least 2 images, got {x.shape[0]}")
    xs = _to_model(model, x[: 2 * p])
    mu = model.encode(xs).mean  # (2P, D)
    mu_a, mu_b = mu[0::2], mu[1::2]  # (P, D) each
    t = torch.linspace(0.0, 1.0, int(steps), device=mu.device, dtype=mu.dtype)[None, :, None]
    z = (1 - t) * mu_a[:, None] + t * mu_b[:, None]  # (P, S, D)
    shape = x.shape[1:]
    mid = _decode(model, z.reshape(-1, mu.shape[1]), shape).reshape(p, -1, *shape)
    rows = torch.cat([xs[0::2, None], mid, xs[1::2, None]], dim=1)  # (P, S + 2, C, H, W)
    return make_grid(_display(rows.reshape(-1, *shape)), nrow=rows.shape[1], padding=padding)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run under ``torch.manual_seed(seed)`` and restore the RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


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
        pictures: any of ``samples``, ``reconstructions``, ``traversals``, ``interpolations``.
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
