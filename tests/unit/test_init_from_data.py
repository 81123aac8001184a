"""Data-dependent initialisation: the decoder's output bias starts at the training data's mean."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from vaelab.data import MNISTDataModule
from vaelab.distributions import BernoulliLikelihood, GaussianLikelihood
from vaelab.nn import MLP, ConvDecoderNet


def _zero_last_weight(net: torch.nn.Module) -> None:
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.ConvTranspose2d)]
    torch.nn.init.zeros_(last[-1].weight)


def test_bernoulli_mean_starts_at_the_clamped_data_mean() -> None:
    mean = torch.rand(1, 4, 4)
    mean[0, 0, 0] = 0.0  # a pixel that is never on: a finite bias, not -inf
    dec = BernoulliLikelihood(MLP([3], [8], out_shape=[1, 4, 4]), data_shape=[1, 4, 4])
    _zero_last_weight(dec.net)  # the output is then the bias alone
    dec.init_from_data(mean)
    got = dec.mean(torch.randn(5, 3))
    torch.testing.assert_close(got, mean.clamp(1e-3, 1 - 1e-3).expand(5, 1, 4, 4))


def test_gaussian_conv_decoder_gets_the_channel_means() -> None:
    mean = torch.rand(3, 8, 8)
    dec = GaussianLikelihood(ConvDecoderNet(4, [3, 8, 8], channels=[4], hidden=8), [3, 8, 8])
    _zero_last_weight(dec.net)
    dec.init_from_data(mean)
    got = dec.mean(torch.randn(2, 4))
    torch.testing.assert_close(got, mean.mean((1, 2))[:, None, None].expand(2, 3, 8, 8))


def test_a_bias_that_fits_neither_shape_is_refused() -> None:
    dec = BernoulliLikelihood(MLP([3], [8], out_shape=[1, 4, 4]), data_shape=[1, 4, 4])
    with pytest.raises(ValueError, match="output bias has 16 entries"):
        dec.init_from_data(torch.rand(2, 3, 3))


@pytest.mark.parametrize("binarize", ["dynamic", "static", "threshold", None])
def test_train_mean_is_the_mean_of_what_training_sees(fake_mnist: Path, binarize) -> None:
    m = MNISTDataModule(str(fake_mnist), binarize=binarize, download=False, val_size=100, seed=3)
    m.setup()
    m.splits["train"] = m.splits["train"][:50].repeat(40, 1, 1, 1)  # 40 draws of each image
    seen = torch.cat(list(m.train_dataloader())).mean(0)
    assert m.train_mean().shape == (1, 28, 28)
    tol = 0.02 if binarize == "dynamic" else 0.002  # dynamic: a Monte Carlo estimate
    assert (seen - m.train_mean()).abs().mean() < tol


def _out_bias(model: torch.nn.Module) -> torch.Tensor:
    return [m for m in model.decoder.net.modules() if isinstance(m, torch.nn.Linear)][-1].bias


@pytest.mark.parametrize("enabled", [True, False])
def test_fit_initialises_the_bias_unless_disabled(
    fake_mnist: Path, tmp_path: Path, enabled: bool
) -> None:
    from vaelab.train import build

    # lr = 0: the one training step leaves the weights as initialised.
    cfg = compose_train(
        [
            "data=binarized_mnist",
            "optimizer.lr=0",
            "+trainer.max_steps=1",
            "logger=[]",
            f"module.init_from_data={str(enabled).lower()}",
        ],
        tmp_path,
        fake_mnist,
    )
    objs = build(cfg)
    before = _out_bias(objs["model"]).detach().clone()
    objs["trainer"].fit(objs["module"], datamodule=objs["datamodule"])
    after = _out_bias(objs["model"]).detach()
    if enabled:
        want = torch.logit(objs["datamodule"].train_mean().clamp(1e-3, 1 - 1e-3)).flatten()
        torch.testing.assert_close(after, want)
    else:
        assert torch.equal(after, before)
