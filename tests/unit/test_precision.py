"""Reported figures under CPU bf16 autocast equal their float32 / float64 values.

The fused Bernoulli ``log_prob`` is a product-sum that autocast would run as a bf16 matmul, and
the networks of a trained model feed it logits of |l| ~ 5-10, where bf16 rounding moves log p(x)
by nats. These tests use such logit scales (an untrained decoder's logits near 0 cannot show it).
On the code before this change the trained model below gave L_100 under bf16 autocast 1.76 nats
higher (optimistic) than float32 on average, 3.55 at most; the log_prob test's error was 1.07.
"""

from __future__ import annotations

import time

import pytest
import torch

from vaelab.distributions import BernoulliLikelihood, GaussianEncoder, IndependentBernoulli
from vaelab.evaluation import batch_figures
from vaelab.models import VAE
from vaelab.nn import MLP

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def fused(logits: torch.Tensor) -> IndependentBernoulli:
    return IndependentBernoulli(torch.distributions.Bernoulli(logits=logits), 1)


def test_bernoulli_log_prob_under_bf16_autocast_matches_float64() -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(8, 50, 784, generator=g) * 2 - 1) * 10  # |logits| up to 10
    x = torch.bernoulli(torch.full((50, 784), 0.3), generator=g)
    exact = fused(logits.double()).log_prob(x.double())
    with torch.autocast(**BF16):
        mixed = fused(logits).log_prob(x)
    assert mixed.dtype == torch.float32
    assert float((mixed.double() - exact).abs().max()) < 1e-3


def structured_binary_images(n: int, g: torch.Generator) -> torch.Tensor:
    """Binary 'digits': 8 random prototypes with 0.2% of the pixels flipped, (n, 1, 28, 28)."""
    protos = torch.rand(8, 784, generator=g) < 0.3
    idx = torch.randint(0, 8, (n,), generator=g)
    flips = torch.rand(n, 784, generator=g) < 0.002
    return (protos[idx] ^ flips).float().reshape(n, 1, 28, 28)


@pytest.fixture(scope="module")
def trained_vae() -> tuple[VAE, torch.Tensor]:
    """A VAE trained for ~3 s until its decoder is confident (mean |logit| > 3)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    shape = (1, 28, 28)
    enc = GaussianEncoder(MLP(shape, [64]), 8)
    vae = VAE(enc, BernoulliLikelihood(MLP([8], [64], shape), shape), shape, 8)
    data, test = structured_binary_images(2100, g).split([2000, 100])
    vae.init_from_data(data.mean(0))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for _ in range(300):
        batch = data[torch.randint(0, 2000, (100,), generator=g)]
        loss = vae(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if time.perf_counter() - t0 > 20:
            break
    vae.eval()
    return vae, test


def test_lk_under_bf16_autocast_matches_float32_on_a_trained_model(trained_vae) -> None:
    vae, x = trained_vae
    with torch.no_grad():
        logits = vae.decoder.net(vae.encoder(x).mean)
        assert float(logits.abs().mean()) > 3.0  # trained-model logit scales
        torch.manual_seed(1)
        ref = batch_figures(vae, x, 100, "binary")
        with torch.autocast(**BF16):
            torch.manual_seed(1)  # the same noise: only the arithmetic may differ
            mixed = batch_figures(vae, x, 100, "binary")
            torch.manual_seed(2)
            ll = vae.log_likelihood(x, 100)
        torch.manual_seed(2)
        ll_ref = vae.log_likelihood(x, 100)
    for name in ("nll", "elbo", "rate", "distortion", "bpd"):
        assert mixed[name].dtype == torch.float32
        diff = float((mixed[name] - ref[name]).abs().max())
        assert diff < 0.01, (name, diff)
    assert float((ll - ll_ref).abs().max()) < 0.01  # model.log_likelihood is the evaluator


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_log_prob_and_lk_match_float32(dtype: torch.dtype, trained_vae) -> None:
    g = torch.Generator().manual_seed(0)
    logits = ((torch.rand(8, 50, 784, generator=g) * 2 - 1) * 10).cuda()
    x = torch.bernoulli(torch.full((50, 784), 0.3), generator=g).cuda()
    exact = fused(logits.double()).log_prob(x.double())
    with torch.autocast("cuda", dtype=dtype):
        mixed = fused(logits).log_prob(x)
    assert float((mixed.double() - exact).abs().max()) < 1e-3
    vae, xs = trained_vae
    vae, xs = vae.cuda(), xs.cuda()
    with torch.no_grad():
        torch.manual_seed(1)
        ref = batch_figures(vae, xs, 100, "binary")
        with torch.autocast("cuda", dtype=dtype):
            torch.manual_seed(1)
            got = batch_figures(vae, xs, 100, "binary")
    vae.cpu()
    for name in ("nll", "elbo", "rate", "distortion"):
        assert float((got[name] - ref[name]).abs().max()) < 0.01, name
