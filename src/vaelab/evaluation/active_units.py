"""Active units per latent layer: Burda et al.'s ``A_u = Cov_x(E_{q(u|x)}[u]) > 1e-2``.

Works for any model with ``posterior_means(x) -> {layer name: (B, d) means}``: ``VAE`` (one
layer, ``"z"``) and ``HierarchicalVAE`` (``"z1"``, ..., ``"zT"``; see its docstring for how the
means of the higher layers are taken). The variance over the data set is accumulated in float64,
batch by batch (Chan et al.'s pairwise update), so the whole test set never sits in memory. It
is the population variance (divide by N), as ``np.var`` in Burda et al.'s code.

Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, section 5.2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

DEFAULT_THRESHOLD = 1e-2


@runtime_checkable
class HasPosteriorMeans(Protocol):
    """A latent-variable model that reports ``E_q[z | x]`` per layer."""

    def posterior_means(self, x: Tensor) -> dict[str, Tensor]: ...


class RunningVariance:
    """Per-column mean and variance of a stream of ``(B, d)`` batches, accumulated in float64.

    Reference: Chan, Golub & LeVeque (1979), the pairwise update of mean and sum of squares.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None  # (d,) float64
        self.m2: Tensor | None = None  # (d,) float64: sum of squared deviations

    def update(self, batch: Tensor) -> None:
        """Add the rows of ``batch`` (shape ``(B, d)``)."""
        if batch.dim() != 2:
            raise ValueError(
                f"RunningVariance expects (B, d) batches, got shape {tuple(batch.shape)}"
            )
        b = batch.detach().to(torch.float64)
        n_b = b.shape[0]
        if n_b == 0:
            return
        mean_b = b.mean(0)
        m2_b = ((b - mean_b) ** 2).sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"batch width {mean_b.shape[0]} != earlier width {self.mean.shape[0]}")
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / n)
        self.count = n

    def merge(self, count: int, mean: Tensor, m2: Tensor) -> None:
        """Add another stream's ``(count, mean, m2)`` (Chan et al.'s pairwise combination)."""
        if count == 0:
            return
        mean, m2 = mean.to(torch.float64), m2.to(torch.float64)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = int(count), mean.clone(), m2.clone()
            return
        n = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / n)
        self.count = n

    @property
    def variance(self) -> Tensor:
        """``(d,)`` population variance (divide by N) of everything seen so far."""
        if self.m2 is None or self.count == 0:
            raise ValueError("RunningVariance: no data seen")
        return self.m2 / self.count


class ActiveUnitStatistic:
    """Streaming ``Cov_x(E_q[u | x])`` per latent layer, reduced over processes: *the* statistic.

    The LightningModule (``test/active_units/{layer}``), ``unit_variances`` / ``active_units``
    and the picture callback's ranking of latent units (``vaelab.viz.rank_latent_dims``) all use
    this one class. ``update`` takes ``posterior_means(x)``; ``variances(all_gather)`` combines the
    per-process ``(count, mean, m2)`` exactly (Chan et al.), given a function that stacks a
    tensor from every process (``LightningModule.all_gather``); without one it is this process's.
    """

    def __init__(self) -> None:
        self.layers: dict[str, RunningVariance] = {}

    def update(self, means: dict[str, Tensor]) -> None:
        """Add a batch of posterior means ``{layer: (B, ...)}`` (trailing dims flattened)."""
        for name, mu in means.items():
            self.layers.setdefault(name, RunningVariance()).update(mu.reshape(mu.shape[0], -1))

    def __bool__(self) -> bool:
        return bool(self.layers)

    def variances(self, all_gather: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """``{layer: (d,) float64}`` population variances over every image seen (all processes)."""
        out = {}
        for name, rv in self.layers.items():
            if rv.mean is None or rv.m2 is None:
                raise ValueError(f"ActiveUnitStatistic: no data seen for layer {name}")
            if all_gather is None:
                out[name] = rv.variance
                continue
            count = torch.tensor(float(rv.count), dtype=torch.float64, device=rv.mean.device)
            counts, means, m2s = (all_gather(t) for t in (count, rv.mean, rv.m2))
            total = RunningVariance()
            for c, m, q in zip(
                counts.reshape(-1),
                means.reshape(-1, *rv.mean.shape),
                m2s.reshape(-1, *rv.m2.shape),
                strict=True,
            ):
                total.merge(int(c.item()), m, q)
            out[name] = total.variance
        return out

    def counts(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        all_gather: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, int]:
        """Active units per layer: ``Cov_x(E_q[u|x]) > threshold`` (Burda et al.: 1e-2)."""
        return count_active(self.variances(all_gather), threshold)


def _as_tensor(batch: Any) -> Tensor:
    """A batch is a Tensor, or a tuple/list whose first item is one (``(x, y)`` loaders)."""
    if isinstance(batch, tuple | list):
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"expected a Tensor batch (or (x, ...) tuple), got {type(batch).__name__}")
    return batch


@torch.no_grad()
def unit_variances(
    model: HasPosteriorMeans, batches: Iterable[Tensor], max_batches: int | None = None
) -> dict[str, Tensor]:
    """``Cov_x(E_q[u | x])`` for every latent unit u, per layer: ``{name: (d,) float64}``.

    Args:
        model: a model with ``posterior_means(x)`` (``VAE``, ``HierarchicalVAE``). Its training
            mode is left as it is (these models have no dropout or batch norm).
        batches: data batches ``(B, *data_shape)`` (or ``(x, ...)`` tuples); moved to the model's
            device if it has one.
        max_batches: stop after this many batches (None: all).

    Reference: Burda et al. (2015), section 5.2.
    """
    if not isinstance(model, HasPosteriorMeans):
        raise TypeError(
            f"{type(model).__name__} has no posterior_means(x); active units are defined for "
            "latent-variable models (VAE, HierarchicalVAE)"
        )
    device = getattr(model, "device", None)
    stats = ActiveUnitStatistic()
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = _as_tensor(batch)
        if isinstance(device, torch.device):
            x = x.to(device)
        stats.update(model.posterior_means(x))
    if not stats:
        raise ValueError("unit_variances: no batches")
    return stats.variances()


def count_active(
    variances: dict[str, Tensor], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, int]:
    """Number of units per layer whose variance exceeds ``threshold`` (Burda et al.: 1e-2)."""
    return {name: int((v > threshold).sum()) for name, v in variances.items()}


def active_units(
    model: HasPosteriorMeans,
    batches: Iterable[Tensor],
    threshold: float = DEFAULT_THRESHOLD,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Active units per layer, e.g. ``{"z1": 73, "z2": 9}``: ``Cov_x(E_q[u|x]) > threshold``.

    One pass over ``batches``; use ``unit_variances`` + ``count_active`` to keep the variances too.

    Reference: Burda et al. (2015), section 5.2.
    """
    return count_active(unit_variances(model, batches, max_batches=max_batches), threshold)
