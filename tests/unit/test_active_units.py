"""Active units (Burda et al.): synthetic encoders whose varying units we choose."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vaelab.distributions import BernoulliLikelihood, GaussianEncoder
from vaelab.evaluation import RunningVariance, active_units, count_active, unit_variances
from vaelab.models import VAE, HierarchicalVAE
from vaelab.nn import MLP


class Features(nn.Module):
    """Identity features: the encoder's mean is then exactly its head's affine map of x."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.out_features = n

    def forward(self, x: Tensor) -> Tensor:
        return x


def test_running_variance_matches_full_batch_float64() -> None:
    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(1003, 5, generator=g) * torch.tensor([1e-3, 0.1, 1.0, 3.0, 0.0])
    rv = RunningVariance()
    for chunk in torch.split(x, [1, 500, 2, 300, 200]):  # uneven batches
        rv.update(chunk)
    expected = x.double().var(0, unbiased=False)
    torch.testing.assert_close(rv.variance, expected, rtol=1e-9, atol=1e-12)
    assert rv.variance.dtype == torch.float64 and rv.count == 1003


def make_vae(mean_weights: Tensor) -> VAE:
    """A VAE on x in R^D with posterior mean ``mean_weights @ x``: row u sets unit u's spread."""
    d, n = mean_weights.shape
    enc = GaussianEncoder(Features(n), d)
    with torch.no_grad():
        enc.head.weight.zero_()
        enc.head.weight[:d] = mean_weights
        enc.head.weight[d:] = 0.3  # the scales vary with x: they must not count
        enc.head.bias.fill_(0.7)  # a constant offset in the mean must not count either
    dec = BernoulliLikelihood(MLP([d], [4], [n]), [n])
    return VAE(enc, dec, [n], d)


def test_vae_active_units_counts_the_units_that_vary_across_x() -> None:
    n = 4
    x = torch.randn(2000, n, generator=torch.Generator().manual_seed(1))
    x = (x - x.mean(0)) / x.std(0, unbiased=False)  # each column: variance exactly 1
    w = torch.zeros(7, n)
    w[0, 0] = 1.0  # variance 1: active
    w[2, 1] = 0.2  # variance 0.04: active
    w[3, 2] = 0.09  # variance 0.0081: just under 1e-2, inactive
    w[5, 3] = 0.11  # variance 0.0121: just over 1e-2, active
    w[6, 0] = 1e-3  # variance 1e-6: inactive; units 1 and 4 are constant
    model = make_vae(w)
    batches = torch.split(x, 300)
    var = unit_variances(model, batches)
    expected = torch.tensor([1.0, 0.0, 0.04, 0.0081, 0.0, 0.0121, 1e-6], dtype=torch.float64)
    torch.testing.assert_close(var["z"], expected, rtol=1e-4, atol=1e-9)
    assert active_units(model, batches) == {"z": 3}
    assert active_units(model, batches, threshold=1e-3) == {"z": 4}
    assert count_active(var, threshold=0.05) == {"z": 1}
    assert active_units(model, batches, max_batches=1) == {"z": 3}
    # (x, y) tuples from a labelled loader are accepted too
    assert active_units(model, [(b, torch.zeros(len(b))) for b in batches]) == {"z": 3}


def test_hvae_active_units_per_layer() -> None:
    torch.manual_seed(0)
    m = HierarchicalVAE(
        [6], [{"latent_dim": 5, "hidden": [8]}, {"latent_dim": 4, "hidden": [8]}], init="glorot"
    )
    with torch.no_grad():
        m.encoders[0].head.weight[[1, 3]] = 0.0  # z1 units 1 and 3: mean ignores x
        m.encoders[0].head.weight[[0, 2, 4]] *= 5.0
        m.encoders[1].head.weight[[0, 1, 2]] = 0.0  # z2 units 0-2: mean ignores z1
        m.encoders[1].head.weight[3] *= 5.0
    x = (torch.rand(1500, 6, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    var = unit_variances(m, torch.split(x, 256))
    assert set(var) == {"z1", "z2"}
    assert (var["z1"][[1, 3]] == 0).all() and (var["z1"][[0, 2, 4]] > 0.1).all()
    assert (var["z2"][[0, 1, 2]] == 0).all() and var["z2"][3] > 0.1
    assert count_active(var) == {"z1": 3, "z2": 1}
    assert active_units(m, torch.split(x, 256)) == {"z1": 3, "z2": 1}


def test_models_without_posterior_means_refused() -> None:
    with pytest.raises(TypeError, match="has no posterior_means"):
        active_units(nn.Linear(2, 2), [torch.zeros(3, 2)])
    model = make_vae(torch.eye(2))
    with pytest.raises(ValueError, match="no batches"):
        active_units(model, [])
