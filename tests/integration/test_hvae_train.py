"""``model=hvae`` and ``experiment=iwae_vae_2layer``: compose, instantiate, run on tiny MNIST."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vaelab.config import config_dir
from vaelab.models import HierarchicalVAE
from vaelab.nn import num_parameters


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor in the IDX format of the MNIST files (magic 0x08 = unsigned byte)."""
    header = struct.pack(">I", 0x0800 + data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    path.write_bytes(header + data.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """``<root>/MNIST/raw/``: 120 training and 40 test random 28x28 images, real IDX format."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 120), ("t10k", 40)):
        write_idx(
            raw / f"{split}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=g)
        )
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=g))
    return tmp_path / "data"


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_hvae_fast_dev_run_logs_per_layer_terms(tiny_mnist: Path, tmp_path: Path) -> None:
    """Smoke test of the whole loop, plus numbers: per-layer rates add up, units are counted."""
    from vaelab.train import train

    out = tmp_path / "run"
    cfg = compose_train(
        "model=hvae",
        "model.layers=[{latent_dim: 8, hidden: [32]}, {latent_dim: 4, hidden: [16]}]",
        f"paths.data_dir={tiny_mnist}",
        f"paths.output_dir={out}",
        "data.download=false",
        "data.val_size=20",
        "data.batch_size=10",
        "data.eval_batch_size=20",
        "+trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "eval.num_samples=8",
        "eval.val_num_samples=2",
    )
    metrics, objects = train(cfg)
    assert isinstance(objects["model"], HierarchicalVAE)
    for key in ("test/nll", "test/elbo", "test/distortion", "test/rate/z1", "test/rate/z2"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert metrics["test/rate"] == pytest.approx(
        metrics["test/rate/z1"] + metrics["test/rate/z2"], rel=1e-5
    )
    assert metrics["test/nll"] < -metrics["test/elbo"]  # L_8 above the ELBO
    assert 0 <= metrics["test/active_units/z1"] <= 8 and 0 <= metrics["test/active_units/z2"] <= 4
    written = json.loads((out / "metrics.json").read_text())
    assert "test/active_units/z2" in json.dumps(written)


def test_iwae_vae_2layer_is_the_paper_model_with_the_1layer_protocol() -> None:
    two = compose_train("experiment=iwae_vae_2layer", "schedule.stages=3")
    one = compose_train("experiment=iwae_vae_1layer", "schedule.stages=3")
    a, b = OmegaConf.to_container(one), OmegaConf.to_container(two)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {
        "model",
        "task_name",
        "tags",
    }
    assert two.trainer.max_epochs == 1 + 3 + 9 and two.data.batch_size == 20
    model = instantiate(two.model)
    assert isinstance(model, HierarchicalVAE) and model.latent_dims == (100, 50)
    # 784-200-200-[z1=100]-100-100-[z2=50], decoder mirrored; Gaussian heads emit mean and scale
    sizes = [(784, 200), (200, 200), (200, 200), (100, 100), (100, 100), (100, 100)]  # q
    sizes += [(50, 100), (100, 100), (100, 200), (100, 200), (200, 200), (200, 784)]  # p
    assert num_parameters(model) == sum(i * o + o for i, o in sizes)
    with torch.no_grad():  # Glorot init reaches the Gaussian heads too
        w = model.encoders[0].head.weight
        assert w.abs().max() <= (6 / (200 + 200)) ** 0.5
