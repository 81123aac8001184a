"""RealNVP models: exact log-likelihood (Jacobian of the whole model, closed forms, normalisation),
sampling, bits/dim, bf16 autocast training, and the bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from vaelab.flows import IdentityTransform, NonFiniteLogDetError
from vaelab.models.base import GenerativeModel, Terms
from vaelab.models.realnvp import FlowModel, RealNVP, RealNVPMLP
from vaelab.units import bits_per_dim

LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall when other jobs share the CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter and running statistic off its (often identity) initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return module


def tiny_realnvp(shape: tuple[int, ...] = (2, 4, 4), **kw: object) -> RealNVP:
    args = dict(
        num_scales=2, couplings_per_scale=2, final_couplings=2, hidden_channels=4, num_blocks=1
    )
    args.update(kw)
    return RealNVP(shape, **args)  # type: ignore[arg-type]


def synthetic_images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Dequantized 8-bit images with structure (smooth blobs), in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    centre = torch.rand(n, 2, generator=g) - 0.5
    r2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    img = torch.exp(-r2 / 0.2)[:, None].expand(n, c, h, w)  # (n, C, H, W)
    pixels = (img * 255).round().to(torch.uint8)
    return (pixels.float() + torch.rand(pixels.shape, generator=g)) / 256


def test_protocol_and_terms() -> None:
    m = tiny_realnvp()
    assert isinstance(m, GenerativeModel) and m.data_shape == (2, 4, 4) and m.num_dims == 32
    x = synthetic_images(6, (2, 4, 4))
    t = m(x)
    assert isinstance(t, Terms) and t.loss.shape == () and t.elbo.shape == (6,)
    assert set(t.terms) == {"log_pz", "logdet"}
    torch.testing.assert_close(t.elbo, t.terms["log_pz"] + t.terms["logdet"])
    # L2 penalty of the paper on gains and scales is part of the loss only
    torch.testing.assert_close(t.loss, -t.elbo.mean() + 5e-5 * m.l2_penalty())
    assert m.l2_penalty() > 0


def test_log_likelihood_is_exact_and_ignores_num_samples() -> None:
    torch.manual_seed(0)
    m = randomize(tiny_realnvp()).eval()
    x = synthetic_images(4, (2, 4, 4))
    ll1 = m.log_likelihood(x)
    torch.testing.assert_close(m.log_likelihood(x, num_samples=100), ll1)
    torch.testing.assert_close(m(x).elbo, ll1)


@pytest.mark.parametrize("kind", ["multiscale", "multiscale_act", "mlp"])
def test_whole_model_logdet_matches_jacobian_float64(kind: str) -> None:
    """log p(y) = log N(z) + log|det dz/dy| with dz/dy from autograd, logit preprocessing included."""
    torch.manual_seed(0)
    if kind == "mlp":
        m = RealNVPMLP((1, 4, 4), num_couplings=4, hidden=8, num_layers=1)
    else:
        m = tiny_realnvp((1, 4, 4), norm="act" if kind.endswith("act") else "batch")
    m = m.double()
    m(synthetic_images(32, (1, 4, 4)).double())  # one training pass: batch-norm stats, ActNorm init
    m = randomize(m, seed=3, scale=0.2).eval()
    x = synthetic_images(3, (1, 4, 4), seed=5).double()
    ll = m.log_likelihood(x)
    assert ll.dtype == torch.float64
    for i in range(2):
        z = m.encode(x[i : i + 1])
        jac = jacobian(lambda v: m.encode(v.reshape(1, 1, 4, 4)).reshape(-1), x[i].reshape(-1))
        _, logabsdet = torch.linalg.slogdet(jac)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        torch.testing.assert_close(ll[i], log_pz + logabsdet, rtol=1e-9, atol=1e-8)
    # and the inverse really inverts the whole model
    torch.testing.assert_close(m.decode(m.encode(x)), x, rtol=1e-9, atol=1e-10)


def test_bpd_against_closed_form_identity_flow() -> None:
    """Identity flow, standard-normal base, no preprocessing: log p(y) = Σ log N(y; 0, 1)."""
    y = torch.tensor([[[[0.0, 0.5], [0.25, 0.75]]]])  # (1, 1, 2, 2), D = 4
    m = FlowModel((1, 2, 2), IdentityTransform(), alpha=None)
    ll = m.log_likelihood(y)
    expected = -0.5 * (0.25 + 0.0625 + 0.5625) - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(ll, torch.tensor([expected]))
    bpd = bits_per_dim(-ll, 4, "dequantized")
    torch.testing.assert_close(bpd, torch.tensor([(-expected + 4 * math.log(256)) / (4 * LN2)]))
    assert bpd.item() == pytest.approx(8.0 + (-expected) / (4 * LN2), rel=1e-6)


def test_bpd_against_closed_form_identity_flow_with_logit() -> None:
    """Identity flow after the logit: log p(y) = Σ [log N(logit p) + log(1-α) - log p - log(1-p)]."""
    a = 0.05
    y = torch.full((1, 1, 2, 2), 0.5)
    m = FlowModel((1, 2, 2), IdentityTransform(), alpha=a)
    p = a + (1 - a) * 0.5
    z = math.log(p / (1 - p))
    per_dim = -0.5 * z * z - 0.5 * math.log(2 * math.pi) + math.log(1 - a) - math.log(p * (1 - p))
    torch.testing.assert_close(m.log_likelihood(y), torch.tensor([4 * per_dim]))
    bpd = bits_per_dim(-m.log_likelihood(y), 4, "dequantized")
    torch.testing.assert_close(bpd, torch.tensor([8.0 - per_dim / LN2]))


def test_density_integrates_to_one_in_2d() -> None:
    """A randomized 2-D RealNVPMLP with the logit: ∫ p(y) dy over its support (-α/(1-α), 1)² = 1."""
    torch.manual_seed(0)
    a = 0.05
    m = RealNVPMLP(
        (1, 1, 2),
        num_couplings=4,
        hidden=16,
        num_layers=2,
        norm="batch",
        alpha=a,
        check_values=False,
    )
    m = randomize(m.double(), seed=7, scale=0.5).eval()
    n = 500
    lo, hi = -a / (1 - a), 1.0
    edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    mid = (edges[1:] + edges[:-1]) / 2
    g1, g2 = torch.meshgrid(mid, mid, indexing="ij")
    y = torch.stack([g1, g2], -1).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        mass = m.log_likelihood(y).exp().sum() * ((hi - lo) / n) ** 2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


def test_sample_shapes_range_temperature_and_modes() -> None:
    torch.manual_seed(0)
    m = tiny_realnvp((3, 4, 4))
    m(synthetic_images(16, (3, 4, 4)))
    running = m.transform.levels[0][1].running_mean.clone()
    m.train()
    s = m.sample(5)
    assert s.shape == (5, 3, 4, 4) and s.min() >= 0 and s.max() <= 1
    assert m.training  # mode restored
    torch.testing.assert_close(m.transform.levels[0][1].running_mean, running)  # stats untouched
    torch.manual_seed(1)
    hot = m.sample(200, temperature=1.0)
    torch.manual_seed(1)
    cold = m.sample(200, temperature=0.1)
    # low temperature pulls every sample towards the mode: much less spread across samples
    assert cold.std(0).mean() < 0.5 * hot.std(0).mean()
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            m.sample(2, temperature=bad)


def test_samples_decode_the_latents() -> None:
    """sample() is decode() of a base draw (before clipping): encode(sample) recovers z."""
    torch.manual_seed(0)
    m = randomize(tiny_realnvp((1, 4, 4)).double(), seed=2, scale=0.1).eval()
    z = torch.randn(3, 16, dtype=torch.float64) * 0.5
    y = m.decode(z)
    torch.testing.assert_close(m.encode(y), z, rtol=1e-8, atol=1e-8)


# -- bad input -------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_saying_which() -> None:
    m = tiny_realnvp()
    with pytest.raises(
        ValueError, match=r"expected images of shape \(B, 2, 4, 4\), got \(3, 2, 4\)"
    ):
        m(torch.rand(3, 2, 4))
    with pytest.raises(
        ValueError, match=r"expected images of shape \(B, 2, 4, 4\), got \(3, 1, 4, 4\)"
    ):
        m.log_likelihood(torch.rand(3, 1, 4, 4))
    x = synthetic_images(3, (2, 4, 4))
    x[1, 0, 2, 2] = 3.0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*max 3\b"):
        m(x)
    x[1, 0, 2, 2] = -0.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*min -0.5\b"):
        m.log_likelihood(x)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*nan"):
        m(torch.full((3, 2, 4, 4), float("nan")))


def test_boundary_values_are_finite() -> None:
    """float32 dequantization can round (255 + u)/256 up to exactly 1.0; 0 is possible too."""
    m = tiny_realnvp()
    x = synthetic_images(3, (2, 4, 4))
    x[0, 0, 0, 0] = 1.0
    x[1, 0, 0, 0] = 0.0
    t = m(x)
    assert torch.isfinite(t.loss) and torch.isfinite(t.elbo).all()


def test_nonfinite_logdet_names_the_coupling() -> None:
    m = tiny_realnvp()
    with torch.no_grad():
        m.transform.levels[1][0].scale.fill_(float("inf"))
    with pytest.raises(
        NonFiniteLogDetError,
        match=r"in RealNVP; first in flow\.transforms\.1\.levels\.1\.transforms\.0: AffineCoupling",
    ):
        m(synthetic_images(4, (2, 4, 4)))


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        RealNVP((1, 28, 28), num_scales=4)  # 28 -> 14 -> 7 -> cannot squeeze again
    with pytest.raises(ValueError, match=r"image data \(C, H, W\)"):
        RealNVP((784,))
    with pytest.raises(ValueError, match="norm must be one of"):
        tiny_realnvp(norm="layer")
    with pytest.raises(ValueError, match="alpha"):
        tiny_realnvp(alpha=1.0)


def test_check_data_refuses_binary() -> None:
    m = RealNVPMLP((1, 4, 4), hidden=8)
    m.check_data("dequantized")
    with pytest.raises(ValueError, match=r"dequantized.*data=mnist"):
        m.check_data("binary")


def test_real_sizes_build() -> None:
    """Smoke test: the paper's CIFAR-10 model and an MNIST model build and run one batch."""
    cifar = RealNVP((3, 32, 32), num_scales=2, hidden_channels=64, num_blocks=8)
    assert 4e6 < sum(p.numel() for p in cifar.parameters()) < 1e7
    assert cifar.latent_shape == (3072,)
    mnist = RealNVP((1, 28, 28), num_scales=3, hidden_channels=8, num_blocks=1)
    assert torch.isfinite(mnist(synthetic_images(4, (1, 28, 28))).loss)


