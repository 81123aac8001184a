"""``IndexBatchLoader`` under several processes: equal training steps, every eval example once."""

from __future__ import annotations

import pytest
import torch

from vaelab.data.loader import IndexBatchLoader, global_batch_index


def ident(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x.float()


def loaders(n: int, batch: int, world: int, train: bool) -> list[IndexBatchLoader]:
    data = torch.arange(n).view(n, 1, 1, 1)
    return [
        IndexBatchLoader(
            data, batch, ident, shuffle=train, drop_last=train, rank=r, world_size=world
        )
        for r in range(world)
    ]


@pytest.mark.parametrize("n", [100, 101, 119, 120, 121, 239])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_training_ranks_take_the_same_number_of_steps(n: int, world: int) -> None:
    """n = 119, batch 10, 2 ranks used to give 6 and 5 batches: DDP waits forever on the 6th."""
    ranks = loaders(n, 10, world, train=True)
    lengths = {len(lo) for lo in ranks}
    assert len(lengths) == 1, lengths
    batches = [list(lo) for lo in ranks]
    assert {len(b) for b in batches} == lengths
    seen = torch.cat([x.flatten() for b in batches for x in b])
    assert seen.unique().numel() == seen.numel()  # disjoint shards, nothing repeated or padded
    assert seen.numel() == world * ((n // world) // 10) * 10


@pytest.mark.parametrize(
    ("n", "batch", "world"), [(200, 90, 2), (100, 100, 2), (100, 500, 4), (7, 5, 3), (1000, 100, 3)]
)
def test_evaluation_sees_every_example_once_and_every_rank_has_a_batch(
    n: int, batch: int, world: int
) -> None:
    ranks = loaders(n, batch, world, train=False)
    assert all(len(lo) >= 1 for lo in ranks)  # Lightning refuses a rank with an empty loader
    by_index = {}
    for r, lo in enumerate(ranks):
        for i, x in enumerate(lo):
            by_index[global_batch_index(i, r, world)] = x.flatten()
    order = torch.cat([by_index[b] for b in sorted(by_index)])
    assert torch.equal(order, torch.arange(n).float())  # each example once, in order
    if -(-n // batch) >= world:  # enough batches: the same batches as one process
        single = torch.cat([x.flatten() for x in loaders(n, batch, 1, train=False)[0]])
        assert [len(by_index[b]) for b in sorted(by_index)] == [
            len(x) for x in loaders(n, batch, 1, train=False)[0]
        ]
        assert torch.equal(single, order)


def test_too_few_examples_for_the_ranks_is_a_clear_error() -> None:
    (lo, *_) = loaders(2, 10, 3, train=False)
    with pytest.raises(ValueError, match="cannot be shared by 3 processes"):
        len(lo)
