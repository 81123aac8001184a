"""``init`` reaches every Linear and convolution of every latent model, Gaussian heads included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from tests.conftest import compose_train

LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


@pytest.mark.parametrize("model", ["vae", "conv_vae", "hvae", "iwae", "beta_vae"])
@pytest.mark.parametrize("scheme", ["glorot", "normal"])
def test_init_reaches_every_layer(model: str, scheme: str, tmp_path: Path) -> None:
    cfg = compose_train([f"model={model}", f"model.init={scheme}"], tmp_path, tiny=False)
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    layers = [(name, m) for name, m in net.named_modules() if isinstance(m, LAYERS)]
    assert any(name.endswith("head") for name, _ in layers)  # the Gaussian heads are checked
    for name, m in layers:
        w = m.weight.detach()
        if scheme == "glorot":
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            # Uniform on [-bound, bound]: the largest |w| of thousands of draws is near the bound.
            # PyTorch's default (bound 1/sqrt(fan_in)) misses this window for every layer here.
            assert 0.9 * bound < float(w.abs().max()) <= bound, (name, float(w.abs().max()), bound)
        else:
            assert float(w.std()) == pytest.approx(0.01, rel=0.2), name
        if m.bias is not None:
            assert float(m.bias.abs().max()) == 0.0, name


def test_the_iwae_experiment_initialises_the_head_with_glorot(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=iwae_vae_1layer"], tmp_path, tiny=False)
    net = instantiate(cfg.model)
    head = net.encoder.head.weight
    bound = math.sqrt(6.0 / (head.shape[0] + head.shape[1]))  # 0.141 for 200 -> 2 x 50
    assert float(head.abs().max()) > 0.9 * bound
