"""Resume is exact: N epochs + resume M equals N + M straight, bit for bit, on a CPU (issue 11).

Before the fix the global torch RNG (reparameterisation noise) was neither saved nor restored and
``seed_everything`` re-seeded it on resume, so the resumed epoch replayed epoch 0's noise.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch

from tests.conftest import compose_train
from tests.helpers.training import assert_same_checkpoints, extra_callbacks
from vaelab import train as train_mod
from vaelab.checkpoints import read_checkpoint


class DrawFromEveryStream(L.Callback):
    """Records a draw of torch, NumPy and Python RNGs at every training batch (as a model, an
    augmentation or a library may draw from them)."""

    def __init__(self) -> None:
        self.draws: dict[int, tuple[float, float, float]] = {}

    def on_train_batch_start(self, trainer, module, batch, idx) -> None:
        self.draws[trainer.global_step] = (
            float(torch.rand(())),
            float(np.random.rand()),
            random.random(),
        )


def run(overrides: list[str], tmp: Path, data: Path, out: str, log_dir: Path | None = None):
    cfg = compose_train(
        [*overrides, "test=false", "data.binarize=dynamic", "~callbacks.images"], tmp, data
    )
    cfg.paths.output_dir = str(tmp / out)
    if log_dir is not None:
        cfg.paths.log_dir, cfg.task_name = str(log_dir.parent), log_dir.name
    draws = DrawFromEveryStream()
    with extra_callbacks(draws):
        _, objects = train_mod.train(cfg)
    return objects, draws.draws


def test_two_epochs_equal_one_plus_resumed_one_bit_for_bit(
    fake_mnist: Path, tmp_path: Path
) -> None:
    straight, straight_draws = run(["trainer.max_epochs=2"], tmp_path, fake_mnist, "straight")
    run(["trainer.max_epochs=1"], tmp_path / "a", fake_mnist, "first")
    resumed, resumed_draws = run(
        ["trainer.max_epochs=2", "ckpt_path=last"],
        tmp_path / "a",
        fake_mnist,
        "second",
        log_dir=tmp_path / "a" / "first",
    )
    assert resumed["trainer"].global_step == straight["trainer"].global_step == 8
    # Every stream continues where it stopped (steps 4..7 are the resumed epoch).
    assert {s: resumed_draws[s] for s in range(4, 8)} == {s: straight_draws[s] for s in range(4, 8)}
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "a" / "second" / "checkpoints" / "last.ckpt")
    assert_same_checkpoints(a, b, ("exp_avg", "exp_avg_sq"))
