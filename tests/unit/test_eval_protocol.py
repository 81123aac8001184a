"""The evaluation protocol: test data independent of the training seed; Larochelle's .amat files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.fake_data import write_fake_larochelle
from vaelab.data import DatasetNotFoundError, MNISTDataModule


def eval_batches(m: MNISTDataModule, split: str) -> torch.Tensor:
    loader = m.test_dataloader() if split == "test" else m.val_dataloader()
    return torch.cat(list(loader))


@pytest.mark.parametrize(
    "kwargs", [{"binarize": "dynamic"}, {"binarize": None, "dequantize": True}], ids=str
)
def test_different_training_seeds_evaluate_on_identical_tensors(
    fake_mnist: Path, kwargs: dict
) -> None:
    a, b = (
        MNISTDataModule(str(fake_mnist), download=False, val_size=100, seed=s, **kwargs)
        for s in (0, 1)
    )
    for split in ("test", "val"):
        assert torch.equal(eval_batches(a, split), eval_batches(b, split)), split
    # The training data does differ (else the check above would be empty).
    ta, tb = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert not torch.equal(ta, tb)
    # The evaluation seed is what moves the evaluation data.
    c = MNISTDataModule(str(fake_mnist), download=False, val_size=100, eval_seed=3, **kwargs)
    assert not torch.equal(eval_batches(a, "test"), eval_batches(c, "test"))


def test_default_eval_seed_keeps_the_seed_0_test_set(fake_mnist: Path) -> None:
    """The default evaluation data is what every earlier run with seed 0 was evaluated on."""
    from torchvision.datasets import MNIST

    m = MNISTDataModule(str(fake_mnist), download=False, val_size=100, binarize="dynamic")
    raw = MNIST(str(fake_mnist), train=False, download=False).data.unsqueeze(1)
    old = torch.bernoulli(raw.float() / 255.0, generator=torch.Generator().manual_seed(10_001))
    assert torch.equal(eval_batches(m, "test"), old)


def test_larochelle_reads_the_amat_files(tmp_path: Path) -> None:
    written = write_fake_larochelle(tmp_path)
    m = MNISTDataModule(
        str(tmp_path), binarize="larochelle", download=False, eval_batch_size=5, batch_size=10
    )
    m.prepare_data()
    m.setup()
    assert m.info.kind == "binary"
    for split in ("train", "val", "test"):
        assert torch.equal(m.splits[split], written[split]), split
    assert torch.equal(eval_batches(m, "test"), written["test"].float())  # no redraw, no noise
    assert torch.equal(next(iter(m.train_dataloader())).unique(), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(m.train_mean(), written["train"].float().mean(0))
    both = MNISTDataModule(str(tmp_path), binarize="larochelle", download=False, val_size=0)
    both.setup()
    assert both.splits["train"].shape[0] == 40 and both.val_dataloader() == []


def test_larochelle_missing_files_name_them_and_their_source(tmp_path: Path) -> None:
    m = MNISTDataModule(str(tmp_path), binarize="larochelle", download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        m.prepare_data()
    msg = str(err.value)
    for name in ("binarized_mnist_train.amat", "binarized_mnist_valid.amat", "BinarizedMNIST"):
        assert name in msg
    assert "www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist" in msg


def test_larochelle_malformed_file_is_named(tmp_path: Path) -> None:
    write_fake_larochelle(tmp_path)
    bad = tmp_path / "BinarizedMNIST" / "binarized_mnist_test.amat"
    bad.write_text("0 1 2\n")
    m = MNISTDataModule(str(tmp_path), binarize="larochelle", download=False)
    with pytest.raises(ValueError, match=r"binarized_mnist_test.amat is not a binarized-MNIST"):
        m.setup()