# -- training ----------------------------------------------------------------------------------


def _train(m: FlowModel, x: torch.Tensor, steps: int, bf16: bool) -> list[float]:
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t = m(x)
        assert t.loss.dtype == torch.float32 and t.elbo.dtype == torch.float32
        opt.zero_grad()
        t.loss.backward()
        opt.step()
        losses.append(t.loss.item())
    return losses


@pytest.mark.parametrize("kind", ["realnvp", "realnvp_mlp"])
def test_bf16_autocast_training_is_finite_and_falls(kind: str) -> None:
    torch.manual_seed(0)
    shape = (1, 8, 8)
    if kind == "realnvp":
        m: FlowModel = RealNVP(
            shape,
            num_scales=2,
            couplings_per_scale=1,
            final_couplings=2,
            hidden_channels=8,
            num_blocks=1,
        )
    else:
        m = RealNVPMLP(shape, num_couplings=4, hidden=64)
    net_dtypes = set()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear | torch.nn.Conv2d):
            mod.register_forward_hook(lambda _m, _i, out: net_dtypes.add(out.dtype))
    x = synthetic_images(32, shape)
    losses = _train(m, x, 12, bf16=True)
    assert net_dtypes == {torch.bfloat16}  # the s/t networks really ran in bf16
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 2.0  # nats per image, over 12 steps
    assert losses[-1] < min(losses[:6])
    # evaluation after bf16 training is finite, in float32 and in bf16
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m.log_likelihood(x)).all()
        assert torch.isfinite(m.sample(4)).all()


def test_float32_training_reaches_lower_bpd_than_uniform() -> None:
    """A few dozen steps on structured data beat the uniform density (8 bits/dim)."""
    torch.manual_seed(0)
    shape = (1, 8, 8)
    m = RealNVPMLP(shape, num_couplings=4, hidden=64)
    x = synthetic_images(128, shape)
    _train(m, x, 60, bf16=False)
    m.eval()
    with torch.no_grad():
        bpd = bits_per_dim(-m.log_likelihood(x), m.num_dims, "dequantized").mean()
    assert bpd < 6.0
