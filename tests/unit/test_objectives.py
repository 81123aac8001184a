"""Objectives and units: analytic KL, beta/warm-up/capacity, the IWAE bound, bits per dim."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from vaelab.objectives import ELBOObjective, iwae_bound, kl_or_estimate
from vaelab.units import bits_per_dim


def test_analytic_kl_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    q = Independent(Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5), 1)
    p = Independent(Normal(torch.zeros(4, 3), torch.ones(4, 3)), 1)
    analytic = kl_or_estimate(q, p)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    # MC standard error is ~0.005 here; a wrong formula is off by far more.
    torch.testing.assert_close(analytic, mc, atol=0.03, rtol=0.0)


def test_kl_falls_back_to_sampled_estimate_when_not_registered() -> None:
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    q = MultivariateNormal(torch.tensor([0.3, -0.2]), cov)
    p = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(q, p)
    z = q.sample((100_000,))
    est = kl_or_estimate(q, p, z)
    exact = torch.distributions.kl_divergence(q, MultivariateNormal(torch.zeros(2), torch.eye(2)))
    assert abs(est.mean().item() - exact.item()) < 0.02


def test_beta_one_is_exactly_the_negative_elbo() -> None:
    d, r = torch.rand(8) * 100, torch.rand(8) * 10
    assert torch.equal(ELBOObjective(beta=1.0)(d, r), (d + r).mean())
    assert torch.allclose(ELBOObjective(beta=4.0)(d, r), (d + 4 * r).mean())


def test_warmup_and_capacity_schedules() -> None:
    d, r = torch.full((2,), 100.0), torch.full((2,), 10.0)
    obj = ELBOObjective(beta=2.0, warmup_steps=100)
    obj.step = 0
    assert obj(d, r).item() == pytest.approx(100.0)
    obj.step = 50
    assert obj(d, r).item() == pytest.approx(100.0 + 1.0 * 10)
    obj.step = 1000
    assert obj(d, r).item() == pytest.approx(100.0 + 2.0 * 10)
    cap = ELBOObjective(capacity_max=25.0, capacity_gamma=1000.0, capacity_steps=100)
    cap.step = 0  # C = 0: gamma * |10 - 0|
    assert cap(d, r).item() == pytest.approx(100.0 + 1000.0 * 10)
    cap.step = 40  # C = 10
    assert cap(d, r).item() == pytest.approx(100.0)
    cap.step = 10_000  # C = 25
    assert cap(d, r).item() == pytest.approx(100.0 + 1000.0 * 15)


def test_objective_refuses_iwae_with_beta() -> None:
    with pytest.raises(ValueError, match="importance-weighted"):
        ELBOObjective(beta=2.0, iwae_samples=5)
    with pytest.raises(ValueError, match="beta"):
        ELBOObjective(beta=-1.0)


def test_iwae_bound_is_log_mean_exp() -> None:
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # (k=2, B=2)
    expected = torch.log(torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(iwae_bound(log_w, 0), expected)


def test_bits_per_dim_closed_forms() -> None:
    # Binary: a uniform Bernoulli(0.5) model has -log p = D ln 2, i.e. exactly 1 bit/dim.
    assert bits_per_dim(torch.tensor(784 * math.log(2)), 784, "binary").item() == pytest.approx(1.0)
    # Pixels: a uniform density on [0, 1) has log p(y) = 0 -> log2(256) = 8 bits/dim.
    assert bits_per_dim(torch.tensor(0.0), 3072, "dequantized").item() == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_dim(torch.tensor(0.0), 10, "other")
