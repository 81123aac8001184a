"""The VAE against a linear-Gaussian model whose log p(x) is known in closed form, and L_k in k."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.distributions import Distribution, MultivariateNormal

from vaelab.distributions import (
    BernoulliLikelihood,
    GaussianEncoder,
    GaussianLikelihood,
    IndependentBernoulli,
    StandardNormalPrior,
)
from vaelab.models import VAE
from vaelab.nn import MLP

D_X, D_Z, SIGMA = 5, 2, 0.5


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I): p(x) = N(b, W W^T + s^2 I); exact posterior."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.W = torch.randn(D_X, D_Z, generator=g, dtype=torch.float64)
        self.b = torch.randn(D_X, generator=g, dtype=torch.float64)

    def marginal(self) -> MultivariateNormal:
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(D_X, dtype=torch.float64)
        return MultivariateNormal(self.b, cov)

    def posterior(self, x: torch.Tensor, cov_scale: float = 1.0) -> MultivariateNormal:
        prec = torch.eye(D_Z, dtype=torch.float64) + self.W.T @ self.W / SIGMA**2
        cov = torch.linalg.inv(prec)
        mean = (x - self.b) @ self.W @ cov / SIGMA**2  # (B, D_z); cov symmetric
        return MultivariateNormal(mean, cov * cov_scale)


class PosteriorEncoder(nn.Module):
    def __init__(self, lg: LinearGaussian, cov_scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.lg, self.cov_scale, self.shift = lg, cov_scale, shift
        self.latent_dim = D_Z

    def forward(self, x: torch.Tensor) -> Distribution:
        q = self.lg.posterior(x, self.cov_scale)
        return MultivariateNormal(q.loc + self.shift, q.covariance_matrix)


def linear_gaussian_vae(lg: LinearGaussian, **enc_kwargs) -> VAE:
    net = nn.Linear(D_Z, D_X).double()
    with torch.no_grad():
        net.weight.copy_(lg.W)
        net.bias.copy_(lg.b)
    decoder = GaussianLikelihood(net, (D_X,), std=SIGMA, learn_std=False, min_std=0.0).double()
    return VAE(PosteriorEncoder(lg, **enc_kwargs), decoder, (D_X,), D_Z).double()


def test_elbo_with_exact_posterior_equals_log_marginal() -> None:
    lg = LinearGaussian()
    x = lg.marginal().sample((16,))
    vae = linear_gaussian_vae(lg)
    exact = lg.marginal().log_prob(x)
    # Exact posterior: log p(x, z) - log q(z|x) = log p(x) for every z, so the bound is tight
    # (to the float64 precision of the posterior's matrix inverse).
    torch.testing.assert_close(vae(x).elbo, exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(vae.log_likelihood(x, 7), exact, atol=1e-6, rtol=0)


def test_iwae_bound_converges_to_log_marginal_from_below() -> None:
    torch.manual_seed(0)
    lg = LinearGaussian()
    x = lg.marginal().sample((64,))
    vae = linear_gaussian_vae(lg, cov_scale=3.0, shift=0.3)  # a deliberately poor q
    exact = lg.marginal().log_prob(x).mean().item()
    bounds = {k: vae.log_likelihood(x, k).mean().item() for k in (1, 10, 100, 5000)}
    # L_k is a bound in expectation; one estimate can overshoot by Monte-Carlo noise (~1e-3 here).
    assert bounds[1] < bounds[10] < bounds[100] < bounds[5000] <= exact + 0.01
    assert exact - bounds[1] > 0.3  # the gap is real...
    assert exact - bounds[5000] < 0.02  # ...and L_5000 closes it


def small_vae(latent: int = 4) -> VAE:
    enc = GaussianEncoder(MLP([1, 4, 4], [16]), latent)
    dec = BernoulliLikelihood(MLP([latent], [16], [1, 4, 4]), [1, 4, 4])
    return VAE(enc, dec, [1, 4, 4], latent)


def test_lk_is_non_decreasing_in_k_on_average() -> None:
    torch.manual_seed(0)
    vae = small_vae()
    x = torch.bernoulli(torch.full((256, 1, 4, 4), 0.3))
    with torch.no_grad():
        means = [vae.log_likelihood(x, k).mean().item() for k in (1, 4, 16, 64)]
    assert all(a < b for a, b in itertools.pairwise(means)), means


def test_chunking_does_not_change_lk() -> None:
    # With the exact posterior every importance weight equals p(x), so any chunking gives log p(x).
    lg = LinearGaussian()
    x = lg.marginal().sample((10,))
    vae = linear_gaussian_vae(lg)
    vae.eval_chunk_rows = 30  # 3 samples x 10 images per chunk: 17 chunks for k = 50
    torch.testing.assert_close(
        vae.log_likelihood(x, 50), lg.marginal().log_prob(x), atol=1e-6, rtol=0
    )


def test_fused_bernoulli_log_prob_matches_torch() -> None:
    logits = torch.randn(7, 3, 1, 4, 4) * 3
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    fused = IndependentBernoulli(torch.distributions.Bernoulli(logits=logits), 3).log_prob(x)
    ref = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 3).log_prob(
        x
    )
    torch.testing.assert_close(fused, ref)


def test_iwae_objective_trains_lk() -> None:
    vae = small_vae()
    vae.objective.iwae_samples = 5
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.5))
    terms = vae(x)
    assert "iwae_bound_k5" in terms.terms
    torch.testing.assert_close(terms.loss, -terms.terms["iwae_bound_k5"].mean())
    # L_5 >= ELBO on average (up to sampling noise; here with a fixed seed).
    assert terms.terms["iwae_bound_k5"].mean() >= terms.elbo.mean() - 1.0


def test_bernoulli_refuses_non_binary_data() -> None:
    vae = small_vae()
    with pytest.raises(ValueError, match="binary data"):
        vae(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="data=binarized_mnist"):
        vae.check_data("dequantized")
    vae.check_data("binary")


def test_model_sizes_must_agree() -> None:
    enc = GaussianEncoder(MLP([1, 4, 4], [16]), 3)
    dec = BernoulliLikelihood(MLP([4], [16], [1, 4, 4]), [1, 4, 4])
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(enc, dec, [1, 4, 4], 4)


def test_sample_shapes_and_prior_device_safety() -> None:
    vae = small_vae()
    assert vae.sample(3).shape == (3, 1, 4, 4)
    assert set(vae.sample(3).unique().tolist()) <= {0.0, 1.0}
    m = vae.sample(3, use_mean=True)
    assert ((m > 0) & (m < 1)).all()
    assert isinstance(vae.prior, StandardNormalPrior)


def test_chunk_rows_default_depends_on_the_device() -> None:
    from vaelab.objectives import CPU_CHUNK_ROWS, CUDA_CHUNK_ROWS, chunk_rows

    assert chunk_rows(None, torch.device("cpu")) == CPU_CHUNK_ROWS
    assert chunk_rows(None, torch.device("cuda", 0)) == CUDA_CHUNK_ROWS
    assert chunk_rows(64, torch.device("cpu")) == 64  # a configured value always wins
    # Under glibc's 32 MiB mmap ceiling for 784-pixel float32 rows (see the comment in objectives.py).
    assert CPU_CHUNK_ROWS * 784 * 4 < 32 * 2**20
