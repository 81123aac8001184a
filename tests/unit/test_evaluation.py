"""The one evaluator: chunked L_k exact to 1e-5 with unequal weights; active units as logged."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from tests.unit.test_active_units import make_vae
from vaelab.distributions import BernoulliLikelihood, GaussianEncoder
from vaelab.lit import GenerativeModule
from vaelab.models import VAE, HierarchicalVAE
from vaelab.models.base import LatentVariableModel
from vaelab.nn import MLP
from vaelab.objectives import importance_weighted_bound, iwae_bound, sample_chunks

SHAPE = (1, 4, 4)
K = 50


def small_models() -> list[LatentVariableModel]:
    torch.manual_seed(3)
    enc = GaussianEncoder(MLP(SHAPE, [16]), 3)
    vae = VAE(enc, BernoulliLikelihood(MLP([3], [16], SHAPE), SHAPE), SHAPE, 3)
    hvae = HierarchicalVAE(
        SHAPE, [{"latent_dim": 3, "hidden": [16]}, {"latent_dim": 2, "hidden": [8]}], init="glorot"
    )
    return [vae.eval(), hvae.eval()]


def x_batch() -> Tensor:
    return torch.bernoulli(
        torch.full((10, *SHAPE), 0.4), generator=torch.Generator().manual_seed(1)
    )


class Replay:
    """A model whose ``log_weights`` hands out, chunk after chunk, rows of fixed weights.

    The weights are a real model's (a non-exact posterior, so they differ), drawn once: chunked
    and unchunked evaluation then see exactly the same k samples, whatever the RNG does.
    """

    def __init__(self, log_w: Tensor) -> None:
        self.log_w, self.used = log_w, 0

    def encode(self, x: Tensor) -> None:
        return None

    def log_weights(self, x: Tensor, num_samples: int, posterior: object = None) -> Tensor:
        rows = self.log_w[self.used : self.used + num_samples]
        self.used += num_samples
        return rows


def averaged_chunk_bounds(model: Replay, x: Tensor, k: int, rows: int) -> Tensor:
    """A deliberately wrong combination: the mean of per-chunk bounds (Jensen: <= L_k)."""
    sizes = sample_chunks(k, x.shape[0], rows)
    bounds = torch.stack([iwae_bound(model.log_weights(x, c), 0) for c in sizes])
    return (bounds * torch.tensor(sizes)[:, None]).sum(0) / k


def check_chunking(log_w: Tensor, bound: Callable[..., Tensor]) -> None:
    """``bound`` with 3-sample chunks equals one log-sum-exp over all k weights (to 1e-5)."""
    x = x_batch()
    whole = iwae_bound(log_w, 0)
    replay = Replay(log_w)
    chunked = bound(replay, x, K, 3 * x.shape[0])  # 17 chunks: 16 of 3 samples, one of 2
    assert replay.used == K
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("index", [0, 1], ids=["vae", "hvae"])
def test_chunked_lk_equals_unchunked_with_unequal_weights(index: int) -> None:
    model = small_models()[index]
    x = x_batch()
    with torch.no_grad():
        log_w = model.log_weights(x, K, model.encode(x))  # (K, B)
    # A non-exact posterior: the weights of one image differ by nats, not by rounding.
    assert float((log_w.max(0).values - log_w.min(0).values).min()) > 1.0
    check_chunking(log_w, importance_weighted_bound)
    # The same weights, combined wrongly: the check must catch it.
    with pytest.raises(AssertionError):
        check_chunking(log_w, averaged_chunk_bounds)


def test_chunked_lk_of_a_model_is_unchanged_by_the_chunk_size() -> None:
    # Through the models themselves (fresh samples per chunk size, so only statistically equal):
    # a wrong combination would sit below by far more than the Monte-Carlo spread.
    for model in small_models():
        x = x_batch().repeat(40, 1, 1, 1)  # 400 images
        with torch.no_grad():
            whole = importance_weighted_bound(model, x, K, rows=K * x.shape[0]).mean()
            chunked = importance_weighted_bound(model, x, K, rows=3 * x.shape[0]).mean()
            wrong = averaged_chunk_bounds(
                Replay(model.log_weights(x, K, model.encode(x))), x, K, 3 * x.shape[0]
            ).mean()
        gap = float(whole - wrong)  # what the wrong combination loses: ~0.09-0.2 nats here
        assert gap > 0.05
        assert abs(float(chunked - whole)) < 0.3 * gap


def test_log_likelihood_is_the_evaluator() -> None:
    for model in small_models():
        x = x_batch()
        with torch.no_grad():
            torch.manual_seed(5)
            a = model.log_likelihood(x, 20)
            torch.manual_seed(5)
            b = importance_weighted_bound(model, x, 20, model.eval_chunk_rows)
        torch.testing.assert_close(a, b, atol=0, rtol=0)


class Features(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.out_features = n

    def forward(self, x: Tensor) -> Tensor:
        return x


def test_logged_active_units_equal_a_direct_computation() -> None:
    n = 6
    g = torch.Generator().manual_seed(4)
    x = torch.bernoulli(torch.full((700, n), 0.5), generator=g)  # column variance ~0.25
    w = torch.zeros(8, n)
    w[0, 0] = 1.0  # ~0.25: active
    w[1, 1] = 0.15  # ~0.0056: inactive
    w[2, 2] = 0.25  # ~0.0156: active
    w[3, 3] = 0.18  # ~0.0081: inactive
    w[4, 4] = 0.22  # ~0.0121: active
    w[5, :] = 0.01  # ~1.5e-4: inactive; 6 and 7 constant
    model: VAE = make_vae(w)
    module = GenerativeModule(model, test_num_samples=2, data_kind="binary")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = torch.utils.data.DataLoader(x, batch_size=256)  # 256, 256, 188: uneven
    trainer.test(module, dataloaders=loader, verbose=False)
    logged = trainer.callback_metrics["test/active_units/z"]
    with torch.no_grad():
        mu = model.encoder(x).mean.double()
    direct = int((mu.var(0, correction=0) > 1e-2).sum())
    assert direct == 3
    assert float(logged) == direct
