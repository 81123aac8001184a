"""HierarchicalVAE: T = 1 is the VAE; a linear-Gaussian chain with known log p(x); IWAE; errors."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from vaelab.distributions import BernoulliLikelihood, GaussianEncoder, GaussianLikelihood
from vaelab.models import VAE, HierarchicalVAE
from vaelab.nn import MLP, num_parameters
from vaelab.objectives import ELBOObjective

SHAPE = (1, 4, 4)
TWO_LAYERS = [{"latent_dim": 6, "hidden": [16, 12]}, {"latent_dim": 3, "hidden": [8]}]


def binary_batch(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) < 0.4).float()


# -- T = 1 is the VAE ---------------------------------------------------------------------------
def vae_pair(**objective: float) -> tuple[HierarchicalVAE, VAE]:
    """An HVAE with T = 1 and a VAE with the same architecture and the same weights."""
    torch.manual_seed(0)
    hvae = HierarchicalVAE(
        SHAPE,
        [{"latent_dim": 3, "hidden": [12, 8]}],
        init="glorot",
        objective=ELBOObjective(**objective),
        eval_chunk_rows=16,
    )
    vae = VAE(
        GaussianEncoder(MLP(SHAPE, [12, 8]), 3),
        BernoulliLikelihood(MLP([3], [8, 12], SHAPE), SHAPE),
        SHAPE,
        3,
        objective=ELBOObjective(**objective),
        eval_chunk_rows=16,
    )
    state = {k.replace("encoders.0.", "encoder."): v for k, v in hvae.state_dict().items()}
    vae.load_state_dict(state, strict=True)  # every parameter has its counterpart
    return hvae, vae


@pytest.mark.parametrize(
    "objective",
    [{}, {"beta": 4.0, "warmup_steps": 10}, {"capacity_max": 5.0, "capacity_steps": 10}],
    ids=["elbo", "beta-warmup", "capacity"],
)
def test_one_layer_equals_vae(objective: dict) -> None:
    hvae, vae = vae_pair(**objective)
    x = binary_batch(8)
    hvae.set_training_step(3)
    vae.set_training_step(3)
    torch.manual_seed(1)
    th = hvae(x)
    torch.manual_seed(1)
    tv = vae(x)
    assert torch.equal(th.loss, tv.loss)
    assert torch.equal(th.elbo, tv.elbo)
    assert torch.equal(th.terms["distortion"], tv.terms["distortion"])
    assert torch.equal(th.terms["rate"], tv.terms["rate"])
    assert torch.equal(th.terms["rate/z1"], tv.terms["rate"])
    assert set(th.terms) == {"distortion", "rate", "rate/z1"}


def test_one_layer_equals_vae_iwae_loglik_and_samples() -> None:
    hvae, vae = vae_pair(iwae_samples=4)
    x = binary_batch(4)
    torch.manual_seed(2)
    th = hvae(x)
    torch.manual_seed(2)
    tv = vae(x)
    torch.testing.assert_close(th.loss, tv.loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(th.terms["iwae_bound_k4"], tv.terms["iwae_bound_k4"])
    torch.testing.assert_close(th.terms["distortion"], tv.terms["distortion"])
    torch.testing.assert_close(th.terms["rate/z1"], tv.terms["rate"])
    # chunked L_k: eval_chunk_rows=16 with B=4 gives chunks of 4 samples, the same on both sides
    torch.manual_seed(3)
    lh = hvae.log_likelihood(x, 11)
    torch.manual_seed(3)
    lv = vae.log_likelihood(x, 11)
    torch.testing.assert_close(lh, lv, rtol=1e-6, atol=1e-5)
    torch.manual_seed(4)
    sh = hvae.sample(5)
    torch.manual_seed(4)
    assert torch.equal(sh, vae.sample(5))
    torch.testing.assert_close(hvae.reconstruct(x), vae.reconstruct(x))


# -- a linear-Gaussian chain with a closed-form log p(x) -------------------------------------------
class Features(nn.Module):
    """Identity features, so that a ``GaussianEncoder``'s head alone makes it linear-Gaussian."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.out_features = n

    def forward(self, x: Tensor) -> Tensor:
        return x


