"""CIFAR-10 as dequantized 8-bit pixels (``data=cifar10``), from the official python pickles.

The official ``cifar-10-batches-py`` folder holds ``data_batch_1`` ... ``data_batch_5`` (10,000 images
each) and ``test_batch``: pickled dicts with ``b"data"`` uint8 ``(N, 3072)`` (the red, green and blue
32x32 planes in turn) and ``b"labels"``. They are decoded once to a uint8 ``(N, 3, 32, 32)`` tensor,
with a restricted unpickler (numpy arrays, dicts, lists, strings and numbers; nothing that calls
code), and every truncated, corrupt or wrongly shaped file is named with how to replace it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaelab.data import transforms as T
from vaelab.data.base import TensorImageDataModule
from vaelab.data.mnist import DatasetCorruptError, DatasetNotFoundError

CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
CIFAR10_FILES = TRAIN_FILES + TEST_FILES


def _batches_dir(data_dir: str) -> Path:
    return Path(data_dir).expanduser() / CIFAR10_FOLDER


def _have_files(data_dir: str) -> bool:
    folder = _batches_dir(data_dir)
    return all((folder / f).is_file() for f in CIFAR10_FILES)


def ensure_cifar10(data_dir: str, download: bool = True) -> None:
    """Make sure the six CIFAR-10 pickles are under ``data_dir/cifar-10-batches-py``; try
    torchvision's download when they are missing.

    Raises:
        DatasetNotFoundError: naming the folder, the six files and how to supply them.
    """
    if _have_files(data_dir):
        return
    reason = "download disabled (download=false)"
    if download:
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(Path(data_dir).expanduser()), train=True, download=True)
            if _have_files(data_dir):
                return
            reason = "torchvision's download finished but the files are still missing"
        except Exception as err:  # network errors come in many types
            reason = f"torchvision's download failed: {type(err).__name__}: {err}"
    folder = _batches_dir(data_dir)
    raise DatasetNotFoundError(
        f"CIFAR-10 not found in {folder}/ ({reason}).\n"
        f"Expected the official python-version pickles there: {', '.join(CIFAR10_FILES)} "
        "(unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html).\n"
        f"Supply them by copying that folder into {Path(data_dir).expanduser()}/, or point vaelab "
        f"at a folder that holds {CIFAR10_FOLDER}/: set VAELAB_DATA_DIR=/path/to/data or pass "
        "paths.data_dir=/path/to/data."
    )


class CIFAR10BatchError(DatasetCorruptError, ValueError):
    """A CIFAR-10 batch file is truncated, corrupt, not the official format, or carries code."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"an array of type {subtype!r}, not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(spec: Any, *args: Any) -> np.dtype:
    name = spec.decode("latin1") if isinstance(spec, bytes) else spec
    if not isinstance(name, str) or name[:1] not in ("u", "i", "b", "f"):
        raise pickle.UnpicklingError(f"a numpy dtype {spec!r}, not a plain number type")
    return np.dtype(name, *args)


def _latin1(text: str, encoding: str = "utf-8", *args: Any) -> bytes:
    # How Python 3 writes bytes at pickle protocol 2: _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}, not latin1")
    return str(text).encode("latin1")


