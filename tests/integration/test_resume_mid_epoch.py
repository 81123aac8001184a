"""Resume from a checkpoint written inside an epoch is exact, for K = 1 and K > 1.

500 training images, batch 50: 10 optimizer steps an epoch, under the IWAE per-epoch LR schedule
(the LR drops after epoch 0). A step-based ModelCheckpoint writes a checkpoint every N steps; a
run resumed from one of them must give exactly what the uninterrupted run gives: the same
parameters and Adam moments (torch.equal), the same LR, the same ``train/*`` rows (each step
once, in its epoch, with the same values) and ``val/*`` rows, the same minibatches (images and
binarization noise) at every step, the same draws from the global torch RNG.

Before the fix (numbers of this file's runs on the old code): from the checkpoint at step 4
(K = 1) Lightning warned that the loader was not resumable and the loader started epoch 0 again
at its first minibatch (steps 4-9 trained on minibatches 0-5, with the same noise as steps 0-5),
and ``ResumeState`` restored the RNG states only at the next ``on_train_epoch_start``, which
Lightning does not call when it restarts inside an epoch (one epoch late, with step 4's state):
max |dW| = 1.3e-2 after 2 epochs, every train row from step 4 on differed (no row duplicated,
epoch 0 still had 10 steps). From step 12: epoch 1 restarted at its first minibatch, 4.7e-3.
From step 6 with K = 3: the restarted epoch 0 took blocks of 3 + 3 instead of 3 + 1, so the run
made 22 optimizer steps instead of 20, 1.2e-2. From the last step of epoch 0: the minibatches
were right but the RNG states were never restored, 6.3e-3 (K = 1) and 7.2e-3 (K = 2); with K = 2
the per-epoch LR step also came after that checkpoint and was lost (2.9e-3 once the loader and
the RNG were fixed). ``ckpt_path=last`` after the kill at step 14: 4.7e-3. The second resume of
a run resumed from a last-step checkpoint trained no step at all (Lightning's epoch counters).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import compose_train
from tests.helpers.training import extra_callbacks
from vaelab import train as train_mod

BASE = [
    "~trainer.limit_train_batches",
    "module.steps_per_batch=1",  # unless a test says otherwise (auto would pick K = 20)
    "trainer.log_every_n_steps=1",
    "test=false",
    "logger=csv",
    "data.binarize=dynamic",
    "model.encoder.net.hidden=[16,16]",
    "model.latent_dim=4",
    "callbacks.model_checkpoint.monitor=null",
    "~callbacks.images",
    "scheduler=null",
    "+scheduler._target_=vaelab.optim.iwae_schedule",
    "+scheduler._partial_=true",
]
STEPS_PER_EPOCH = 10


class Record(L.Callback):
    """Per optimizer step: a digest of the minibatch trained on; per batch, a draw from the global
    torch RNG at its start (as an augmentation or a library might draw)."""

    def __init__(self) -> None:
        self.batches: dict[int, str] = {}
        self.draws: dict[int, float] = {}

    def on_train_batch_start(self, trainer, module, batch, idx) -> None:
        step = trainer.global_step
        xs = batch if module.steps_per_batch > 1 else batch[None]
        for i, x in enumerate(xs):
            self.batches[step + i] = hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest()[:12]
        self.draws[step] = float(torch.rand(()))


class KillAt(L.Callback):
    """Stands for a kill: raises when the batch holding optimizer step ``step`` starts (nothing is
    saved on the way out, as after a SIGKILL)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, idx) -> None:
        if trainer.global_step >= self.step:
            raise KeyError(f"killed at step {trainer.global_step}")


