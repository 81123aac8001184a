"""Image grids of a generative model: samples, reconstructions, latent traversals, interpolations.

The functions notebooks and the picture callback (``vaelab.callbacks.ImageGrids``) draw with;
each returns a ``(3, H, W)`` grid in ``[0, 1]`` (``torchvision.utils.make_grid``).

- ``sample_grid``: ``model.sample(n)`` (decoder means for latent models, ``use_mean=True``), drawn
  under a fixed seed (the caller's RNG is left untouched).
- ``reconstruction_grid``: images and their reconstructions in alternating rows.
- ``traversal_grid``: one row per latent unit, most active first (``rank_latent_dims``: Burda et
  al.'s activity ``Cov_x(E_q[u|x])``, the statistic of ``vaelab.evaluation.active_units``),
  moving one unit over ``±span`` standard deviations of the aggregate posterior.
- ``interpolation_grid``: one row per pair of images, decoded along the line between their
  posterior means.

Latent-variable models need ``encode(x) -> q(z|x)`` and ``decode_mean(z)`` (``has_encoder``); for
the hierarchical VAE that is the layer next to the data, ``z_1``.

Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, section 5.2
(active units).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from vaelab.evaluation.active_units import RunningVariance


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
    stat = RunningVariance()  # the active-unit statistic of vaelab.evaluation
    stat.update(means)
    variances = stat.variance  # (D,) float64
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


# -- diffusion models --------------------------------------------------------------------------
def is_diffusion(model: nn.Module) -> bool:
    """True for models with an ancestral chain (``sample_latents(n, steps, frames)``) and a
    noise schedule (``snr(t)``): ``vaelab.models.VDM``."""
    return callable(getattr(model, "sample_latents", None)) and callable(
        getattr(model, "snr", None)
    )


def denoising_grid(
    model: nn.Module,
    num_chains: int = 8,
    frames: int = 10,
    seed: int | None = 0,
    padding: int = 2,
) -> Tensor:
    """Ancestral chains from ``t = 1`` (left) to ``t = 0`` (right), two rows per chain: ``z_t``
    (shown as ``(z_t + 1) / 2``) and the network's denoised ``x_hat(z_t)``, at ``frames`` times.

    Args:
        model: a diffusion model (``is_diffusion(model)``).
        num_chains: chains (pairs of rows).
        frames: columns, evenly spaced steps of the sampler.
        seed: seed of the draw (the global RNG is restored afterwards).
        padding: pixels between images.
    """
    with _seeded(seed, _device(model)):
        _, trajectory = model.sample_latents(int(num_chains), frames=int(frames))
    rows = []
    for i in range(int(num_chains)):
        rows.append(torch.stack([(z[i] + 1) / 2 for _, z, _ in trajectory]))
        rows.append(torch.stack([(x[i] + 1) / 2 for _, _, x in trajectory]))
    images = torch.cat(rows)  # (2 * chains * frames, C, H, W)
    return make_grid(_display(images), nrow=len(trajectory), padding=padding)


def snr_curve(model: nn.Module, points: int = 201) -> Tensor:
    """A ``(3, H, W)`` picture of the schedule's ``log SNR(t) = -gamma(t)`` against ``t``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.linspace(0.0, 1.0, points, device=_device(model), dtype=_param_dtype(model))
    log_snr = torch.log(model.snr(t)).detach().float().cpu()
    fig, ax = plt.subplots(figsize=(4.0, 3.0), dpi=100)
    try:
        ax.plot(t.float().cpu().numpy(), log_snr.numpy())
        ax.set_xlabel("t")
        ax.set_ylabel("log SNR(t) = -gamma(t)")
        ax.set_title(f"log SNR from {log_snr[0]:.2f} to {log_snr[-1]:.2f}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.canvas.draw()
        rgba = torch.frombuffer(bytearray(fig.canvas.buffer_rgba()), dtype=torch.uint8)
        w, h = fig.canvas.get_width_height()
        image = rgba.view(h, w, 4)[..., :3].permute(2, 0, 1).float() / 255.0
    finally:
        plt.close(fig)
    return image


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


__all__ = [
    "denoising_grid",
    "has_encoder",
    "interpolation_grid",
    "is_diffusion",
    "rank_latent_dims",
    "reconstruction_grid",
    "sample_grid",
    "snr_curve",
    "traversal_grid",
]
