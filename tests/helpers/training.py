"""Running ``vaelab.train.train`` with test callbacks added to the Trainer it builds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch

from vaelab import train as train_mod


@contextmanager
def extra_callbacks(*callbacks: L.Callback, first: bool = False) -> Iterator[None]:
    """While active, every Trainer that ``vaelab.train.build`` makes also gets ``callbacks``
    (after vaelab's own, or before them with ``first=True``)."""
    real_build = train_mod.build

    def build(cfg):
        objects = real_build(cfg)
        cbs = objects["trainer"].callbacks
        if first:
            cbs[:0] = callbacks
        else:
            cbs.extend(callbacks)
        return objects

    train_mod.build = build
    try:
        yield
    finally:
        train_mod.build = real_build


def assert_same_checkpoints(a: dict, b: dict, adam_keys: tuple[str, ...]) -> None:
    """Two loaded checkpoints hold bitwise-equal weights and Adam state (``adam_keys``)."""
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        for key in adam_keys:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)
