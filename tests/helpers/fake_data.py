"""Tiny fake datasets written in the real on-disk formats, so tests never need the network.

``write_fake_mnist(root, n_train, n_test)`` writes ``root/MNIST/raw/`` with the four uncompressed
IDX files that torchvision's MNIST reader (and ``vaelab.data.MNISTDataModule``) reads. The images
are not noise: each label has its own pattern (a bar whose position is set by the digit), with
random jitter and speckle, so a model can learn something and latent maps coloured by label show
structure.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_idx(path: str | Path, data: torch.Tensor) -> Path:
    """Write a tensor as an IDX file of unsigned bytes (magic ``0x0000 08 <ndim>``), big-endian dims."""
    path = Path(path)
    data = data.to(torch.uint8).contiguous()
    header = struct.pack(">I", 0x0800 + data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    path.write_bytes(header + data.numpy().tobytes())
    return path


def fake_digits(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(N, 28, 28)`` uint8 images: label ``d`` draws a vertical and a horizontal bar at
    positions set by ``d``, shifted by up to 2 pixels, with 3% random speckle."""
    n = labels.shape[0]
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    shifts = torch.randint(-2, 3, (n, 2), generator=generator)
    for i, d in enumerate(labels.tolist()):
        col = 3 + 2 * d + int(shifts[i, 0])
        row = 3 + 2 * ((3 * d) % 10) + int(shifts[i, 1])
        images[i, 4:24, col : col + 3] = 255
        images[i, row : row + 3, 4:24] = 200
    speckle = torch.rand(n, 28, 28, generator=generator) < 0.03
    images[speckle] = torch.randint(64, 256, (int(speckle.sum()),), generator=generator).to(
        torch.uint8
    )
    return images


def write_fake_mnist(
    root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0
) -> Path:
    """Write a fake MNIST with ``n_train`` training and ``n_test`` test images under ``root``.

    Args:
        root: the data folder (what ``paths.data_dir`` / ``VAELAB_DATA_DIR`` point at); the files
            go to ``root/MNIST/raw/``.
        n_train: training images (the DataModule holds ``val_size`` of them out for validation).
        n_test: test images.
        seed: seed of labels, jitter and speckle.

    Returns:
        ``root`` as a ``Path``.
    """
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10  # every digit present, in a fixed shuffled order
        labels = labels[torch.randperm(n, generator=g)]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", fake_digits(labels, g))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_fake_larochelle(root: str | Path, sizes: tuple[int, int, int] = (30, 10, 12)) -> dict:
    """``root/BinarizedMNIST/binarized_mnist_{train,valid,test}.amat`` in Larochelle's format (one
    image per line, 784 space-separated 0/1 values). Returns the written ``(N, 1, 28, 28)`` uint8
    tensors by split name (``train``, ``val``, ``test``)."""
    out = Path(root) / "BinarizedMNIST"
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(11)
    written = {}
    for split, fname, n in zip(("train", "val", "test"), ("train", "valid", "test"), sizes):
        x = (torch.rand(n, 784, generator=g) < 0.2).to(torch.uint8)
        lines = (" ".join(str(int(v)) for v in row) for row in x)
        (out / f"binarized_mnist_{fname}.amat").write_text("\n".join(lines) + "\n")
        written[split] = x.reshape(n, 1, 28, 28)
    return written
