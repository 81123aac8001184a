"""``model=realnvp`` / ``realnvp_mlp`` and the RealNVP experiments: compose, instantiate, train and
test through ``vaelab.train`` on tiny files in the official formats (MNIST IDX, CIFAR-10 pickles)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_train
from tests.unit.test_cifar10 import write_fake_cifar10
from vaelab.data import CIFAR10DataModule, MNISTDataModule
from vaelab.models import RealNVP, RealNVPMLP
from vaelab.units import bits_per_dim


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: intra-op threads only add overhead (and stall when other jobs share the CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY_REALNVP = (
    "model.hidden_channels=4",
    "model.num_blocks=1",
    "model.couplings_per_scale=1",
    "model.final_couplings=2",
)


def _check_flow_metrics(metrics: dict[str, float], num_dims: int, out: Path) -> None:
    for key in ("test/nll", "test/bpd", "test/elbo", "test/log_pz", "test/logdet", "val/bpd"):
        assert key in metrics and math.isfinite(metrics[key]), key
    # exact likelihood: nll = -elbo = -(log_pz + logdet), and bpd is its pixel-space conversion
    assert metrics["test/nll"] == pytest.approx(-metrics["test/elbo"], rel=1e-5)
    assert metrics["test/elbo"] == pytest.approx(
        metrics["test/log_pz"] + metrics["test/logdet"], rel=1e-5, abs=1e-2
    )
    bpd = bits_per_dim(torch.tensor(metrics["test/nll"]), num_dims, "dequantized").item()
    assert metrics["test/bpd"] == pytest.approx(bpd, rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_realnvp_mnist_trains_and_tests(fake_mnist: Path, tmp_path: Path, precision: str) -> None:
    from vaelab.train import train

    cfg = compose_train(
        [
            "experiment=realnvp_mnist",
            *TINY_REALNVP,
            "data.download=false",
            f"trainer.precision={precision}",
            "callbacks.images.num_samples=4",
        ],
        tmp_path,
        data_dir=fake_mnist,
    )
    metrics, objects = train(cfg)
    assert isinstance(objects["model"], RealNVP)
    _check_flow_metrics(metrics, 784, tmp_path / "run")
    assert (tmp_path / "run" / "images" / "samples_final.png").is_file()


def test_realnvp_mlp_trains_on_mnist(fake_mnist: Path, tmp_path: Path) -> None:
    from vaelab.train import train

    cfg = compose_train(
        [
            "model=realnvp_mlp",
            "data=mnist",
            "model.hidden=32",
            "data.download=false",
            "~callbacks.images",
        ],
        tmp_path,
        data_dir=fake_mnist,
    )
    metrics, objects = train(cfg)
    assert isinstance(objects["model"], RealNVPMLP)
    _check_flow_metrics(metrics, 784, tmp_path / "run")


def test_realnvp_cifar10_trains_on_official_pickles(tmp_path: Path) -> None:
    from vaelab.train import train

    write_fake_cifar10(tmp_path / "data")
    cfg = compose_train(
        [
            "experiment=realnvp_cifar10",
            *TINY_REALNVP,
            "data.download=false",
            "data.val_size=10",
            "data.batch_size=8",
            "data.eval_batch_size=10",
            "~callbacks.images",
        ],
        tmp_path,
        data_dir=tmp_path / "data",
    )
    metrics, objects = train(cfg)
    assert isinstance(objects["datamodule"], CIFAR10DataModule)
    _check_flow_metrics(metrics, 3072, tmp_path / "run")


def test_realnvp_cifar10_is_the_paper_setup(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=realnvp_cifar10"], tmp_path, tiny=False)
    assert cfg.data.batch_size == 64 and cfg.data.flip and cfg.data.shape == [3, 32, 32]
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    m = cfg.model
    assert (m.num_blocks, m.hidden_channels, m.alpha, m.weight_norm_l2) == (8, 64, 0.05, 5e-5)
    assert (m.num_scales, m.couplings_per_scale, m.final_couplings, m.norm) == (2, 3, 4, "batch")
    model = instantiate(cfg.model)
    assert isinstance(model, RealNVP) and model.data_shape == (3, 32, 32)


def test_realnvp_mnist_experiment_composes(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=realnvp_mnist"], tmp_path, tiny=False)
    dm = instantiate(cfg.data)
    assert isinstance(dm, MNISTDataModule) and dm.kind == "dequantized" and dm.dequantize
    model = instantiate(cfg.model)
    assert isinstance(model, RealNVP) and model.num_scales == 2


def test_flow_on_binarized_data_is_refused(fake_mnist: Path, tmp_path: Path) -> None:
    from vaelab.train import train

    cfg = compose_train(
        ["model=realnvp_mlp", "data=binarized_mnist", "model.hidden=8", "data.download=false"],
        tmp_path,
        data_dir=fake_mnist,
    )
    with pytest.raises(ValueError, match=r"dequantized 8-bit pixels.*data=mnist"):
        train(cfg)
