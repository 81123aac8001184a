"""The variational diffusion model: its ELBO estimates, decoders, schedules, units and samples.

Reference: Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelab.distributions.diffusion import candidate_values, z0_decoder
from vaelab.models import VDM
from vaelab.models.schedules import LearnedSchedule, LinearSchedule
from vaelab.nn import NoiseMLP, UNet
from vaelab.units import bits_per_dim

SHAPE = (1, 2, 2)


def _perturb(module: torch.nn.Module, scale: float = 1.0, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def tiny_vdm(
    schedule=None, timesteps=None, decoder="binary", perturb_net: bool = True, seed: int = 0
) -> VDM:
    """A float64 VDM on 1x2x2 images whose network is not the zero map (its output layer starts
    at zero: perturbed here), with a nonlinear learned schedule unless one is given."""
    torch.manual_seed(seed)
    net = NoiseMLP(SHAPE, widths=[16], emb_dim=8)
    if perturb_net:
        _perturb(net, 0.5, seed)
    if schedule is None:
        schedule = LearnedSchedule(-8.0, 4.0, learn_endpoints=True, hidden=8)
        _perturb(schedule.l2, 2.0, seed + 1)
        _perturb(schedule.l3, 2.0, seed + 2)
    return VDM(net, SHAPE, schedule, decoder=decoder, timesteps=timesteps).double()


def binary_batch(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) > 0.5).double()


def simpson(f, n: int = 4000) -> torch.Tensor:
    """Composite Simpson's rule of ``f(t) -> (N, B)`` over ``t in [0, 1]`` with ``n`` intervals."""
    t = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    w = torch.ones(n + 1, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return (w[:, None] * f(t)).sum(0) / (3.0 * n)


def diffusion_at(model: VDM, x: torch.Tensor, eps: torch.Tensor):
    """``t -> (N, B)``: the model's one-t diffusion term at every ``t`` for each example."""

    def f(t: torch.Tensor) -> torch.Tensor:
        n, b = t.shape[0], x.shape[0]
        rep = (n,) + (1,) * (x.dim() - 1)
        out = model.diffusion_loss(x.repeat(rep), t.repeat_interleave(b), eps.repeat(rep))
        return out.view(n, b)

    return f


def x_form_integrand(model: VDM, x: torch.Tensor, eps: torch.Tensor):
    """``-(1/2) SNR'(t) ||x - x_hat(z_t; t)||^2``, SNR' by autograd: the paper's eq. 17 written
    in the x-parametrisation, independently of the model's eps-form and its hand derivative."""

    def f(t: torch.Tensor) -> torch.Tensor:
        out = []
        for ti in t:
            with torch.enable_grad():
                tt = ti.clone().requires_grad_(True)
                snr = torch.exp(-model.schedule(tt))
                (dsnr,) = torch.autograd.grad(snr, tt)
            with torch.no_grad():
                gamma = model.schedule(ti).expand(x.shape[0])
                a, s = model.alpha_sigma(gamma)
                a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
                z = a * x + s * eps
                x_hat = (z - s * model.eps_hat(z, gamma)) / a
                out.append(-0.5 * dsnr * (x - x_hat).pow(2).flatten(1).sum(1))
        return torch.stack(out)

    return f


# -- the diffusion term ------------------------------------------------------------------------
def test_continuous_diffusion_term_is_unbiased_for_the_integral() -> None:
    """Mean over many uniform t of the one-t estimate = quadrature of eq. 17 (x-form) within s.e."""
    model = tiny_vdm()
    x = model.scale(binary_batch())
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    with torch.no_grad():
        exact = simpson(x_form_integrand(model, x, eps), 4000)  # (B,)
        eps_form = simpson(diffusion_at(model, x, eps), 4000)
        torch.testing.assert_close(eps_form, exact, rtol=1e-6, atol=0.0)
        n = 20_000
        t = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        draws = diffusion_at(model, x, eps)(t)  # (n, B) iid draws
        mean, se = draws.mean(0), draws.std(0) / math.sqrt(n)
        assert (se > 0).all() and ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)
        # The low-discrepancy sampler: each t_b marginally uniform, so unbiased too.
        ld = torch.stack([model.low_discrepancy_times(64, x.device) for _ in range(200)])
        draws_ld = diffusion_at(model, x, eps)(ld.flatten().double())
        assert ((draws_ld.mean(0) - exact).abs() < 4 * se).all()


