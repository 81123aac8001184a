"""MNIST as 8-bit pixels (``data=mnist``) or binarized (``data=binarized_mnist``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from vaelab.data import transforms as T
from vaelab.data.base import TensorImageDataModule

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
BINARIZE_MODES = ("dynamic", "static", "threshold")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and could not be downloaded."""


def _raw_dir(data_dir: str) -> Path:
    return Path(data_dir).expanduser() / "MNIST" / "raw"


def _have_files(data_dir: str) -> bool:
    raw = _raw_dir(data_dir)
    return all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in MNIST_FILES)


def ensure_mnist(data_dir: str, download: bool = True) -> None:
    """Make sure the four MNIST files are under ``data_dir/MNIST/raw``; try torchvision's download.

    Raises:
        DatasetNotFoundError: naming the folder, the four files and how to supply them.
    """
    if _have_files(data_dir):
        return
    reason = "download disabled (download=false)"
    if download:
        try:
            from torchvision.datasets import MNIST

            MNIST(data_dir, train=True, download=True)
            if _have_files(data_dir):
                return
            reason = "torchvision's download finished but the files are still missing"
        except Exception as err:  # network errors come in many types
            reason = f"torchvision's download failed: {type(err).__name__}: {err}"
    raw = _raw_dir(data_dir)
    raise DatasetNotFoundError(
        f"MNIST not found in {raw}/ ({reason}).\n"
        f"Expected the four uncompressed IDX files there: {', '.join(MNIST_FILES)}.\n"
        "Supply them by copying them into that folder, or point vaelab at a folder that holds "
        "MNIST/raw/: set VAELAB_DATA_DIR=/path/to/data or pass paths.data_dir=/path/to/data."
    )


def read_mnist_images(data_dir: str, train: bool) -> Tensor:
    """uint8 (N, 1, 28, 28) decoded once by torchvision's IDX reader."""
    from torchvision.datasets import MNIST

    ds = MNIST(data_dir, train=train, download=False)
    return ds.data.unsqueeze(1).contiguous()


def read_mnist_labels(data_dir: str, train: bool) -> Tensor:
    from torchvision.datasets import MNIST

    return MNIST(data_dir, train=train, download=False).targets


class MNISTDataModule(TensorImageDataModule):
    """MNIST, 60,000 training (minus ``val_size`` held out) and 10,000 test images.

    Args:
        binarize: ``None`` for 8-bit pixels; ``dynamic`` (a fresh Bernoulli(x/255) draw each time a
            training image is seen; validation and test are binarized once with a seeded draw, so
            evaluation is deterministic), ``static`` (one seeded draw of every split, fixed for the
            run) or ``threshold`` (x/255 > 0.5).
        dequantize: for 8-bit pixels, ``(x + u)/256`` with u ~ U[0,1) (validation and test use a
            fixed seeded u); if False, ``x / 255`` (then bits/dim is not a bound on a discrete
            likelihood).
        download: try torchvision's download when the files are missing.
        (others: see ``TensorImageDataModule``)
    """

    shape = (1, 28, 28)

    def __init__(
        self,
        data_dir: str,
        binarize: str | None = None,
        dequantize: bool = True,
        download: bool = True,
        batch_size: int = 100,
        eval_batch_size: int = 500,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, eval_batch_size, val_size, seed, split_seed, on_device, shape
        )
        if binarize is not None and binarize not in BINARIZE_MODES:
            raise ValueError(f"binarize must be one of {BINARIZE_MODES} or null, got {binarize!r}")
        self.binarize = binarize
        self.dequantize = bool(dequantize)
        self.download = bool(download)
        self.kind = "binary" if binarize else "pixels"

    def prepare_data(self) -> None:
        if not self.splits:
            ensure_mnist(self.data_dir, self.download)

    def load_split(self, train: bool) -> Tensor:
        ensure_mnist(self.data_dir, self.download)
        x = read_mnist_images(self.data_dir, train)
        if self.binarize == "static":
            # One seeded draw, fixed for the run (train and test with different streams).
            g = torch.Generator().manual_seed(self.seed * 2 + int(train))
            x = torch.bernoulli(x.float() / 255.0, generator=g).to(torch.uint8)
        return x

    def prepare_eval_split(self, x: Tensor, name: str) -> Tensor:
        if self.binarize == "dynamic":
            g = torch.Generator().manual_seed(10_000 + self.seed + (name == "test"))
            x = torch.bernoulli(x.float() / 255.0, generator=g).to(torch.uint8)
        return x

    def train_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.binarize == "dynamic":
            return T.dynamic_binarize(x, g)
        return self._fixed(x, g)

    def eval_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        return self._fixed(x, g)

    def _fixed(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.binarize in ("static", "dynamic"):
            return x.float()  # already 0/1 (eval splits of dynamic were drawn once)
        if self.binarize == "threshold":
            return T.threshold_binarize(x)
        return T.dequantize(x, g) if self.dequantize else T.to_unit(x)

    def train_mean(self) -> Tensor:
        if not self.splits:
            self.setup()
        x = self.splits["train"]
        if self.binarize == "static":  # stored as 0/1
            return x.float().mean(0)
        if self.binarize == "threshold":
            return T.threshold_binarize(x).mean(0)
        if self.binarize is None and self.dequantize:  # E[(x + u) / 256]
            return (x.float() + 0.5).mean(0) / 256.0
        return x.float().mean(0) / 255.0  # dynamic: E[Bernoulli(x / 255)]; or plain x / 255

    def labels(self, split: str = "test") -> Tensor:
        """Digit labels aligned with ``splits[split]`` (for latent-space plots)."""
        if split == "test":
            return read_mnist_labels(self.data_dir, train=False)
        y = read_mnist_labels(self.data_dir, train=True)
        perm = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = (
            perm[: self.val_size].sort().values,
            perm[self.val_size :].sort().values,
        )
        return y[val_idx] if split == "val" else y[train_idx]