def make_linear_gaussian(enc: GaussianEncoder, W: Tensor, c: Tensor, sigma: Tensor) -> None:
    """Turn ``enc`` into ``N(W h + c, diag(sigma^2))`` (sigma independent of the input)."""
    d, n = W.shape
    enc.net = Features(n)
    enc.head = nn.Linear(n, 2 * d, dtype=torch.float64)
    with torch.no_grad():
        enc.head.weight.copy_(torch.cat([W, torch.zeros_like(W)]))
        enc.head.bias.copy_(torch.cat([c, torch.log(sigma - enc.min_scale)]))


class LinearGaussianChain:
    """p(z2) = N(0, I), p(z1|z2) = N(A z2, s1^2 I), p(x|z1) = N(B z1 + b, s^2 I), dims 4-3-2.

    A and B have orthogonal columns, so the exact posteriors p(z1|x) and p(z2|z1) = p(z2|z1, x)
    are diagonal Gaussians that a ``GaussianEncoder`` can represent exactly.
    """

    def __init__(self) -> None:
        f64 = torch.float64
        g = torch.Generator().manual_seed(0)
        self.s, self.s1 = 0.5, 0.7
        self.a = torch.tensor([1.5, -0.8], dtype=f64)
        self.A = torch.zeros(3, 2, dtype=f64)
        self.A[0, 0], self.A[1, 1] = self.a
        q, _ = torch.linalg.qr(torch.randn(4, 3, generator=g, dtype=f64))
        self.bv = torch.tensor([2.0, 1.0, 0.5], dtype=f64)
        self.B = q * self.bv  # B^T B = diag(bv^2)
        self.b = torch.randn(4, generator=g, dtype=f64)
        sigma1 = (self.A @ self.A.T).diagonal() + self.s1**2  # Cov z1 = A A^T + s1^2 I, diagonal
        self.cov_x = self.B @ torch.diag(sigma1) @ self.B.T + self.s**2 * torch.eye(4, dtype=f64)
        c1 = 1.0 / (1.0 / sigma1 + self.bv**2 / self.s**2)  # posterior variances of z1 | x
        self.M1 = c1[:, None] * self.B.T / self.s**2  # E[z1|x] = M1 (x - b)
        self.sd1 = c1.sqrt()
        c2 = 1.0 / (1.0 + self.a**2 / self.s1**2)  # posterior variances of z2 | z1
        self.M2 = c2[:, None] * self.A.T / self.s1**2  # E[z2|z1] = M2 z1
        self.sd2 = c2.sqrt()

    def log_px(self, x: Tensor) -> Tensor:
        return MultivariateNormal(self.b, self.cov_x).log_prob(x)

    def model(self, mean_shift: float = 0.0, scale1: float = 1.0, scale2: float = 1.0):
        """The chain as a HierarchicalVAE with the exact posterior (or a perturbed one) as q."""
        likelihood = functools.partial(GaussianLikelihood, std=self.s, learn_std=False, min_std=0.0)
        m = HierarchicalVAE(
            [4],
            [{"latent_dim": 3, "hidden": [3]}, {"latent_dim": 2, "hidden": [2]}],
            likelihood=likelihood,
        ).double()
        zeros2 = torch.zeros(2, dtype=torch.float64)
        shift = torch.full((3,), mean_shift, dtype=torch.float64)
        make_linear_gaussian(m.encoders[0], self.M1, -self.M1 @ self.b + shift, self.sd1 * scale1)
        make_linear_gaussian(m.encoders[1], self.M2, zeros2, self.sd2 * scale2)
        make_linear_gaussian(
            m.conditional_priors[0],
            self.A,
            torch.zeros(3, dtype=torch.float64),
            torch.full((3,), self.s1),
        )
        m.decoder.net = nn.Linear(3, 4, dtype=torch.float64)
        with torch.no_grad():
            m.decoder.net.weight.copy_(self.B)
            m.decoder.net.bias.copy_(self.b)
        return m

    def data(self, n: int) -> Tensor:
        torch.manual_seed(1)
        return MultivariateNormal(self.b, self.cov_x).sample((n,))  # (n, 4)