def test_untrained_network_gives_the_closed_form_through_forward() -> None:
    """eps_hat = 0: E[diffusion] = (gamma_1 - gamma_0) D / 2 (T = inf), or
    (D / 2) sum_i expm1(gamma(t_i) - gamma(s_i)) (T steps): forward's batch mean within s.e."""
    for T in (None, 3):
        model = tiny_vdm(timesteps=T, perturb_net=False)
        g0, g1 = (float(g) for g in model.schedule.endpoints())
        D = math.prod(SHAPE)
        if T is None:
            expected = 0.5 * (g1 - g0) * D
        else:
            gs = model.schedule(torch.arange(T + 1, dtype=torch.float64) / T).detach()
            expected = 0.5 * D * float(torch.expm1(gs[1:] - gs[:-1]).sum())
        torch.manual_seed(3)
        with torch.no_grad():
            vals = torch.cat([model(binary_batch(50, i)).terms["diffusion"] for i in range(40)])
        se = float(vals.std()) / math.sqrt(vals.numel())
        assert abs(float(vals.mean()) - expected) < 4 * se, (T, float(vals.mean()), expected)


def test_discrete_time_loss_approaches_the_continuous_one() -> None:
    """With the same noise, the exact mean over i of the T-step term -> the continuous integral;
    T = 1 is far from it (the test can tell them apart)."""
    model = tiny_vdm()
    x = model.scale(binary_batch())
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    with torch.no_grad():
        cont = simpson(diffusion_at(model, x, eps), 4000)
        gaps = {}
        for T in (1, 10, 100, 5000):
            model.timesteps = T
            t = (torch.arange(T, dtype=torch.float64) + 0.5) / T  # one t inside each step
            gaps[T] = float(((diffusion_at(model, x, eps)(t).mean(0) - cont) / cont).abs().max())
        model.timesteps = None
    assert gaps[5000] < 2e-3, gaps  # the gap shrinks like 1 / T
    assert gaps[1] > 10 * gaps[10] > 100 * gaps[100] > 1000 * gaps[5000], gaps


def test_continuous_elbo_is_invariant_to_the_schedule_interior() -> None:
    """Same endpoints, a linear and a very nonlinear schedule: the same continuous-time ELBO
    (prior, reconstruction and the integral), but not the same T = 2 discrete-time one."""
    lin = tiny_vdm(schedule=LinearSchedule(-8.0, 4.0, learn_endpoints=False))
    curved = tiny_vdm(schedule=LearnedSchedule(-8.0, 4.0, learn_endpoints=False, hidden=8))
    _perturb(curved.schedule.l2, 3.0, 5)
    _perturb(curved.schedule.l3, 3.0, 6)
    curved.net.load_state_dict(lin.net.state_dict())
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    assert (curved.schedule(t) - lin.schedule(t)).abs().max() > 1.0  # the interiors differ
    x = lin.scale(binary_batch())
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    with torch.no_grad():
        a = simpson(diffusion_at(lin, x, eps), 4000)
        b = simpson(diffusion_at(curved, x, eps), 4000)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=0.0)
        torch.testing.assert_close(curved.prior_loss(x), lin.prior_loss(x))
        k = binary_batch()
        torch.testing.assert_close(
            curved.reconstruction_loss(k, x, eps), lin.reconstruction_loss(k, x, eps)
        )
        lin.timesteps = curved.timesteps = 2
        mid = torch.tensor([0.25, 0.75], dtype=torch.float64)
        d_lin = diffusion_at(lin, x, eps)(mid).mean(0)
        d_cur = diffusion_at(curved, x, eps)(mid).mean(0)
        assert ((d_lin - d_cur).abs() / d_lin > 0.05).any()