#: The only globals an official python-version batch needs (dicts, lists, str/bytes and ints are
#: pickle opcodes of their own): numpy arrays and their dtypes, under numpy 1's and 2's names.
_BATCH_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and uint8/int numpy arrays; nothing else,
    so a file whose pickle would call anything (``__reduce__``) is refused before it runs."""

    def find_class(self, module: str, name: str) -> Any:
        found = _BATCH_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it asks to call {module}.{name}, which a CIFAR-10 batch never holds (a pickle "
                "that calls something could run any code, so it is refused unread)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent id, which a CIFAR-10 batch never does")


def _refuse(path: Path, what: str) -> CIFAR10BatchError:
    return CIFAR10BatchError(
        f"CIFAR-10 file {path}: {what}. Expected the official python-version batch (a pickled "
        "dict with b'data', uint8 (N, 3072), and b'labels', N ints in 0..9). Replace it from "
        "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html), or delete "
        f"{path.parent}/ and run with data.download=true to fetch the six files anew."
    )


def _load_batch(path: Path) -> tuple[Tensor, Tensor]:
    try:
        with path.open("rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise _refuse(path, f"not a readable batch ({err})") from None
    except OSError:
        raise
    except Exception as err:  # EOFError (truncated), ValueError, struct errors, MemoryError, ...
        raise _refuse(path, f"truncated or corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(d, dict):
        raise _refuse(path, f"it holds a {type(d).__name__}, not a dict")
    for key in (b"data", b"labels"):
        if key not in d:
            raise _refuse(path, f"not a CIFAR-10 batch (missing key {key!r})")
    data, labels = d[b"data"], d[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        got = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise _refuse(path, f"b'data' is a {got}, not uint8")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _refuse(path, f"expected data of shape (N, 3072), got {tuple(data.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(data))
    try:
        y = torch.as_tensor(labels, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as err:
        raise _refuse(path, f"b'labels' are not integers ({err})") from None
    if y.shape != (x.shape[0],):
        raise _refuse(path, f"{x.shape[0]} images but {y.numel()} labels")
    if y.numel() and not bool(((y >= 0) & (y <= 9)).all()):
        raise _refuse(path, "labels outside 0..9")
    return x.reshape(-1, 3, 32, 32), y


def read_cifar10(data_dir: str, train: bool) -> tuple[Tensor, Tensor]:
    """uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)`` of the training or test split."""
    folder = _batches_dir(data_dir)
    parts = [_load_batch(folder / f) for f in (TRAIN_FILES if train else TEST_FILES)]
    return torch.cat([p[0] for p in parts]).contiguous(), torch.cat([p[1] for p in parts])


class CIFAR10DataModule(TensorImageDataModule):
    """CIFAR-10, 50,000 training (minus ``val_size`` held out) and 10,000 test images, 3x32x32.

    Training batches are randomly flipped left-right (as in RealNVP) and dequantized,
    ``(x + u) / 256``; validation and test batches are dequantized with fixed seeded noise and not
    flipped.

    Args:
        flip: random horizontal flips of training images.
        dequantize: ``(x + u)/256`` with u ~ U[0,1); if False, ``x / 255`` (then bits/dim is not a
            bound on a discrete likelihood).
        download: try torchvision's download when the files are missing.

    The other arguments are ``TensorImageDataModule``'s.
    """

    shape = (3, 32, 32)

    def __init__(
        self,
        data_dir: str,
        flip: bool = True,
        dequantize: bool = True,
        download: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        shape: Sequence[int] | None = None,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir,
            batch_size,
            eval_batch_size,
            val_size,
            seed,
            split_seed,
            on_device,
            shape,
            eval_seed=eval_seed,
        )
        self.flip = bool(flip)
        self.dequantize = bool(dequantize)
        self.download = bool(download)
        self.kind = "dequantized" if self.dequantize else "unit"

    def prepare_data(self) -> None:
        if not self.splits:  # splits set by hand (benchmarks, notebooks) need no files
            ensure_cifar10(self.data_dir, self.download)

    def load_split(self, train: bool) -> Tensor:
        ensure_cifar10(self.data_dir, self.download)
        return read_cifar10(self.data_dir, train)[0]

    def train_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.flip:
            x = T.hflip(x, g)
        return self._fixed(x, g)

    def eval_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        return self._fixed(x, g)

    def _fixed(self, x: Tensor, g: torch.Generator) -> Tensor:
        return T.dequantize(x, g) if self.dequantize else T.to_unit(x)

    def train_mean(self) -> Tensor:
        if not self.splits:
            self.setup()
        m = self.splits["train"].float().mean(0)
        if self.flip:  # flipped with probability 1/2
            m = (m + m.flip(-1)) / 2
        return (m + 0.5) / 256.0 if self.dequantize else m / 255.0

    def labels(self, split: str = "test") -> Tensor:
        """Class labels aligned with ``splits[split]``."""
        if split == "test":
            return read_cifar10(self.data_dir, train=False)[1]
        y = read_cifar10(self.data_dir, train=True)[1]
        perm = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = (
            perm[: self.val_size].sort().values,
            perm[self.val_size :].sort().values,
        )
        return y[val_idx] if split == "val" else y[train_idx]
