"""A step checkpoint interval holds exactly under ``module.steps_per_batch: auto`` (issue 26, case 4).

``auto`` runs K optimizer steps per Lightning batch, and Lightning checks
``every_n_train_steps`` only after a batch. With K = 20 and an epoch that is not a multiple of 20
steps, blocks from the second epoch on end off the multiples of 20: on the old code an epoch of
50 steps (blocks 20, 20, 10) with a checkpoint every 20 steps wrote steps 20, 40 and 100 only
(60 and 80 fell inside blocks), and the README's recipe (``last.ckpt`` every 1000 steps, epochs
of 550) wrote no ``last.ckpt`` at all. ``auto`` now picks the largest K <= 20 that divides the
epoch's steps and every interval (10 in both), so every checkpoint step ends a block.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import compose_train
from tests.helpers.fake_data import write_fake_mnist
from vaelab.train import train

BASE = [
    "~trainer.limit_train_batches",  # with auto it would count blocks, and keep K = 1
    "test=false",
    "model.encoder.net.hidden=[16,16]",
    "model.latent_dim=4",
    "~callbacks.images",
    "trainer.max_epochs=2",
]


def _step_ckpt(every: int, dirpath: Path) -> list[str]:
    return [
        "+callbacks.step_ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.step_ckpt.dirpath={dirpath}",
        f"+callbacks.step_ckpt.every_n_train_steps={every}",
        "+callbacks.step_ckpt.save_top_k=-1",
        "+callbacks.step_ckpt.filename='step{step:04d}'",
        "+callbacks.step_ckpt.auto_insert_metric_name=false",
    ]


def _global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_step_checkpoints_land_on_every_multiple_over_epochs_not_a_multiple_of_k(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # 500 training images, batch 10: 50 steps an epoch (not a multiple of 20), 2 epochs.
    cfg = compose_train(
        [
            *BASE,
            "data.batch_size=10",
            *_step_ckpt(20, tmp_path / "steps"),
            "+callbacks.last_checkpoint.every_n_train_steps=20",
        ],
        tmp_path,
        fake_mnist,
    )
    assert cfg.module.steps_per_batch == "auto"
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 100
    written = sorted(p.name for p in (tmp_path / "steps").glob("*.ckpt"))
    assert written == [f"step{s:04d}.ckpt" for s in (20, 40, 60, 80, 100)]
    for name in written:
        assert _global_step(tmp_path / "steps" / name) == int(name[4:8])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file() and _global_step(last) == 100  # the final step
    assert objects["module"].steps_per_batch == 10  # still blocks (gcd(50, 20) = 10), not K = 1


def test_the_readme_recipe_writes_last_ckpt_every_1000_steps(tmp_path: Path) -> None:
    # The README's recipe on the default run's shape: epochs of 550 steps, last.ckpt every 1000
    # steps, 2 epochs. On the old code the blocks of epoch 1 ended at 570, ..., 1090, 1100: no
    # last.ckpt was ever written.
    data = write_fake_mnist(tmp_path / "data", n_train=650, n_test=100)
    cfg = compose_train(
        [*BASE, "data.batch_size=1", "+callbacks.last_checkpoint.every_n_train_steps=1000"],
        tmp_path,
        data,
    )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 1100
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file() and _global_step(last) == 1000
    assert objects["module"].steps_per_batch == 10  # gcd(550, 1000) = 50: blocks of 10
