"""The training hot path gives bit for bit what plain ``torch.distributions`` gives.

The models' speed work (fused Bernoulli log-likelihood under autograd, the KL against N(0, I)) must
not change a number: losses and gradients are compared with ``torch.equal`` against the same
networks composed from torch's own ``Independent(Normal)``, ``Independent(Bernoulli)`` and
``kl_divergence``.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.distributions import (
    BernoulliLikelihood,
    GaussianEncoder,
    IndependentBernoulli,
    StandardNormalPrior,
)
from vaelab.models import VAE, HierarchicalVAE
from vaelab.nn import MLP


def _normal(mu: torch.Tensor, sigma: torch.Tensor) -> Independent:
    return Independent(Normal(mu, sigma), 1)


def _std_normal(shape: tuple[int, ...], d: int) -> Independent:
    return Independent(Normal(torch.zeros(*shape, d), torch.ones(*shape, d)), 1)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params))


def _assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(u, v), (i, (u - v).abs().max().item())


def test_bernoulli_log_prob_under_autograd_is_torchs_bitwise() -> None:
    logits = torch.randn(3, 5, 1, 4, 4, requires_grad=True)  # (k, B, C, H, W)
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.3))  # broadcasts against (k, B, ...)
    ours = IndependentBernoulli(Bernoulli(logits=logits, validate_args=False), 3).log_prob(x)
    ref = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    assert torch.equal(ours, ref)
    _assert_bitwise(
        list(torch.autograd.grad(ours.sum(), logits)), list(torch.autograd.grad(ref.sum(), logits))
    )


def test_kl_against_the_standard_normal_prior_is_torchs_bitwise() -> None:
    mu = torch.randn(7, 6, requires_grad=True)
    sigma = torch.rand(7, 6).add(0.1).requires_grad_()
    q = _normal(mu, sigma)
    ours = kl_divergence(q, StandardNormalPrior(6)((7,)))
    ref = kl_divergence(q, _std_normal((7,), 6))
    assert torch.equal(ours, ref)
    _assert_bitwise(
        list(torch.autograd.grad(ours.sum(), (mu, sigma))),
        list(torch.autograd.grad(ref.sum(), (mu, sigma))),
    )


def _vae() -> VAE:
    return VAE(
        GaussianEncoder(MLP([1, 4, 4], [8, 8]), 3),
        BernoulliLikelihood(MLP([3], [8, 8], [1, 4, 4]), [1, 4, 4]),
        [1, 4, 4],
        3,
    )


def test_vae_loss_and_gradients_equal_plain_torch_distributions_bitwise() -> None:
    model = _vae()
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    torch.manual_seed(1)
    ours = model(x).loss
    torch.manual_seed(1)
    mu, sigma = model.encoder.params(x)
    q = _normal(mu, sigma)
    z = q.rsample()
    px = Independent(Bernoulli(logits=model.decoder.net(z)), 3)
    ref = (-px.log_prob(x) + kl_divergence(q, _std_normal((6,), 3))).mean()
    assert torch.equal(ours, ref)
    _assert_bitwise(_grads(model, ours), _grads(model, ref))


def test_hvae_loss_and_gradients_equal_plain_torch_distributions_bitwise() -> None:
    layers = [{"latent_dim": 4, "hidden": [8, 8]}, {"latent_dim": 2, "hidden": [6, 6]}]
    model = HierarchicalVAE([1, 4, 4], layers)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    torch.manual_seed(1)
    ours = model(x).loss
    torch.manual_seed(1)
    q1 = _normal(*model.encoders[0].params(x))
    z1 = q1.rsample()
    q2 = _normal(*model.encoders[1].params(z1))
    z2 = q2.rsample()
    p1 = _normal(*model.conditional_priors[0].params(z2))
    px = Independent(Bernoulli(logits=model.decoder.net(z1)), 3)
    rate1 = q1.log_prob(z1) - p1.log_prob(z1)
    rate2 = kl_divergence(q2, _std_normal((6,), 2))
    distortion = -px.log_prob(x)
    ref = (distortion + torch.stack([rate1, rate2]).sum(0)).mean()
    assert torch.equal(ours, ref)
    _assert_bitwise(_grads(model, ours), _grads(model, ref))


def test_iwae_loss_and_gradients_equal_plain_torch_distributions_bitwise() -> None:
    from vaelab.objectives import ELBOObjective

    model = _vae()
    model.objective = ELBOObjective(iwae_samples=4)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    torch.manual_seed(1)
    ours = model(x).loss
    torch.manual_seed(1)
    q = _normal(*model.encoder.params(x))
    z = q.rsample((4,))
    log_px = Independent(Bernoulli(logits=model.decoder.net(z)), 3).log_prob(x)
    log_w = log_px + _std_normal((4, 6), 3).log_prob(z) - q.log_prob(z)
    ref = -(torch.logsumexp(log_w, 0) - math.log(4)).mean()
    assert torch.equal(ours, ref)
    _assert_bitwise(_grads(model, ours), _grads(model, ref))


def test_standard_normal_log_prob_is_torchs_bitwise() -> None:
    z = torch.randn(3, 5, 6, requires_grad=True)
    ours = StandardNormalPrior(6).log_prob(z)
    ref = _std_normal((3, 5), 6).log_prob(z)
    assert torch.equal(ours, ref)
    _assert_bitwise(
        list(torch.autograd.grad(ours.sum(), z)), list(torch.autograd.grad(ref.sum(), z))
    )


def test_the_prior_is_built_once_per_batch_shape_and_follows_its_buffers() -> None:
    prior = StandardNormalPrior(3)
    a = prior((4,))
    assert prior((4,)) is a and prior((5,)) is not a and tuple(prior((5,)).batch_shape) == (5,)
    prior.to(torch.float64)  # new buffers: a new distribution on them
    assert prior((5,)).mean.dtype == torch.float64
