"""DataModules: MNIST, binarized MNIST, CIFAR-10; decoded once, batched by indexing."""

from vaelab.data.base import DataInfo, TensorImageDataModule
from vaelab.data.loader import IndexBatchLoader
from vaelab.data.mnist import DatasetNotFoundError, MNISTDataModule

__all__ = [
    "DataInfo",
    "DatasetNotFoundError",
    "IndexBatchLoader",
    "MNISTDataModule",
    "TensorImageDataModule",
]

from vaelab.data.cifar10 import CIFAR10DataModule

__all__ += ["CIFAR10DataModule"]