def test_linear_gaussian_exact_posterior_gives_log_px() -> None:
    chain = LinearGaussianChain()
    x = chain.data(3)
    m = chain.model()
    log_px = chain.log_px(x)
    # every importance weight equals p(x) when q is the exact posterior: L_k = log p(x) for all k
    for k in (1, 7, 100):
        # (the tolerance allows iwae_bound to run its log-sum-exp in float32)
        torch.testing.assert_close(m.log_likelihood(x, k).double(), log_px, rtol=0, atol=2e-5)
    # forward's ELBO (analytic top-layer KL) is unbiased for the same value
    reps = 4000
    with torch.no_grad():
        t = m(x.repeat(reps, 1))
    elbo = t.elbo.reshape(reps, 3)
    se = elbo.std(0) / math.sqrt(reps)
    assert (se < 0.02).all()
    assert ((elbo.mean(0) - log_px).abs() < 4 * se + 1e-9).all()
    torch.testing.assert_close(t.terms["rate"], t.terms["rate/z1"] + t.terms["rate/z2"])
    torch.testing.assert_close(t.elbo, -(t.terms["distortion"] + t.terms["rate"]))


def test_linear_gaussian_suboptimal_q_lk_rises_to_log_px() -> None:
    chain = LinearGaussianChain()
    x = chain.data(3)
    m = chain.model(mean_shift=0.4, scale1=1.6, scale2=0.6)
    log_px = chain.log_px(x)
    reps = 200
    xr = x.repeat(reps, 1)
    with torch.no_grad():
        lk = {k: m.log_likelihood(xr, k).reshape(reps, 3) for k in (1, 8, 64, 512)}
        elbo = m(xr).elbo.reshape(reps, 3)
    means = {k: v.mean(0) for k, v in lk.items()}
    gap1 = log_px - means[1]
    assert (gap1 > 0.3).all()  # the perturbed q is clearly sub-optimal
    for lo, hi in ((1, 8), (8, 64), (64, 512)):
        assert (means[hi] > means[lo]).all(), (lo, hi, means[lo], means[hi])
    se512 = lk[512].std(0) / math.sqrt(reps)
    assert (means[512] < log_px + 4 * se512 + 1e-6).all()  # still a lower bound
    assert ((log_px - means[512]) < 0.1 * gap1).all()  # and close to log p(x)
    # forward's ELBO and L_1 estimate the same expectation
    se = torch.sqrt(elbo.var(0) / reps + lk[1].var(0) / reps)
    assert ((elbo.mean(0) - means[1]).abs() < 4 * se).all()


# -- IWAE objective, terms, sampling ----------------------------------------------------------
def test_iwae_objective_trains_and_lk_nondecreasing() -> None:
    torch.manual_seed(0)
    m = HierarchicalVAE(SHAPE, TWO_LAYERS, objective=ELBOObjective(iwae_samples=5), init="glorot")
    x = binary_batch(32)
    t = m(x)
    bound = t.terms["iwae_bound_k5"]
    assert bound.shape == (32,)
    torch.testing.assert_close(t.loss, -bound.mean())
    t.loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name  # every layer is in the importance weight
    with torch.no_grad():
        lk = [m.log_likelihood(x, k).mean().item() for k in (1, 5, 50, 500)]
    assert lk[0] < lk[1] < lk[2] < lk[3], lk
    # a few Adam steps on L_5 improve L_5
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    torch.manual_seed(1)
    before = -m(x).loss.item()
    for _ in range(30):
        opt.zero_grad()
        m(x).loss.backward()
        opt.step()
    torch.manual_seed(1)
    assert -m(x).loss.item() > before + 1.0


def test_terms_and_shared_objective_three_layers() -> None:
    torch.manual_seed(0)
    layers = [*TWO_LAYERS, {"latent_dim": 2, "hidden": [4, 4]}]
    obj = ELBOObjective(beta=2.0, warmup_steps=100)
    m = HierarchicalVAE(SHAPE, layers, objective=obj)
    x = binary_batch(10)
    m.set_training_step(25)
    torch.manual_seed(1)
    t = m(x)
    assert list(t.terms) == ["distortion", "rate/z1", "rate/z2", "rate/z3", "rate"]
    total = t.terms["rate/z1"] + t.terms["rate/z2"] + t.terms["rate/z3"]
    torch.testing.assert_close(t.terms["rate"], total)
    torch.testing.assert_close(t.elbo, -(t.terms["distortion"] + t.terms["rate"]))
    torch.testing.assert_close(t.loss, (t.terms["distortion"] + 0.5 * t.terms["rate"]).mean())
    assert (t.terms["rate/z3"] >= 0).all()  # the top layer's rate is an analytic KL


