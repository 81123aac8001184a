"""Bit-Swap coding of a discrete-time VDM (vaelab.compression.diffusion_chain): the chain's
conditionals are the model's, the code round-trips exactly, and its rate is the discretised bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("constriction")

from vaelab.compression import CoderSettings, NotCompressibleError, decode, encode
from vaelab.compression.diffusion_chain import DiffusionChain
from vaelab.models import VDM
from vaelab.models.schedules import LearnedSchedule
from vaelab.nn import NoiseMLP

SHAPE = (1, 4, 4)


def tiny(T: int | None = 3) -> VDM:
    torch.manual_seed(0)
    m = VDM(
        NoiseMLP(SHAPE, [16]), SHAPE, LearnedSchedule(-4.0, 4.0, hidden=4), timesteps=T,
        prediction="binary_posterior",
    )  # fmt: skip
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def test_chain_conditionals_are_the_models() -> None:
    m = tiny(3)
    chain = DiffusionChain(m)
    assert chain.num_layers == 4 and chain.latent_dims == (16,) * 4
    x = (torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    # q(z_0 | x) composed with q(z_1/3 | z_0) is q(z_1/3 | x): means and variances compose
    mu0, s0 = chain.posterior(0, x)
    mu1, s1 = chain.posterior(1, mu0)
    a, s = m.double().alpha_sigma(m.schedule(torch.tensor(1 / 3, dtype=torch.float64)))
    torch.testing.assert_close(mu1, a * (2 * x.flatten(1) - 1))
    a0 = m.alpha_sigma(m.schedule(torch.tensor(0.0, dtype=torch.float64)))[0]
    torch.testing.assert_close(s1**2 + (a / a0) ** 2 * s0**2, (s**2).expand_as(s1))
    # the likelihood is the model's decoder
    z0 = mu0 + s0 * torch.randn_like(mu0)
    probs = chain.likelihood_probs(z0)
    logp = (
        torch.distributions.Bernoulli(probs=probs.clamp(1e-12, 1 - 1e-12))
        .log_prob(x)
        .sum((1, 2, 3))
    )
    g0, _ = m.schedule.endpoints()
    a0, sg0 = m.alpha_sigma(g0)
    from vaelab.distributions.diffusion import z0_decoder

    ref = z0_decoder(z0.view(5, *SHAPE), a0, sg0, "binary").log_prob(x)
    torch.testing.assert_close(logp, ref, rtol=1e-6, atol=1e-6)


def test_bitswap_round_trip_is_exact_and_its_rate_is_the_discretised_bound() -> None:
    m = tiny(3)
    chain = DiffusionChain(m)
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(40, *SHAPE, generator=g) > 0.5).to(torch.uint8)
    s = CoderSettings(block_size=20, prior_prec=8, latent_prec=16)
    enc = encode(chain, x.numpy(), s)
    out = decode(
        chain, enc.payload, enc.num_images, enc.settings, enc.initial_words, enc.stripped_words,
        enc.buckets_sha256,
    )  # fmt: skip
    assert np.array_equal(out, x.numpy())
    rate = enc.net_bits / 40  # bits per image actually added to the stream
    with torch.no_grad():
        torch.manual_seed(3)
        neg_elbo = float(-m.double().log_likelihood(x.double(), 200).mean()) / math.log(2)
    # The code's cost is the -ELBO of the discretised model (2^8 buckets a dimension), not the
    # continuous one's: on this random 16-pixel model 54 bits against 79. A wrong posterior (the
    # bits taken back not matching the prior's) costs far more than a factor 2.
    assert enc.net_bits == pytest.approx(enc.push_bits - enc.pop_bits, abs=64)
    assert 0.5 * neg_elbo < rate < 2.0 * neg_elbo, (rate, neg_elbo)


def test_refuses_continuous_time_and_8bit_models() -> None:
    with pytest.raises(NotCompressibleError, match="timesteps"):
        DiffusionChain(tiny(None))
    m = VDM(NoiseMLP(SHAPE, [4]), SHAPE, decoder="discretized", timesteps=2)
    with pytest.raises(NotCompressibleError, match="decoder=binary"):
        DiffusionChain(m)
