"""DataModule base: decode a dataset once to uint8 tensors, batch by indexing on the model's device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from vaelab.data.loader import BatchTransform, IndexBatchLoader
from vaelab.units import check_kind


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data: its shape and kind.

    ``kind`` is ``"binary"`` (values in {0, 1}), ``"dequantized"`` (8-bit images as
    ``(x + u) / 256``) or ``"unit"`` (8-bit images as ``x / 255``); see ``vaelab.units``.
    """

    shape: tuple[int, ...]
    kind: str

    @property
    def num_dims(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class TensorImageDataModule(L.LightningDataModule):
    """Common machinery: splits, devices, loaders. Subclasses implement ``load_split``.

    Args:
        data_dir: dataset root.
        batch_size: training batch size (per process).
        eval_batch_size: validation/test batch size (per process).
        val_size: training images held out for validation (a fixed split seeded by ``split_seed``);
            0 disables validation.
        seed: the training seed: shuffling and the random transforms of training batches.
        split_seed: seed of the validation hold-out.
        eval_seed: seed of everything random in the validation and test data (their
            dequantization noise; the draw that binarizes them), independent of ``seed``, so every
            job of a seed sweep is evaluated on identical tensors. Default 0 (the evaluation data
            of every run before this option existed, for training seed 0).
        on_device: put the uint8 tensors on the model's device (GPU) and batch there.
        shape: the expected (C, H, W), as written once in the data config (``${data.shape}``);
            checked against the dataset's shape.
    """

    shape: tuple[int, ...] = ()
    kind: str = ""  # set by each subclass: binary, dequantized or unit (no default)

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 100,
        eval_batch_size: int = 500,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
        on_device: bool = True,
        shape: Sequence[int] | None = None,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        if shape is not None and tuple(int(s) for s in shape) != tuple(self.shape):
            raise ValueError(
                f"{type(self).__name__} holds images of shape {tuple(self.shape)}, but the config "
                f"says data.shape={list(shape)}; fix data.shape"
            )
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = int(val_size)
        self.seed = int(seed)
        self.split_seed = int(split_seed)
        self.eval_seed = int(eval_seed)
        self.on_device = bool(on_device)
        self.splits: dict[str, Tensor] = {}
        self._steps_per_batch = 1  # minibatches per training item: use_step_blocks
        self._device_cache: dict[tuple[str, str], Tensor] = {}

    # -- subclasses ----------------------------------------------------------------------------
    def load_split(self, train: bool) -> Tensor:
        """uint8 tensor (N, C, H, W) of the official training or test split."""
        raise NotImplementedError

    def train_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        raise NotImplementedError

    def eval_transform(self, x: Tensor, g: torch.Generator) -> Tensor:
        return self.train_transform(x, g)

    def prepare_eval_split(self, x: Tensor, name: str) -> Tensor:
        """Hook to fix an evaluation split once (e.g. binarize it with a seeded draw)."""
        return x

    # -- Lightning -----------------------------------------------------------------------------
    @property
    def info(self) -> DataInfo:
        return DataInfo(shape=tuple(self.shape), kind=check_kind(self.kind))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train = self.load_split(train=True)
        test = self.load_split(train=False)
        if tuple(train.shape[1:]) != tuple(self.shape) or tuple(test.shape[1:]) != tuple(
            self.shape
        ):
            raise ValueError(
                f"{type(self).__name__}: expected images of shape {self.shape}, got "
                f"{tuple(train.shape[1:])} (train) and {tuple(test.shape[1:])} (test)"
            )
        if not 0 <= self.val_size < train.shape[0]:
            raise ValueError(f"val_size must be in [0, {train.shape[0]}), got {self.val_size}")
        perm = torch.randperm(
            train.shape[0], generator=torch.Generator().manual_seed(self.split_seed)
        )
        val_idx, train_idx = (
            perm[: self.val_size].sort().values,
            perm[self.val_size :].sort().values,
        )
        self.splits = {
            "train": train[train_idx],
            "val": self.prepare_eval_split(train[val_idx], "val"),
            "test": self.prepare_eval_split(test, "test"),
        }

    def _device(self) -> torch.device:
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _on_device(self, split: str) -> Tensor:
        device = self._device()
        key = (split, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = self.splits[split].to(device)
        return self._device_cache[key]

    def _loader(self, split: str, train: bool) -> IndexBatchLoader:
        if not self.splits:
            self.setup()
        rank, world = self._rank_world()
        transform: BatchTransform = self.train_transform if train else self.eval_transform
        return IndexBatchLoader(
            self._on_device(split),
            self.batch_size if train else self.eval_batch_size,
            transform,
            shuffle=train,
            drop_last=train,
            seed=self.seed if train else self.eval_seed,
            rank=rank,
            world_size=world,
            epoch_fn=self._current_epoch if (train and self.trainer is not None) else None,
            steps_per_batch=self._steps_per_batch if train else 1,
        )

    def use_step_blocks(self, k: int) -> None:
        """Hand out training data in blocks of ``k`` minibatches, ``(k, B, ...)`` (``k = 1``:
        one minibatch ``(B, ...)``), from the next training loader on; the module's step plan
        (``vaelab.training.policy``) calls it at each fit. See ``IndexBatchLoader``."""
        if int(k) < 1:
            raise ValueError(f"use_step_blocks needs k >= 1, got {k}")
        self._steps_per_batch = int(k)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> IndexBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> IndexBatchLoader | list:
        if self.val_size == 0:
            return []
        return self._loader("val", train=False)

    def test_dataloader(self) -> IndexBatchLoader:
        return self._loader("test", train=False)

    def train_mean(self) -> Tensor:
        """The mean training image ``(C, H, W)`` in model units: the expected value of what
        ``train_transform`` delivers. The default assumes ``x / 255``; subclasses whose transform
        differs override it."""
        if not self.splits:
            self.setup()
        return self.splits["train"].float().mean(0) / 255.0

    def batch(self, split: str = "test", n: int = 64) -> Tensor:
        """The first ``n`` evaluation-transformed images of a split (for pictures and notebooks)."""
        if not self.splits:
            self.setup()
        x = self.splits[split][:n]
        return self.eval_transform(x, torch.Generator().manual_seed(self.eval_seed))