# -- schedules ---------------------------------------------------------------------------------
def test_learned_schedule_is_monotone_with_exact_endpoints_and_derivative() -> None:
    s = LearnedSchedule(-13.3, 5.0, hidden=32).double()
    _perturb(s, 1.0, 7)
    t = torch.linspace(0, 1, 201, dtype=torch.float64, requires_grad=True)
    g, dg = s.with_derivative(t)
    (auto,) = torch.autograd.grad(g.sum(), t)
    torch.testing.assert_close(dg, auto)
    assert (g[1:] - g[:-1] > 0).all() and (dg > 0).all()
    g0, g1 = s.endpoints()
    torch.testing.assert_close(g[0], g0)
    torch.testing.assert_close(g[-1], g1)
    assert float(g1) > float(g0)


# -- the decoder -------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder,values", [("binary", 2), ("discretized", 256)])
def test_decoder_is_a_distribution_proportional_to_the_gaussian(decoder: str, values: int) -> None:
    g = torch.Generator().manual_seed(0)
    a0, s0 = torch.tensor(0.999), torch.tensor(0.02)
    z0 = torch.randn(5, 1, 1, 1, generator=g) * 0.7  # five single-pixel examples
    px = z0_decoder(z0, a0, s0, decoder)
    ks = torch.arange(values)
    logp = torch.stack(
        [
            px.log_prob(
                torch.full((5, 1, 1, 1), int(k)).to(torch.float32 if values == 2 else k.dtype)
            )
            for k in ks
        ]
    )  # (K, 5)
    torch.testing.assert_close(logp.exp().sum(0), torch.ones(5), rtol=1e-5, atol=1e-5)
    c = candidate_values(decoder).double()
    gauss = torch.distributions.Normal(a0.double() * c[:, None], s0.double()).log_prob(
        z0.double().flatten()[None, :]
    )  # (K, 5)
    ratio = logp.double() - gauss
    finite = logp > -50  # compare where float32 probabilities are meaningful
    spread = torch.where(finite, ratio, torch.nan)
    assert float(np.nanmax((spread - spread.nanmean(0)).abs().numpy())) < 1e-3


def test_binary_decoder_log_prob_is_a_probability_at_tiny_sigma() -> None:
    """At sigma_0 ~ 1e-3 the logits are ~1e6: -log p stays >= 0 (a cancelling sum gave < 0)."""
    a0, s0 = torch.sigmoid(torch.tensor(13.3)).sqrt(), torch.sigmoid(torch.tensor(-13.3)).sqrt()
    k = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    z0 = a0 * (2 * k - 1) + s0 * torch.randn_like(k)
    with torch.no_grad():
        nll = -z0_decoder(z0, a0, s0, "binary").log_prob(k)
    assert (nll >= 0).all() and float(nll.max()) < 1e-3


# -- units, data kinds, shapes, samples ---------------------------------------------------------
def test_terms_shapes_and_units_binary_and_discretized() -> None:
    x = binary_batch(4)
    m = tiny_vdm()
    with torch.no_grad():
        out = m(x)
    assert set(out.terms) == {"prior", "reconstruction", "diffusion"}
    for v in out.items().values():
        assert v.shape == (4,)
    neg = out.terms["prior"] + out.terms["reconstruction"] + out.terms["diffusion"]
    torch.testing.assert_close(out.elbo, -neg)
    torch.testing.assert_close(out.loss, neg.mean())
    # 8-bit data as the DataModule delivers it, y = (k + u) / 256: elbo bounds log p(y), whose
    # bits/dim in pixel space is -ELBO(k) / (D ln 2).
    d = tiny_vdm(decoder="discretized")
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (4, *SHAPE), generator=g).double()
    y = (k + torch.rand(k.shape, generator=g, dtype=k.dtype)) / 256
    torch.testing.assert_close(d.to_values(y), k)
    torch.manual_seed(0)
    with torch.no_grad():
        out = d(y)
    neg = sum(out.terms.values())
    D = math.prod(SHAPE)
    torch.testing.assert_close(out.elbo, D * math.log(256) - neg)
    torch.testing.assert_close(
        bits_per_dim(-out.elbo, D, "dequantized"), neg / (D * math.log(2)), rtol=1e-9, atol=1e-9
    )


