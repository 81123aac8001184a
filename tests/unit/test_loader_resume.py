"""``IndexBatchLoader.state_dict`` / ``load_state_dict``: a training pass resumed inside an epoch
hands out exactly the rest of the uninterrupted pass (images, noise, K-blocks), on every rank."""

from __future__ import annotations

import io

import pytest
import torch

from vaelab.data.loader import IndexBatchLoader
from vaelab.data.transforms import dynamic_binarize


def loader(epoch: list[int], k: int = 1, rank: int = 0, world: int = 1, bs: int = 3):
    data = torch.randint(0, 256, (47, 1, 2, 2), generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )
    return IndexBatchLoader(
        data,
        bs,
        dynamic_binarize,
        shuffle=True,
        drop_last=True,
        seed=5,
        rank=rank,
        world_size=world,
        epoch_fn=lambda: epoch[0],
        steps_per_batch=k,
    )


def flat(items: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    return [x for item in items for x in (item if k > 1 else [item])]


@pytest.mark.parametrize(("k", "world"), [(1, 1), (3, 1), (1, 2), (4, 3)])
def test_a_pass_resumed_after_m_items_hands_out_the_rest_of_the_uninterrupted_pass(
    k: int, world: int
) -> None:
    for rank in range(world):
        epoch = [2]
        whole = list(loader(epoch, k, rank, world))
        for m in range(1, len(whole) + 1):
            first = loader(epoch, k, rank, world)
            it = iter(first)
            handed = [next(it) for _ in range(m)]
            state = first.state_dict()
            # The position is what was handed out (Lightning trains on an item before it asks
            # for the next one), and it survives torch.save + weights-only load.
            assert state["epoch"] == 2 and state["minibatches"] == len(flat(handed, k))
            buf = io.BytesIO()
            torch.save(state, buf)
            buf.seek(0)
            again = loader(epoch, k, rank, world)
            again.load_state_dict(torch.load(buf, weights_only=True))
            rest = list(again)
            # The same K-blocks (same boundaries) and, inside, bitwise the same minibatches.
            assert [x.shape for x in rest] == [x.shape for x in whole[m:]]
            assert all(torch.equal(a, b) for a, b in zip(rest, whole[m:], strict=True))
            assert again.state_dict()["minibatches"] == first.num_minibatches
            # Only that one pass is resumed: the next starts the epoch from its beginning.
            assert all(torch.equal(a, b) for a, b in zip(list(again), whole, strict=True))


def test_a_state_of_another_epoch_is_ignored() -> None:
    epoch = [0]
    lo = loader(epoch)
    it = iter(lo)
    next(it)
    state = lo.state_dict()
    epoch[0] = 1  # e.g. a checkpoint at the last step of epoch 0: Lightning goes on with epoch 1
    fresh = loader(epoch)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh, loader(epoch), strict=True))


@pytest.mark.parametrize(
    ("k", "world", "bs"), [(2, 1, 3), (1, 2, 3), (1, 1, 4)], ids=["K", "processes", "batch"]
)
def test_resuming_inside_an_epoch_under_other_sizes_is_refused(k: int, world: int, bs: int) -> None:
    epoch = [0]
    lo = loader(epoch)
    it = iter(lo)
    next(it)
    other = loader(epoch, k=k, world=world, bs=bs)
    other.load_state_dict(lo.state_dict())
    with pytest.raises(ValueError, match="cannot resume the training data inside epoch 0"):
        next(iter(other))
