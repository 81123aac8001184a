"""MNIST as 8-bit pixels (``data=mnist``) or binarized (``data=binarized_mnist``)."""

from __future__ import annotations

import math
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
BINARIZE_MODES = ("dynamic", "static", "threshold", "larochelle")
# The standard fixed binarization of MNIST (Larochelle & Murray 2011), as used by Burda et al.'s
# appendix and most papers that say "static" / "fixed" binarized MNIST: 50,000 train, 10,000
# valid, 10,000 test images; each line of a file is one image, 784 space-separated 0/1 values.
LAROCHELLE_FILES = {
    "train": "binarized_mnist_train.amat",
    "val": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
LAROCHELLE_DIR = "BinarizedMNIST"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and could not be downloaded."""


class DatasetCorruptError(DatasetNotFoundError):
    """A dataset file is there but truncated or corrupt (its size does not match its header)."""


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


def larochelle_dir(data_dir: str) -> Path:
    """Where ``binarize: larochelle`` looks for the ``.amat`` files: ``data_dir/BinarizedMNIST``."""
    return Path(data_dir).expanduser() / LAROCHELLE_DIR


def read_amat(path: Path) -> Tensor:
    """uint8 ``(N, 1, 28, 28)`` of 0/1 from a Larochelle ``.amat`` file (one image per line).

    Raises:
        ValueError: naming the file, if a line does not hold 784 values in {0, 1}.
    """
    import numpy as np

    raw = path.read_bytes()
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    digits = np.frombuffer(raw, dtype=np.uint8)
    digits = digits[(digits != ord(" ")) & (digits != ord("\n")) & (digits != ord("\r"))]
    ok = (digits == ord("0")) | (digits == ord("1"))
    if not ok.all() or digits.size != len(lines) * 784:
        raise ValueError(
            f"{path} is not a binarized-MNIST .amat file: expected {len(lines)} lines of 784 "
            f"space-separated 0/1 values, found {digits.size} values"
            + ("" if ok.all() else " including characters other than 0 and 1")
            + f". Fetch the original from {LAROCHELLE_URL}{path.name}"
        )
    x = torch.from_numpy((digits - ord("0")).astype(np.uint8).copy())
    return x.reshape(len(lines), 1, 28, 28)


def ensure_larochelle(data_dir: str) -> dict[str, Path]:
    """The three ``.amat`` paths, or a ``DatasetNotFoundError`` naming them and their source."""
    root = larochelle_dir(data_dir)
    paths = {split: root / name for split, name in LAROCHELLE_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"binarize=larochelle needs the standard binarized MNIST of Larochelle & Murray "
            f"(2011) in {root}/, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Expected: "
            f"{', '.join(LAROCHELLE_FILES.values())}. They are published at {LAROCHELLE_URL} "
            f"(e.g. wget {LAROCHELLE_URL}binarized_mnist_test.amat -P {root}); vaelab never "
            "downloads them. Or use binarize=dynamic (the IWAE paper's main protocol)."
        )
    return paths


def check_idx_file(path: Path, shape: tuple[int | None, ...] | None = None) -> None:
    """Refuse an IDX file whose size is not what its header says (truncated, or not IDX at all),
    or whose dimensions are not ``shape`` (``None`` entries: any size), e.g. a labels file in the
    images' place.

    Raises:
        DatasetCorruptError: naming the file, the sizes and how to replace it.
    """
    check_idx_shape(path, shape)
    if not path.is_file():
        return  # torchvision reads the .gz, or ensure_mnist reports the missing file
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4)
        ndim = header[3] if len(header) == 4 else 0
        dims = f.read(4 * ndim)
    expected = None
    if len(header) == 4 and header[:3] == b"\x00\x00\x08" and len(dims) == 4 * ndim:
        shape = [int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim)]
        expected = 4 + 4 * ndim + math.prod(shape)
        if size == expected:
            return
    what = f"{expected:,} bytes expected from its header" if expected else "no uint8 IDX header"
    raise DatasetCorruptError(
        f"MNIST file {path} is {size:,} bytes ({what}): it is truncated or corrupt. Delete it "
        f"and copy it again (or delete {path.parent}/ and run with data.download=true to fetch "
        "the four files anew)."
    )


def _idx_dims(path: Path) -> list[int] | None:
    with path.open("rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[:3] != b"\x00\x00\x08":
            return None
        dims = f.read(4 * header[3])
    if len(dims) != 4 * header[3]:
        return None
    return [int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(header[3])]


def check_idx_shape(path: Path, shape: tuple[int | None, ...] | None) -> None:
    """Issue 26: refuse a valid IDX file of the wrong kind (a labels file where images belong)."""
    if shape is None or not path.is_file():
        return
    dims = _idx_dims(path)
    if dims is None:
        return  # not IDX at all: the size check says so
    if len(dims) != len(shape) or any(e is not None and d != e for d, e in zip(dims, shape)):
        want = " x ".join("N" if e is None else str(e) for e in shape)
        kind = "a labels file" if len(dims) == 1 else f"an IDX file of {len(dims)} dimensions"
        raise DatasetCorruptError(
            f"MNIST file {path} holds {' x '.join(map(str, dims))} values ({kind}), where "
            f"{len(shape)}-dimensional {want} uint8 {'images' if len(shape) == 3 else 'labels'} "
            f"are expected: it is not {path.name}. Copy the right file there (or delete "
            f"{path.parent}/ and run with data.download=true to fetch the four files anew)."
        )


def read_mnist_images(data_dir: str, train: bool) -> Tensor:
    """uint8 (N, 1, 28, 28) decoded once by torchvision's IDX reader."""
    from torchvision.datasets import MNIST

    check_idx_file(_raw_dir(data_dir) / MNIST_FILES[0 if train else 2], (None, 28, 28))
    ds = MNIST(data_dir, train=train, download=False)
    return ds.data.unsqueeze(1).contiguous()


def read_mnist_labels(data_dir: str, train: bool) -> Tensor:
    from torchvision.datasets import MNIST

    check_idx_file(_raw_dir(data_dir) / MNIST_FILES[1 if train else 3], (None,))
    return MNIST(data_dir, train=train, download=False).targets


class MNISTDataModule(TensorImageDataModule):
    """MNIST, 60,000 training (minus ``val_size`` held out) and 10,000 test images.

    Args:
        binarize: ``None`` for 8-bit pixels; ``dynamic`` (a fresh Bernoulli(x/255) draw each time a
            training image is seen; validation and test are binarized once with a draw seeded by
            ``eval_seed``, so every run is evaluated on the same tensors), ``static`` (one draw of
            every split seeded by the training seed; not the standard fixed binarization),
            ``larochelle`` (the standard fixed binarized MNIST of Larochelle & Murray 2011, read
            from ``data_dir/BinarizedMNIST/binarized_mnist_{train,valid,test}.amat``: 50,000
            training, 10,000 validation (the official ``valid`` file; ``val_size`` is ignored,
            except that ``val_size=0`` trains on train + valid) and 10,000 test images) or
            ``threshold`` (x/255 > 0.5).
        dequantize: for 8-bit pixels, ``(x + u)/256`` with u ~ U[0,1) (validation and test use a
            fixed seeded u); if False, ``x / 255`` (then bits/dim is not a bound on a discrete
            likelihood).
        download: try torchvision's download when the files are missing.

    The other arguments are ``TensorImageDataModule``'s.
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
        if binarize is not None and binarize not in BINARIZE_MODES:
            raise ValueError(f"binarize must be one of {BINARIZE_MODES} or null, got {binarize!r}")
        self.binarize = binarize
        self.dequantize = bool(dequantize)
        self.download = bool(download)
        self.kind = "binary" if binarize else ("dequantized" if self.dequantize else "unit")

    def prepare_data(self) -> None:
        if self.splits:
            return
        if self.binarize == "larochelle":
            ensure_larochelle(self.data_dir)
        else:
            ensure_mnist(self.data_dir, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.splits or self.binarize != "larochelle":
            super().setup(stage)
            return
        paths = ensure_larochelle(self.data_dir)
        split = {name: read_amat(p) for name, p in paths.items()}
        if self.val_size == 0:  # train on train + valid, no validation
            split["train"] = torch.cat([split["train"], split["val"]])
            split["val"] = split["val"][:0]
        self.splits = split

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
            # Seeded by the evaluation seed, never the training seed: 10_000 (validation) and
            # 10_001 (test) by default, the draws every earlier run with seed 0 was evaluated on.
            g = torch.Generator().manual_seed(10_000 + self.eval_seed + (name == "test"))
            x = torch.bernoulli(x.float() / 255.0, generator=g).to(torch.uint8)
        return x

    def train_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.binarize == "dynamic":
            return T.dynamic_binarize(x, g)
        return self._fixed(x, g)

    def eval_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        return self._fixed(x, g)

    def _fixed(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.binarize in ("static", "dynamic", "larochelle"):
            return x.float()  # already 0/1 (eval splits of dynamic were drawn once)
        if self.binarize == "threshold":
            return T.threshold_binarize(x)
        return T.dequantize(x, g) if self.dequantize else T.to_unit(x)

    def train_mean(self) -> Tensor:
        if not self.splits:
            self.setup()
        x = self.splits["train"]
        if self.binarize in ("static", "larochelle"):  # stored as 0/1
            return x.float().mean(0)
        if self.binarize == "threshold":
            return T.threshold_binarize(x).mean(0)
        if self.binarize is None and self.dequantize:  # E[(x + u) / 256]
            return (x.float() + 0.5).mean(0) / 256.0
        return x.float().mean(0) / 255.0  # dynamic: E[Bernoulli(x / 255)]; or plain x / 255

    def labels(self, split: str = "test") -> Tensor:
        """Digit labels aligned with ``splits[split]`` (for latent-space plots)."""
        if self.binarize == "larochelle":
            raise ValueError("Larochelle's binarized MNIST files carry no labels")
        if split == "test":
            return read_mnist_labels(self.data_dir, train=False)
        y = read_mnist_labels(self.data_dir, train=True)
        perm = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = (
            perm[: self.val_size].sort().values,
            perm[self.val_size :].sort().values,
        )
        return y[val_idx] if split == "val" else y[train_idx]