def test_iwae_paper_two_layer_architecture() -> None:
    m = HierarchicalVAE(
        [1, 28, 28],
        [{"latent_dim": 100, "hidden": [200, 200]}, {"latent_dim": 50, "hidden": [100, 100]}],
    )

    def mlp(*w: int) -> int:
        return sum(a * b + b for a, b in itertools.pairwise(w))

    assert num_parameters(m.encoders[0]) == mlp(784, 200, 200, 200)  # head: mean and scale
    assert num_parameters(m.encoders[1]) == mlp(100, 100, 100, 100)
    assert num_parameters(m.conditional_priors[0]) == mlp(50, 100, 100, 200)
    assert num_parameters(m.decoder) == mlp(100, 200, 200, 784)
    assert m.latent_dims == (100, 50) and m.layer_names == ("z1", "z2")


def test_sample_encode_reconstruct_posterior_means() -> None:
    torch.manual_seed(0)
    m = HierarchicalVAE(SHAPE, TWO_LAYERS)
    x = binary_batch(5)
    s = m.sample(7)
    assert s.shape == (7, *SHAPE) and set(s.unique().tolist()) <= {0.0, 1.0}
    mean = m.sample(7, use_mean=True)
    assert mean.shape == (7, *SHAPE) and (mean > 0).all() and (mean < 1).all()
    torch.testing.assert_close(m.reconstruct(x), m.decode_mean(m.encode(x).mean))
    pm = m.posterior_means(x)
    assert pm["z1"].shape == (5, 6) and pm["z2"].shape == (5, 3)
    torch.testing.assert_close(pm["z1"], m.encode(x).mean)
    # many chains: the z2 means approach E_q[z2|x]; their spread across calls shrinks
    a, b = (
        m.posterior_means(x, num_samples=2000)["z2"],
        m.posterior_means(x, num_samples=2000)["z2"],
    )
    c, d = m.posterior_means(x)["z2"], m.posterior_means(x)["z2"]
    assert (a - b).abs().max() < 0.2 * (c - d).abs().max()


