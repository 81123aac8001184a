"""MNIST DataModule: binarization modes, splits, in-memory batching, sharding, missing files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.data import DatasetNotFoundError, IndexBatchLoader, MNISTDataModule
from vaelab.data.loader import global_batch_index


def dm(root: Path, **kw) -> MNISTDataModule:
    kw.setdefault("val_size", 100)
    m = MNISTDataModule(str(root), download=False, **kw)
    m.setup()
    return m


def test_splits_sizes_fixed_and_disjoint(fake_mnist: Path) -> None:
    a, b = dm(fake_mnist, seed=0), dm(fake_mnist, seed=5)  # the run seed does not move the split
    assert a.splits["train"].shape == (500, 1, 28, 28)
    assert a.splits["val"].shape == (100, 1, 28, 28)
    assert a.splits["test"].shape == (200, 1, 28, 28)
    assert a.splits["train"].dtype == torch.uint8
    assert torch.equal(a.splits["val"], b.splits["val"])
    other = dm(fake_mnist, split_seed=1)
    assert not torch.equal(a.splits["val"], other.splits["val"])
    # No validation image is also a training image (rows compared as bytes).
    train_rows = {bytes(r.numpy()) for r in a.splits["train"].flatten(1)}
    assert not any(bytes(r.numpy()) in train_rows for r in a.splits["val"].flatten(1))


def test_dynamic_binarization_redraws_each_epoch(fake_mnist: Path) -> None:
    m = dm(fake_mnist, binarize="dynamic", batch_size=500)
    m.splits["train"] = m.splits["train"][:1].repeat(500, 1, 1, 1)  # order cannot matter
    loader = m.train_dataloader()
    e1, e2 = next(iter(loader)), next(iter(loader))  # epochs 0 and 1
    assert set(e1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(e1, e2)
    # A Bernoulli(x/255) draw: its mean matches the grey levels.
    assert abs(e1.mean().item() - (m.splits["train"].float() / 255).mean().item()) < 0.01
    assert not torch.equal(e1[0], e1[1])  # each image gets its own draw
    # Evaluation splits are binarized once: the same every pass.
    t1, t2 = next(iter(m.test_dataloader())), next(iter(m.test_dataloader()))
    assert torch.equal(t1, t2) and set(t1.unique().tolist()) == {0.0, 1.0}


def test_dynamic_binarize_is_a_bernoulli_draw_of_every_grey_level() -> None:
    """``u < x / 255``: Bernoulli(x / 255) for each of the 256 levels, exact at 0 and 255."""
    from vaelab.data.transforms import dynamic_binarize

    x = torch.arange(256, dtype=torch.uint8).repeat(20_000, 1)  # (20000, 256): every level
    g = torch.Generator().manual_seed(3)
    y = dynamic_binarize(x, g)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert y[:, 0].sum() == 0 and y[:, 255].sum() == 20_000  # p = 0 never, p = 1 always fires
    p = torch.arange(256) / 255.0
    freq = y.mean(0).double()
    se = (p * (1 - p) / 20_000).sqrt().clamp(min=1e-12)
    assert ((freq - p).abs() / se).max() < 5  # every level within 5 standard errors
    # Seeded: the same generator state gives the same draw; the next call a fresh one.
    assert torch.equal(dynamic_binarize(x[:5], torch.Generator().manual_seed(3)), y[:5])
    assert not torch.equal(dynamic_binarize(x, g), y)
    # Pixels are independent: neighbouring levels' draws are uncorrelated.
    c = torch.corrcoef(y[:, 100:102].T)[0, 1]
    assert abs(c) < 0.03


def test_static_and_threshold_binarization(fake_mnist: Path) -> None:
    s1, s2 = dm(fake_mnist, binarize="static"), dm(fake_mnist, binarize="static")
    assert torch.equal(s1.splits["train"], s2.splits["train"])  # one seeded draw
    assert set(s1.splits["train"].unique().tolist()) == {0, 1}
    x = next(iter(s1.train_dataloader()))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    t = dm(fake_mnist, binarize="threshold")
    raw = t.splits["test"][:500]
    torch.testing.assert_close(next(iter(t.test_dataloader())), (raw > 127).float()[:500])
    assert t.kind == "binary" and dm(fake_mnist).kind == "dequantized"


def test_dequantized_pixels_in_unit_interval(fake_mnist: Path) -> None:
    m = dm(fake_mnist, batch_size=500)
    x = next(iter(m.train_dataloader()))
    assert x.min() >= 0 and x.max() < 1
    # (x + u)/256 lies in the pixel's bin [x/256, (x+1)/256).
    loader = m.train_dataloader()
    loader.shuffle = False
    y = next(iter(loader))
    raw = m.splits["train"][:500].float()
    assert ((y * 256 - raw) >= 0).all() and ((y * 256 - raw) < 1).all()


def test_unknown_binarize_mode_and_shape_mismatch(fake_mnist: Path) -> None:
    with pytest.raises(ValueError, match="binarize"):
        MNISTDataModule(str(fake_mnist), binarize="sometimes")
    with pytest.raises(ValueError, match=r"data\.shape"):
        MNISTDataModule(str(fake_mnist), shape=[3, 32, 32])


def test_missing_files_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    m = MNISTDataModule(str(tmp_path / "nowhere"), download=True)
    with pytest.raises(DatasetNotFoundError) as err:
        m.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg
    for f in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f in msg
    assert "VAELAB_DATA_DIR" in msg and "network unreachable" in msg


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_sharding_sees_every_example_once(world: int) -> None:
    data = torch.arange(1030).reshape(-1, 1, 1, 1)  # values = indices
    seen, batches = [], {}
    for rank in range(world):
        loader = IndexBatchLoader(data, 100, lambda x, g: x, rank=rank, world_size=world)
        for i, b in enumerate(loader):
            seen += b.flatten().tolist()
            batches[global_batch_index(i, rank, world)] = b.flatten().tolist()
    assert sorted(seen) == list(range(1030))  # no padding, no duplicates
    # Batch contents do not depend on the number of processes.
    single = list(IndexBatchLoader(data, 100, lambda x, g: x))
    assert [batches[i] for i in range(len(single))] == [b.flatten().tolist() for b in single]


def test_train_sharding_is_disjoint_and_reshuffled() -> None:
    data = torch.arange(1000).reshape(-1, 1, 1, 1)
    shards = [
        torch.cat(
            list(
                IndexBatchLoader(
                    data, 50, lambda x, g: x, shuffle=True, drop_last=True, rank=r, world_size=2
                )
            )
        )
        for r in range(2)
    ]
    assert len(set(shards[0].flatten().tolist()) & set(shards[1].flatten().tolist())) == 0
    loader = IndexBatchLoader(data, 1000, lambda x, g: x, shuffle=True)
    assert not torch.equal(next(iter(loader)), next(iter(loader)))


def test_real_mnist_is_the_official_files(real_mnist: Path) -> None:
    m = MNISTDataModule(str(real_mnist), val_size=0, download=False)
    m.setup()
    assert m.splits["train"].shape == (60000, 1, 28, 28)
    assert m.splits["test"].shape == (10000, 1, 28, 28)
    counts = torch.bincount(m.labels("test"), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_dequantize_stays_below_one() -> None:
    from vaelab.data.transforms import dequantize

    x = torch.full((4_000_000,), 255, dtype=torch.uint8)
    y = dequantize(x, torch.Generator().manual_seed(0))
    # Unclamped, ~8 in 1e6 of these round to exactly 1.0 in float32.
    assert y.max().item() < 1.0 and y.min().item() >= 255 / 256
