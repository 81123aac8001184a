"""Shared fixtures: fake datasets in the official formats, real MNIST when present, config composition."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from tests.helpers.fake_data import write_fake_mnist

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread per test process: the models here are tiny, and DDP tests and CLI subprocesses
# run beside the pytest process on a 2-core CI machine, where oversubscribed OpenMP threads spin and
# slow everything several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def real_mnist_dir() -> Path | None:
    """The real MNIST root (VAELAB_DATA_DIR, ./data, else ../shared/data), or None when absent."""
    candidates = [
        os.environ.get("VAELAB_DATA_DIR"),
        str(REPO / "data"),
        str(REPO.parent / "shared" / "data"),
    ]
    for c in candidates:
        if c and (Path(c) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
            return Path(c)
    return None


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a tiny MNIST (600 train, 200 test) in the official IDX format."""
    return write_fake_mnist(tmp_path_factory.mktemp("fake_mnist"), n_train=600, n_test=200)


@pytest.fixture
def real_mnist() -> Path:
    root = real_mnist_dir()
    if root is None:
        pytest.skip("real MNIST not found (set VAELAB_DATA_DIR or put it at ../shared/data)")
    return root


TINY = (
    "data.batch_size=50",
    "data.eval_batch_size=100",
    "data.val_size=100",
    "eval.num_samples=5",
    "eval.val_num_samples=5",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "+trainer.num_sanity_val_steps=0",
    "+trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
)


def compose_train(
    overrides: Sequence[str], tmp_path: Path, data_dir: Path | None = None, tiny: bool = True
):
    """Compose ``conf/train.yaml`` as ``vaelab-train`` would, with outputs under ``tmp_path``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir

    base = [
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    if data_dir is not None:
        base.append(f"paths.data_dir={data_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=[*base, *(TINY if tiny else ()), *overrides])