def _run(tmp: Path, data: Path, name: str, extra: list[str], kill_at: int | None = None) -> dict:
    cfg = compose_train([*BASE, *extra], tmp / name, data)
    record = Record()
    killer = [] if kill_at is None else [KillAt(kill_at)]
    with extra_callbacks(record, *killer):
        _, objects = train_mod.train(cfg)
    with open(tmp / name / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    trainer = objects["trainer"]
    opt = trainer.optimizers[0].state_dict()["state"]
    return {
        "params": {k: v.clone() for k, v in objects["module"].state_dict().items()},
        "adam": {(i, k): v.clone() for i, s in opt.items() for k, v in s.items()},
        "lr": [g["lr"] for g in trainer.optimizers[0].param_groups],
        "train": [r for r in rows if r.get("train/loss")],
        "val": [r for r in rows if r.get("val/nll")],
        "global_step": trainer.global_step,
        "batches": record.batches,
        "draws": record.draws,
    }


def _step_ckpt(every: int, dirpath: Path) -> list[str]:
    return [
        "+callbacks.step_ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.step_ckpt.dirpath={dirpath}",
        f"+callbacks.step_ckpt.every_n_train_steps={every}",
        "+callbacks.step_ckpt.save_top_k=-1",
        "+callbacks.step_ckpt.filename='step{step:03d}'",
        "+callbacks.step_ckpt.auto_insert_metric_name=false",
    ]


def _assert_continues(whole: dict, resumed: dict, at: int, val_from_epoch: int) -> None:
    """``resumed`` (from the checkpoint at step ``at``) equals ``whole`` from there on."""
    end = whole["global_step"]
    assert resumed["global_step"] == end
    # The same minibatches (images and noise) at every resumed step, the same global RNG draws.
    assert resumed["batches"] == {s: whole["batches"][s] for s in range(at, end)}
    assert resumed["draws"] == {s: d for s, d in whole["draws"].items() if s >= at}
    diffs = {
        n: float((whole["params"][n] - resumed["params"][n]).abs().max())
        for n in whole["params"]
        if not torch.equal(whole["params"][n], resumed["params"][n])
    }
    assert not diffs, f"max |dW| = {max(diffs.values()):.2e} in {sorted(diffs)}"
    for key, value in whole["adam"].items():
        assert torch.equal(value, resumed["adam"][key]), key
    assert resumed["lr"] == whole["lr"] != [1e-3]
    # Each step logged once, in its epoch, with the uninterrupted run's values.
    assert [r["step"] for r in resumed["train"]] == [str(s) for s in range(at, end)]
    keys = sorted(c for c in whole["train"][0] if c.startswith("train/") or c in ("epoch", "step"))
    expect = [{c: r[c] for c in keys} for r in whole["train"] if int(r["step"]) >= at]
    assert [{c: r[c] for c in keys} for r in resumed["train"]] == expect
    keys = sorted(c for c in whole["val"][0] if c.startswith("val/") or c in ("epoch", "step"))
    expect = [{c: r[c] for c in keys} for r in whole["val"] if int(r["epoch"]) >= val_from_epoch]
    assert [{c: r[c] for c in keys} for r in resumed["val"]] == expect


@pytest.mark.parametrize(
    ("k", "every", "at"),
    [
        (1, 4, 4),  # inside epoch 0
        (1, 4, 12),  # inside epoch 1
        (3, 6, 6),  # inside epoch 0, after blocks of 3 + 3 (the epoch: 3, 3, 3, 1)
        (1, 5, 10),  # the last step of epoch 0, written before its validation
        (2, 10, 10),  # the same with K = 2
    ],
)
def test_resume_from_a_step_checkpoint_reproduces_the_uninterrupted_run(
    k: int, every: int, at: int, fake_mnist: Path, tmp_path: Path
) -> None:
    opts = [f"module.steps_per_batch={k}", "trainer.max_epochs=2"]
    whole = _run(tmp_path, fake_mnist, "whole", [*opts, *_step_ckpt(every, tmp_path / "a")])
    assert whole["global_step"] == 2 * STEPS_PER_EPOCH
    ckpt = tmp_path / "a" / f"step{at:03d}.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in ckpt.parent.iterdir())
    # Everything in it loads weights-only (tensors, numbers, lists, dicts), the loader's position
    # included: the number of minibatches of that epoch trained on.
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    (position,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position["epoch"] == (at - 1) // STEPS_PER_EPOCH
    assert position["minibatches"] == (at - 1) % STEPS_PER_EPOCH + 1
    resumed = _run(
        tmp_path,
        fake_mnist,
        "resumed",
        [*opts, *_step_ckpt(every, tmp_path / "b"), f"ckpt_path={ckpt}"],
    )
    # A checkpoint at the last step of an epoch is written before that epoch's validation, which
    # Lightning does not run again on resume: its val row is missing, the others are the same.
    last_step = at % STEPS_PER_EPOCH == 0
    _assert_continues(whole, resumed, at, (at - 1) // STEPS_PER_EPOCH + last_step)


def test_a_run_resumed_from_a_last_step_checkpoint_resumes_again_with_ckpt_path_last(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # K = 2, a checkpoint every 10 steps: each at the last step of an epoch. 3 epochs straight;
    # vs. 1 epoch, resume from step 10 to the end of epoch 1, then ckpt_path=last to the end.
    k2 = "module.steps_per_batch=2"
    whole = _run(
        tmp_path, fake_mnist, "whole", [k2, *_step_ckpt(10, tmp_path / "a"), "trainer.max_epochs=3"]
    )
    first = [k2, *_step_ckpt(10, tmp_path / "b"), "trainer.max_epochs=1"]
    _run(tmp_path, fake_mnist, "first", first)
    step10 = f"ckpt_path={tmp_path / 'b' / 'step010.ckpt'}"
    second = [k2, *_step_ckpt(10, tmp_path / "c"), "trainer.max_epochs=2", step10]
    _run(tmp_path, fake_mnist, "second", second)
    last = [f"paths.log_dir={tmp_path}", "task_name=second", "ckpt_path=last"]
    third = [k2, *_step_ckpt(10, tmp_path / "d"), "trainer.max_epochs=3", *last]
    _assert_continues(whole, _run(tmp_path, fake_mnist, "third", third), 2 * STEPS_PER_EPOCH, 2)


def test_ckpt_path_last_after_a_kill_inside_an_epoch(fake_mnist: Path, tmp_path: Path) -> None:
    # last.ckpt written every 4 optimizer steps (K = 2) instead of at epoch ends; killed at step
    # 14, so the newest last.ckpt holds step 12, inside epoch 1.
    opts = [
        "module.steps_per_batch=2",
        "trainer.max_epochs=2",
        "+callbacks.last_checkpoint.every_n_train_steps=4",
    ]
    whole = _run(tmp_path, fake_mnist, "whole", opts)
    with pytest.raises(KeyError, match="killed at step 14"):
        _run(tmp_path, fake_mnist, "killed", opts, kill_at=14)
    last = [f"paths.log_dir={tmp_path}", "task_name=killed", "ckpt_path=last"]
    resumed = _run(tmp_path, fake_mnist, "resumed", [*opts, *last])
    _assert_continues(whole, resumed, 12, 1)


@pytest.mark.slow  # two fits, each compiling the forward and backward (~10-30 s here)
def test_a_compiled_run_resumed_inside_a_block_reproduces_the_uninterrupted_one(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # module.compile=true with K = 3: the compiled forward's random draws come from torch's
    # generator, whose state the checkpoint holds, so the resumed run is bitwise the same.
    torch._dynamo.reset()
    opts = ["module.steps_per_batch=3", "module.compile=true", "trainer.max_epochs=2"]
    whole = _run(tmp_path, fake_mnist, "whole", [*opts, *_step_ckpt(6, tmp_path / "a")])
    ckpt = f"ckpt_path={tmp_path / 'a' / 'step006.ckpt'}"
    torch._dynamo.reset()
    resumed = _run(tmp_path, fake_mnist, "resumed", [*opts, *_step_ckpt(6, tmp_path / "b"), ckpt])
    _assert_continues(whole, resumed, 6, 0)