def test_log_likelihood_is_the_elbo_averaged() -> None:
    m = tiny_vdm()
    x = binary_batch(2)
    torch.manual_seed(0)
    with torch.no_grad():
        many = torch.stack([m(x.repeat(500, 1, 1, 1)).elbo.view(500, 2) for _ in range(4)])
        ll = m.log_likelihood(x.repeat(200, 1, 1, 1), num_samples=10).view(200, 2)
    a, sa = many.flatten(0, 1).mean(0), many.flatten(0, 1).std(0) / math.sqrt(2000)
    b, sb = ll.mean(0), ll.std(0) / math.sqrt(200)
    assert ((a - b).abs() < 4 * torch.sqrt(sa**2 + sb**2)).all(), (a, b)
    assert (sb * math.sqrt(200) < sa * math.sqrt(2000)).all()  # 10 stratified draws: less noise
    with pytest.raises(ValueError, match="num_samples"):
        m.log_likelihood(x, 0)


def test_data_kinds_accept_exactly_the_pairs() -> None:
    binary, disc = tiny_vdm(), tiny_vdm(decoder="discretized")
    binary.check_data("binary")
    disc.check_data("dequantized")
    for model, kind in (
        (binary, "dequantized"),
        (binary, "unit"),
        (disc, "binary"),
        (disc, "unit"),
    ):
        with pytest.raises(ValueError, match=r"use .*model\.decoder=|data\.dequantize=true"):
            model.check_data(kind)
    with pytest.raises(ValueError, match="binary data"):
        binary(torch.full((2, *SHAPE), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="timesteps"):
        VDM(NoiseMLP(SHAPE, [4]), SHAPE, timesteps=-1)
    with pytest.raises(ValueError, match="decoder"):
        VDM(NoiseMLP(SHAPE, [4]), SHAPE, decoder="gaussian")


@pytest.mark.parametrize("decoder", ["binary", "discretized"])
def test_samples_are_finite_and_in_data_units(decoder: str) -> None:
    m = VDM(UNet((1, 8, 8), widths=[8, 8]), (1, 8, 8), decoder=decoder, timesteps=None)
    _perturb(m.net, 0.1)
    torch.manual_seed(0)
    s = m.sample(6, steps=20)
    mean = m.sample(6, use_mean=True, steps=20)
    assert s.shape == mean.shape == (6, 1, 8, 8)
    assert torch.isfinite(s).all() and torch.isfinite(mean).all()
    assert (s >= 0).all() and (s <= 1).all() and (mean >= 0).all() and (mean <= 1).all()
    if decoder == "binary":
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    else:
        assert torch.allclose((s * 256 - 0.5).round(), s * 256 - 0.5, atol=1e-4)
    z, traj = m.sample_latents(3, steps=10, frames=4)
    assert z.shape == (3, 1, 8, 8) and len(traj) == 4 and traj[0][0] == 1.0


def test_unet_shapes_and_zero_start() -> None:
    for shape, widths in (((1, 28, 28), [8, 16, 16]), ((3, 32, 32), [8, 16])):
        net = UNet(shape, widths=widths)
        z = torch.randn(2, *shape)
        out = net(z, torch.rand(2))
        assert out.shape == z.shape and float(out.abs().max()) == 0.0
    with pytest.raises(ValueError, match="widths"):
        UNet((1, 28, 28), widths=[8, 8, 8, 8])


def test_denoising_grid_and_snr_curve() -> None:
    from vaelab.viz import denoising_grid, is_diffusion, snr_curve

    m = VDM(NoiseMLP((1, 8, 8), [8]), (1, 8, 8), sample_steps=12)
    assert is_diffusion(m)
    grid = denoising_grid(m, num_chains=3, frames=5, padding=2)
    assert grid.shape == (3, 2 + 6 * 10, 2 + 5 * 10)  # 6 rows (z_t, x_hat) x 5 frames of 8 + 2
    assert torch.isfinite(grid).all()
    img = snr_curve(m)
    assert img.shape[0] == 3 and img.shape[1] > 100 and 0 <= float(img.min()) < float(img.max())