def test_bf16_autocast_keeps_log_probs_float32() -> None:
    torch.manual_seed(0)
    m = HierarchicalVAE(SHAPE, TWO_LAYERS, init="glorot")
    x = binary_batch(16)
    torch.manual_seed(1)
    ref = m(x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = m(x)
    for name, v in t.items().items():
        assert v.dtype == torch.float32, name
    # bf16 networks, float32 distributions: the per-layer rates stay close to the float32 ones
    for name in ("rate/z1", "rate/z2"):
        torch.testing.assert_close(t.terms[name], ref.terms[name], rtol=0.05, atol=0.3)


def test_gaussian_likelihood_from_hydra_config() -> None:
    from hydra.utils import instantiate

    cfg = OmegaConf.create(
        {
            "_target_": "vaelab.models.HierarchicalVAE",
            "data_shape": [1, 4, 4],
            "layers": TWO_LAYERS,
            "likelihood": {
                "_target_": "vaelab.distributions.GaussianLikelihood",
                "_partial_": True,
                "std": 0.2,
            },
            "objective": {"_target_": "vaelab.objectives.ELBOObjective", "beta": 1.0},
        }
    )
    m = instantiate(cfg)
    assert isinstance(m.decoder, GaussianLikelihood)
    torch.testing.assert_close(m.decoder.log_std.exp(), torch.full(SHAPE, 0.2))
    m.check_data("dequantized")
    assert torch.isfinite(m(torch.rand(3, *SHAPE)).loss)
    with pytest.raises(ValueError, match="cannot model 'dequantized'"):
        HierarchicalVAE(SHAPE, TWO_LAYERS, likelihood="bernoulli").check_data("dequantized")
    with pytest.raises(ValueError, match="BernoulliLikelihood needs binary data"):
        HierarchicalVAE(SHAPE, TWO_LAYERS)(torch.rand(2, *SHAPE))


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], r"layers: need at least one stochastic layer \(T >= 1\)"),
        (
            [{"latent_dim": 5, "hidden": [4]}, {"latent_dim": 0, "hidden": [4]}],
            r"layers\[1\]: latent_dim must be a positive int, got 0",
        ),
        ([{"latent_dim": 2.5, "hidden": [4]}], r"layers\[0\]: latent_dim must be a positive int"),
        ([{"hidden": [4]}], r"layers\[0\]: latent_dim is missing"),
        ([{"latent_dim": 5}], r"layers\[0\]: hidden must be a non-empty list"),
        (
            [{"latent_dim": 5, "hidden": [4]}, {"latent_dim": 3, "hidden": []}],
            r"layers\[1\]: hidden must be a non-empty list",
        ),
        ([{"latent_dim": 5, "hidden": [4, -1]}], r"layers\[0\]: hidden must be"),
        ([{"latnt_dim": 5, "hidden": [4]}], r"layers\[0\]: unknown key\(s\) \['latnt_dim'\]"),
        (["z"], r"layers\[0\]: expected a mapping"),
        (
            [{"latent_dim": 5, "hidden": [4]}, {"latent_dim": 3, "hidden": [4], "input_dim": 6}],
            r"layers\[1\]: input_dim=6 does not chain: this layer reads "
            r"z1 \(layers\[0\]\.latent_dim\), of size 5",
        ),
        (
            [{"latent_dim": 5, "hidden": [4], "input_dim": 15}],
            r"layers\[0\]: input_dim=15 does not chain",
        ),
        ({"latent_dim": 5, "hidden": [4]}, r"layers must be a list"),
    ],
)
def test_bad_layer_lists_refused(layers, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HierarchicalVAE(SHAPE, layers)


def test_chaining_input_dims_and_omegaconf_lists_accepted() -> None:
    layers = OmegaConf.create(
        [
            {"latent_dim": 5, "hidden": [4], "input_dim": 16},
            {"latent_dim": 3, "hidden": [4], "input_dim": 5},
        ]
    )
    m = HierarchicalVAE(SHAPE, layers)
    assert m.latent_dims == (5, 3)


def test_bad_likelihood_refused() -> None:
    with pytest.raises(ValueError, match="likelihood must be one of"):
        HierarchicalVAE(SHAPE, TWO_LAYERS, likelihood="poisson")
    with pytest.raises(TypeError, match="likelihood must be a name"):
        HierarchicalVAE(SHAPE, TWO_LAYERS, likelihood=3)


# -- "VAE, k samples" (Burda et al. 2015, Table 1): the ELBO averaged over k draws ---------------
def test_elbo_samples_is_the_mean_of_k_single_sample_elbos() -> None:
    """elbo_samples=k: distortion is the mean over k draws, the loss is not importance-weighted."""
    hvae, vae = vae_pair(elbo_samples=5)
    x = binary_batch(6)
    torch.manual_seed(5)
    tv = vae(x)
    torch.manual_seed(5)
    qz = vae.encoder(x)
    z = qz.rsample((5,))  # the same 5 draws the model made
    log_px = vae.decoder(z).log_prob(x)  # (5, B)
    kl = torch.distributions.kl_divergence(qz, vae.prior(qz.batch_shape))  # (B,)
    torch.testing.assert_close(tv.terms["distortion"], -log_px.mean(0))
    torch.testing.assert_close(tv.loss, (-log_px.mean(0) + kl).mean())
    iw = torch.logsumexp(log_px - kl, 0) - math.log(5)  # what IWAE (analytic-KL form) would give
    assert not torch.allclose(tv.loss, -iw.mean())
    assert set(tv.terms) == {"distortion", "rate"}
    torch.manual_seed(5)
    th = hvae(x)  # T = 1 is the VAE here too
    torch.testing.assert_close(th.loss, tv.loss)
    torch.testing.assert_close(th.terms["rate/z1"], tv.terms["rate"])


def test_elbo_samples_lowers_the_variance_of_the_two_layer_loss() -> None:
    torch.manual_seed(0)
    x = binary_batch(8)
    losses = {}
    for k in (1, 10):
        model = HierarchicalVAE(SHAPE, TWO_LAYERS, objective=ELBOObjective(elbo_samples=k))
        torch.manual_seed(0)
        ref = HierarchicalVAE(SHAPE, TWO_LAYERS)
        model.load_state_dict(ref.state_dict())
        with torch.no_grad():
            losses[k] = torch.stack([model(x).loss for _ in range(200)])
    # the same expectation (the ELBO) ...
    assert abs(losses[1].mean() - losses[10].mean()) < 4 * losses[1].std() / math.sqrt(200)
    # ... with about 1/k of the variance
    assert losses[10].var() < 0.3 * losses[1].var()


def test_elbo_samples_and_iwae_samples_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        ELBOObjective(elbo_samples=5, iwae_samples=5)
    with pytest.raises(ValueError, match="elbo_samples must be >= 1"):
        ELBOObjective(elbo_samples=0)
