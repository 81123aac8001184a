"""Batching by indexing into an in-memory uint8 tensor (on the model's device when there is one).

No per-sample transforms and no worker processes: a batch is ``data[idx]`` plus one vectorised
transform (binarize, dequantize, flip). Under DDP nothing is padded or repeated: training ranks
take disjoint strides of a shared permutation, evaluation ranks take whole batches in turn.

The training loader is resumable inside an epoch, the Lightning way: Lightning keeps the
``state_dict()`` of a training loader that has one in every checkpoint (``loops.fit_loop
.state_dict.combined_loader``) and hands it to ``load_state_dict()`` when a fit restarts inside an
epoch, before the loader is iterated again; see :meth:`IndexBatchLoader.state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

BatchTransform = Callable[[Tensor, torch.Generator], Tensor]


class IndexBatchLoader:
    """An iterable of float batches ``transform(data[idx])``, idx from a (shuffled) permutation.

    Args:
        data: uint8 tensor (N, C, H, W), already on the target device.
        batch_size: examples per batch (the last may be smaller unless ``drop_last``).
        transform: ``(uint8 batch, generator) -> float batch``.
        shuffle: reshuffle each epoch (seeded by ``seed`` and the epoch number).
        drop_last: drop a last incomplete batch (training); keep it for evaluation.
        seed: base seed for the order and for random transforms.
        rank: this process's rank; its shard is strided and unpadded.
        world_size: the number of processes.
        epoch_fn: returns the current epoch (so a resumed run keeps the epoch's order); if None
            the loader counts its own passes.
        steps_per_batch: K; training only. Each item is then K consecutive minibatches stacked,
            ``(K, B, ...)`` (the last of an epoch holds the remainder), the very minibatches
            (same examples, same random transform draws) that ``K = 1`` yields one by one.

    Resuming inside an epoch (training only): :meth:`state_dict` says how many minibatches ``m``
    of which epoch have been handed out; after :meth:`load_state_dict`, the next pass over that
    same epoch starts at minibatch ``m``, with the same order and the same transform noise as the
    uninterrupted pass, and K-blocks on the same boundaries (``m`` is always a block boundary).
    The noise generator is not saved: the pass reseeds it from ``(seed, rank, epoch)`` as usual
    and replays the ``m`` transforms it skips, which leaves it exactly where ``m`` draws left it.
    A pass over any other epoch ignores the state.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        transform: BatchTransform,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
        steps_per_batch: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_batch < 1 or (steps_per_batch > 1 and not shuffle):
            raise ValueError(
                f"steps_per_batch must be >= 1 and is for the (shuffled) training loader only, "
                f"got {steps_per_batch} (shuffle={shuffle})"
            )
        self.steps_per_batch = int(steps_per_batch)
        self.data = data
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.epoch_fn = epoch_fn
        self.generator = torch.Generator(device=data.device)
        # The training pass in progress: its epoch and the minibatches handed out so far.
        self._pass_epoch = -1
        self._handed_out = 0
        self._resume: dict[str, int] | None = None  # from load_state_dict, for the next pass

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.num_batches_total, self.world_size))
        return math.ceil(self.num_minibatches / self.steps_per_batch)

    @property
    def num_minibatches(self) -> int:
        """Training minibatches (optimizer steps) per epoch on this rank."""
        n = self.examples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def examples_per_rank(self) -> int:
        """Training examples per rank: the same on every rank (``N // world_size``), so all ranks
        take the same number of optimizer steps (DDP would wait forever on a missing step)."""
        return self.data.shape[0] // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """The position in the current training pass, in ints (checkpoints load weights-only).

        ``minibatches`` counts the minibatches handed out in epoch ``epoch`` (a K-block counts
        K, the last block its remainder). It is advanced when an item is handed out, and Lightning
        fetches the next item only when the next training batch starts (it does not prefetch
        from a loader with a length: ``_PrefetchDataFetcher.__iter__``), so in every hook where a
        checkpoint is written (``on_train_batch_end``, ``on_validation_end``,
        ``on_train_epoch_end``) it is the number of minibatches whose optimizer steps are done.
        (A checkpoint written by ``ModelCheckpoint(save_on_exception=True)`` while a training step
        is failing counts that step's minibatches too.) The sizes are kept so that a resume under
        another batch size, K or number of processes is refused rather than silently off.
        """
        return {
            "epoch": self._pass_epoch,
            "minibatches": self._handed_out,
            "num_minibatches": self.num_minibatches if self.shuffle else 0,
            "batch_size": self.batch_size,
            "steps_per_batch": self.steps_per_batch,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the next training pass over epoch ``state_dict["epoch"]`` where it stopped."""
        self._resume = {k: int(v) for k, v in state_dict.items()}

    def _resume_position(self, epoch: int) -> int:
        """Minibatches of ``epoch`` to skip: those of a loaded state for this epoch, else 0."""
        state, self._resume = self._resume, None
        if not state or state.get("epoch") != epoch or not state.get("minibatches"):
            return 0
        now = {k: v for k, v in self.state_dict().items() if k not in ("epoch", "minibatches")}
        was = {k: state.get(k) for k in now}
        if was != now:
            raise ValueError(
                f"cannot resume the training data inside epoch {epoch}: the checkpoint was "
                f"written with {was}, this run has {now}. Resume with the checkpoint's settings, "
                "or from a checkpoint written at an epoch end"
            )
        return min(state["minibatches"], self.num_minibatches)

    def __iter__(self) -> Iterator[Tensor]:
        n = self.data.shape[0]
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        self.epoch += 1
        if self.shuffle:
            # Training: the same permutation on every rank (seed + epoch), then a disjoint stride
            # of examples per rank.
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).to(self.data.device)[
                self.rank :: self.world_size
            ][: self.examples_per_rank]
            self.generator.manual_seed(self.seed + 7919 * (self.rank + 1) + 104729 * epoch)
            n_mb, k, bs = self.num_minibatches, self.steps_per_batch, self.batch_size

            def minibatch(i: int) -> Tensor:
                # index_select, not data[idx]: the same copy, and on a CPU advanced indexing's
                # general kernel takes 24 against 4 us at batch 20 (76 against 6 at batch 100).
                idx = order[i * bs : (i + 1) * bs]
                return self.transform(self.data.index_select(0, idx), self.generator)

            first = self._resume_position(epoch)
            self._pass_epoch, self._handed_out = epoch, first
            # A resumed pass replays the transform draws of the minibatches already trained on
            # (the same calls on the same images, results dropped), so the generator is where
            # the uninterrupted pass had it: exact for any transform, on any device and on every
            # DDP rank (each replays its own stream; a saved generator state would be rank 0's).
            # It costs what those transforms cost in training, once per resume: at most 0.7 s
            # (549 minibatches of 100 MNIST images, dynamic binarization, one CPU thread).
            for i in range(first):
                minibatch(i)
            for start in range(first, n_mb, k):
                end = min(start + k, n_mb)
                # Counted before the item is handed out: the pass is suspended at the yield while
                # Lightning trains on it and writes checkpoints (see state_dict).
                self._handed_out = end
                yield (
                    minibatch(start)
                    if k == 1
                    else torch.stack([minibatch(i) for i in range(start, end)])
                )
            return
        # Evaluation: whole batches are dealt to ranks (batch b goes to rank b % world_size), and
        # each batch's noise is seeded by its global index, so every example is seen exactly once
        # and gets the same batch-mates and noise whatever the number of processes.
        bs = self.eval_batch_size
        for b in range(self.rank, self.num_batches_total, self.world_size):
            self.generator.manual_seed(self.seed + 7919 * (b + 1))
            yield self.transform(self.data[b * bs : (b + 1) * bs], self.generator)

    @property
    def eval_batch_size(self) -> int:
        """Evaluation batch size: ``batch_size``, unless that leaves a rank without a batch (fewer
        batches than ranks; Lightning refuses an empty loader), then ``N // world_size``."""
        n = self.data.shape[0]
        if self.world_size > 1 and math.ceil(n / self.batch_size) < self.world_size:
            if n < self.world_size:
                raise ValueError(
                    f"{n} evaluation examples cannot be shared by {self.world_size} processes"
                )
            return n // self.world_size
        return self.batch_size

    @property
    def num_batches_total(self) -> int:
        """Evaluation batches over all ranks."""
        return math.ceil(self.data.shape[0] / self.eval_batch_size)


def global_batch_index(batch_idx: int, rank: int, world_size: int) -> int:
    """Index of an evaluation batch over all ranks (see ``IndexBatchLoader.__iter__``)."""
    return batch_idx * world_size + rank
