"""CIFAR-10 DataModule on tiny files written in the official ``cifar-10-batches-py`` format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.data import CIFAR10DataModule, DatasetNotFoundError
from vaelab.data.cifar10 import CIFAR10_FILES, read_cifar10

PER_BATCH = 12  # images per training pickle (the real files have 10,000)
N_TEST = 10


def _images(n: int, offset: int) -> np.ndarray:
    """uint8 (n, 3072) where every image is distinguishable and asymmetric left-right."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(offset, offset + n) % 256  # an id in the top-left red sub-pixel
    return x.reshape(n, 3072)


def write_fake_cifar10(root: Path) -> dict[str, np.ndarray]:
    """Write data_batch_1..5 and test_batch (dicts with bytes keys, pickled) under root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for i, name in enumerate(CIFAR10_FILES):
        n = N_TEST if name == "test_batch" else PER_BATCH
        data = _images(n, offset=100 * i)
        d = {
            b"batch_label": f"fake {name}".encode(),
            b"labels": [int(v) for v in (np.arange(n) + i) % 10],
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(d, f, protocol=2)
        arrays[name] = data
    return arrays


def assert_recovers(pix: torch.Tensor, x: torch.Tensor) -> None:
    """floor(256 y) == x, up to float32 rounding of x + u up to x + 1 (probability 2^-17 at 255)."""
    diff = pix - x.float()
    assert diff.min() >= 0 and diff.max() <= 1
    assert (diff != 0).float().mean() < 1e-3


@pytest.fixture
def fake_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path, write_fake_cifar10(tmp_path)


def test_reads_official_format(fake_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, arrays = fake_root
    x, y = read_cifar10(str(root), train=True)
    assert x.dtype == torch.uint8 and x.shape == (5 * PER_BATCH, 3, 32, 32)
    assert y.shape == (5 * PER_BATCH,) and y.dtype == torch.int64
    # row-major (3, 32, 32): the first 1024 values are the red plane
    first = arrays["data_batch_1"][0]
    np.testing.assert_array_equal(x[0, 0].numpy(), first[:1024].reshape(32, 32))
    np.testing.assert_array_equal(x[0, 2].numpy(), first[2048:].reshape(32, 32))
    np.testing.assert_array_equal(x[PER_BATCH].reshape(-1).numpy(), arrays["data_batch_2"][0])
    xt, yt = read_cifar10(str(root), train=False)
    assert xt.shape == (N_TEST, 3, 32, 32) and yt.tolist() == [v % 10 for v in range(5, 5 + N_TEST)]


def test_datamodule_splits_and_transforms(fake_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = fake_root
    dm = CIFAR10DataModule(str(root), batch_size=8, eval_batch_size=7, val_size=10, download=False)
    assert (
        dm.info.shape == (3, 32, 32) and dm.info.kind == "dequantized" and dm.info.num_dims == 3072
    )
    dm.setup()
    assert [dm.splits[s].shape[0] for s in ("train", "val", "test")] == [50, 10, 10]
    assert dm.splits["train"].dtype == torch.uint8
    # the hold-out is disjoint from the training split (ids in the red top-left sub-pixel)
    train_ids = set(dm.splits["train"][:, 0, 0, 0].tolist())
    val_ids = set(dm.splits["val"][:, 0, 0, 0].tolist())
    assert not train_ids & val_ids
    assert len(dm.labels("val")) == 10 and len(dm.labels("train")) == 50

    batches = list(dm.train_dataloader())
    assert len(batches) == 50 // 8 and all(b.shape == (8, 3, 32, 32) for b in batches)
    b = batches[0]
    assert b.dtype == torch.float32 and b.min() >= 0 and b.max() < 1
    test = list(dm.test_dataloader())
    assert [t.shape[0] for t in test] == [7, 3]
    again = list(dm.test_dataloader())
    torch.testing.assert_close(test[0], again[0])  # evaluation noise is fixed
    # dequantization: floor(256 y) recovers the uint8 pixels
    assert_recovers((test[0] * 256).floor(), dm.splits["test"][:7])


def test_training_flips_are_random_per_image(fake_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = fake_root
    dm = CIFAR10DataModule(str(root), val_size=0, download=False)
    dm.setup()
    x = dm.splits["train"]
    y = dm.train_transform(x, torch.Generator().manual_seed(0))
    pix = (y * 256).floor()
    same = ((pix - x).abs() <= 1).flatten(1).all(1)
    flipped = ((pix - x.flip(-1)).abs() <= 1).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 40  # about half of 50
    dm_noflip = CIFAR10DataModule(str(root), val_size=0, download=False, flip=False)
    dm_noflip.setup()
    pix = (dm_noflip.train_transform(x, torch.Generator().manual_seed(0)) * 256).floor()
    assert_recovers(pix, x)
    undeq = CIFAR10DataModule(str(root), val_size=0, download=False, dequantize=False)
    torch.testing.assert_close(undeq.eval_transform(x[:2], torch.Generator()), x[:2].float() / 255)


def test_config_shape_is_checked(tmp_path: Path) -> None:
    CIFAR10DataModule(str(tmp_path), shape=[3, 32, 32])
    with pytest.raises(ValueError, match=r"data\.shape"):
        CIFAR10DataModule(str(tmp_path), shape=[1, 28, 28])


def test_missing_files_raise_a_helpful_error(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg
    assert "VAELAB_DATA_DIR" in msg and "paths.data_dir" in msg


def test_splits_set_by_hand_need_no_files(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(tmp_path), download=False)
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    dm.splits = {"train": x, "val": x[:0], "test": x}
    dm.prepare_data()  # benchmarks feed random images this way
    assert next(iter(dm.test_dataloader())).shape == (4, 3, 32, 32)


def test_download_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DatasetNotFoundError, match="download failed: OSError: no network"):
        CIFAR10DataModule(str(tmp_path)).prepare_data()


def test_corrupt_batch_is_refused(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), dtype=np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 3072\)"):
        read_cifar10(str(tmp_path), train=False)


# -- issue 26 case 2: a batch is data; unpickling it runs nothing, and every bad file is named ---
class _RunsCode:
    """Unpickling calls ``os.mkdir(marker)`` (it could call anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


class _ObjectArray:
    """An object-dtype numpy array whose element runs code: the carrier hides inside numpy."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        arr = np.empty(1, dtype=object)
        arr[0] = _RunsCode(self.marker)
        return arr.__reduce__()


def _payloads(marker: Path) -> dict[str, object]:
    return {
        "the batch itself": _RunsCode(marker),
        "a dict value": {b"data": _images(2, 0), b"labels": [0, 1], b"x": _RunsCode(marker)},
        "inside labels": {b"data": _images(2, 0), b"labels": [0, _RunsCode(marker)]},
        "an object array": {b"data": _ObjectArray(marker), b"labels": [0]},
    }


@pytest.mark.parametrize("carrier", ["the batch itself", "a dict value", "inside labels", "an object array"])  # fmt: skip
@pytest.mark.parametrize("protocol", [2, 5])
def test_a_batch_that_would_run_code_is_refused_unrun(tmp_path: Path, carrier: str, protocol: int) -> None:  # fmt: skip
    # Before: bare pickle.load ran the payload, and the training ended ok.
    write_fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps(_payloads(marker)[carrier], protocol=protocol))
    with pytest.raises(ValueError, match=rf"CIFAR-10 file {batch}: .*(refused|dtype)") as err:
        CIFAR10DataModule(str(tmp_path), download=False, val_size=5).setup()
    assert not marker.exists(), "unpickling the batch ran its code"
    assert isinstance(err.value, DatasetNotFoundError)  # a data error, as for MNIST files
    assert "data.download=true" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "float data", "not a dict", "bad labels", "labels out of range"])  # fmt: skip
def test_every_bad_batch_names_its_file(tmp_path: Path, damage: str) -> None:
    # Before: "UnpicklingError: pickle data was truncated", no file named.
    write_fake_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = batch.read_bytes()
    data = _images(3, 0)
    bad = {
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty": b"",
        "float data": pickle.dumps({b"data": data.astype(np.float32), b"labels": [0, 1, 2]}),
        "not a dict": pickle.dumps([data, [0, 1, 2]]),
        "bad labels": pickle.dumps({b"data": data, b"labels": [b"cat", b"dog", b"x"]}),
        "labels out of range": pickle.dumps({b"data": data, b"labels": [0, 1, 12]}),
    }[damage]
    batch.write_bytes(bad)
    with pytest.raises(ValueError, match=rf"CIFAR-10 file {batch}: .*data\.download=true"):
        read_cifar10(str(tmp_path), train=False)


def test_python2_batches_with_numpy_1_names_still_load(tmp_path: Path) -> None:
    """The official files (Python 2, protocol 2) name numpy.core.multiarray._reconstruct."""
    write_fake_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = batch.read_bytes()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    batch.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = read_cifar10(str(tmp_path), train=False)
    assert x.shape == (N_TEST, 3, 32, 32) and y.shape == (N_TEST,)
