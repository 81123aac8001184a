"""module.steps_per_batch=K: K optimizer steps per Lightning batch give exactly what K = 1 gives.

Same seed, same data: the parameters after the same number of optimizer steps are bitwise equal,
the training rows are the same (same steps, same values), the LR scheduler steps per step or per
epoch as with K = 1, ``trainer.max_steps`` and the NaN stop land on the exact step, and what
cannot be kept is refused with a message naming the option.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import compose_train
from tests.helpers.training import extra_callbacks
from vaelab.lit import GenerativeModule, NonFiniteError
from vaelab.train import train
from vaelab.training import AUTO_STEPS_PER_BATCH

# 500 training images (600 - 100 held out), batch 50: 10 optimizer steps an epoch; K = 3 gives
# blocks of 3, 3, 3 and 1. No limit_train_batches: with K > 1 it would count blocks. K = 1 unless
# a test says otherwise (vaelab-train's default, auto, would pick K = 20 for these runs).
BASE = [
    "~trainer.limit_train_batches",
    "module.steps_per_batch=1",
    "trainer.log_every_n_steps=1",
    "test=false",
    "logger=csv",
    "model.encoder.net.hidden=[16,16]",
    "model.latent_dim=4",
    "callbacks.model_checkpoint.monitor=null",
    "~callbacks.images",
]
# The IWAE learning-rate schedule (per epoch: the LR drops after epoch 0).
IWAE_SCHEDULE = [
    "scheduler=null",
    "+scheduler._target_=vaelab.optim.iwae_schedule",
    "+scheduler._partial_=true",
]


def _run(tmp_path: Path, data: Path, name: str, extra: list[str]) -> tuple[dict, list[dict], dict]:
    cfg = compose_train([*BASE, *extra], tmp_path / name, data)
    _, objects = train(cfg)
    state = {k: v.clone() for k, v in objects["module"].state_dict().items()}
    with open(tmp_path / name / "run" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    info = {
        "global_step": objects["trainer"].global_step,
        "lr": [g["lr"] for g in objects["trainer"].optimizers[0].param_groups],
        "opt": objects["trainer"].optimizers[0].state_dict(),
        "direct": getattr(objects["module"]._blocks, "direct", None),
        "automatic": objects["module"].automatic_optimization,
        "callbacks": objects["trainer"].callbacks,
        "compiled": objects["module"].train_forward is not objects["module"].model,
        "k": objects["module"].steps_per_batch,
        "reason": objects["module"].auto_steps_reason,
    }
    return state, rows, info


def _assert_same(a: tuple, b: tuple) -> None:
    sa, ra, ia = a
    sb, rb, ib = b
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    train_keys = sorted(k for k in ra[0] if k.startswith("train/"))
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert {k: x[k] for k in train_keys} == {k: y[k] for k in train_keys}, x["step"]
        assert x["epoch"] == y["epoch"]
    assert ia["global_step"] == ib["global_step"]
    assert ia["lr"] == ib["lr"]
    for s1, s2 in zip(ia["opt"]["state"].values(), ib["opt"]["state"].values(), strict=True):
        for k in s1:
            assert torch.equal(s1[k], s2[k]), k


def test_k_steps_per_batch_equal_k1_bitwise_with_an_epoch_schedule(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # The IWAE schedule (per epoch: lr drops after epoch 0), two epochs of 10 steps.
    extra = ["trainer.max_epochs=2", *IWAE_SCHEDULE]
    k1 = _run(tmp_path, fake_mnist, "k1", extra)
    k3 = _run(tmp_path, fake_mnist, "k3", [*extra, "module.steps_per_batch=3"])
    assert k1[2]["global_step"] == 20 and len(k1[1]) == 20
    assert k1[2]["lr"] != [1e-3]  # the schedule did step
    assert k3[2]["direct"] is True  # the default callbacks need no per-step hooks
    _assert_same(k1, k3)


@pytest.mark.slow  # two fits, each compiling the forward and backward (~10-30 s here)
def test_compiled_k_steps_per_batch_equal_compiled_k1_bitwise(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # module.compile=true: the same compiled graph runs each minibatch, so K = 3 blocks give the
    # K = 1 run's parameters, optimizer state and rows bit for bit (against eager: ~1e-5).
    extra = ["trainer.max_epochs=2", *IWAE_SCHEDULE, "module.compile=true"]
    torch._dynamo.reset()
    k1 = _run(tmp_path, fake_mnist, "k1", extra)
    torch._dynamo.reset()
    k3 = _run(tmp_path, fake_mnist, "k3", [*extra, "module.steps_per_batch=3"])
    assert k1[2]["global_step"] == 20 and len(k1[1]) == 20
    assert k1[2]["compiled"] and k3[2]["compiled"]
    _assert_same(k1, k3)


def _val_rows(tmp_path: Path, name: str) -> list[dict]:
    with open(tmp_path / name / "run" / "csv" / "metrics.csv") as f:
        return [
            {"step": r["step"], "epoch": r["epoch"], "val/nll": r["val/nll"]}
            for r in csv.DictReader(f)
            if r.get("val/nll")
        ]


def test_validation_rows_are_labelled_with_the_optimizer_step_as_with_k1(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Lightning labels epoch-level rows (val/*, and LearningRateMonitor's) with its count of
    # batches that stepped; with K > 1 that would be the count of blocks (step 3 for 10 steps).
    extra = ["trainer.max_epochs=2"]
    _run(tmp_path, fake_mnist, "k1", extra)
    _run(tmp_path, fake_mnist, "k3", [*extra, "module.steps_per_batch=3"])
    k1, k3 = _val_rows(tmp_path, "k1"), _val_rows(tmp_path, "k3")
    assert [r["epoch"] for r in k1] == ["0", "1"]
    assert k1 == k3


def _lr_rows(tmp_path: Path, name: str) -> list[tuple[str, str, str]]:
    with open(tmp_path / name / "run" / "csv" / "metrics.csv") as f:
        return [
            (r["step"], r["epoch"], r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")
        ]


LR_MONITOR = "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor"


def test_learning_rate_monitor_rows_are_labelled_as_with_k1(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Per epoch (the IWAE schedule): the same rows under the same steps as K = 1 (before the
    # block counter fix, epoch 1's row was labelled step 4 instead of 10).
    extra = [
        "trainer.max_epochs=2",
        *IWAE_SCHEDULE,
        LR_MONITOR,
        "+callbacks.lr.logging_interval=epoch",
    ]
    k1 = _run(tmp_path, fake_mnist, "k1", extra)
    k3 = _run(tmp_path, fake_mnist, "k3", [*extra, "module.steps_per_batch=3"])
    assert k3[2]["direct"] is True  # a LearningRateMonitor needs no per-step hooks
    rows = _lr_rows(tmp_path, "k1")
    assert [r[0] for r in rows] == ["0", "10"] and rows[0][2] != rows[1][2]
    assert _lr_rows(tmp_path, "k3") == rows
    _assert_same(k1, k3)
    # Per step (a step schedule, log_every_n_steps=1): Lightning calls the monitor once a batch,
    # so K = 3 logs at each block's first step (0, 3, 6, 9, 10, 13, ...), each row equal to K = 1's
    # row at that step.
    extra = [
        "trainer.max_epochs=2",
        "scheduler=null",
        "+scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "+scheduler._partial_=true",
        "+scheduler.step_size=2",
        "+scheduler.gamma=0.5",
        "module.scheduler_interval=step",
        LR_MONITOR,
        "+callbacks.lr.logging_interval=step",
    ]
    _run(tmp_path, fake_mnist, "s1", extra)
    _run(tmp_path, fake_mnist, "s3", [*extra, "module.steps_per_batch=3"])
    s1, s3 = _lr_rows(tmp_path, "s1"), _lr_rows(tmp_path, "s3")
    assert [r[0] for r in s1] == [str(i) for i in range(20)]
    assert [r[0] for r in s3] == ["0", "3", "6", "9", "10", "13", "16", "19"]
    assert set(s3) <= set(s1)


class CountsStepHooks(Callback):
    """Counts the per-optimizer-step hooks Lightning dispatches to callbacks."""

    def __init__(self) -> None:
        self.calls = {"before_backward": 0, "after_backward": 0, "before_optimizer_step": 0}

    def on_before_backward(self, trainer, module, loss) -> None:
        self.calls["before_backward"] += 1

    def on_after_backward(self, trainer, module) -> None:
        self.calls["after_backward"] += 1

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.calls["before_optimizer_step"] += 1


def test_a_callback_with_step_hooks_gets_every_step_of_a_block(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # K-blocks skip the per-step hook dispatch only when nothing overrides those hooks.
    extra = [
        "trainer.max_epochs=1",
        "+callbacks.counts._target_=tests.integration.test_steps_per_batch.CountsStepHooks",
    ]
    k1 = _run(tmp_path, fake_mnist, "k1", extra)
    k3 = _run(tmp_path, fake_mnist, "k3", [*extra, "module.steps_per_batch=3"])
    assert k3[2]["direct"] is False
    for run in (k1, k3):
        (counter,) = [c for c in run[2]["callbacks"] if type(c).__name__ == "CountsStepHooks"]
        assert counter.calls == {k: 10 for k in counter.calls}
    _assert_same(k1, k3)


def test_k_steps_per_batch_equal_k1_with_a_step_schedule_and_max_steps(
    fake_mnist: Path, tmp_path: Path
) -> None:
    extra = [
        "trainer.max_epochs=3",
        "+trainer.max_steps=13",  # inside the second block of epoch 1 for K = 4
        "scheduler=null",
        "+scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "+scheduler._partial_=true",
        "+scheduler.step_size=2",
        "+scheduler.gamma=0.5",
        "module.scheduler_interval=step",
    ]
    k1 = _run(tmp_path, fake_mnist, "k1", extra)
    k4 = _run(tmp_path, fake_mnist, "k4", [*extra, "module.steps_per_batch=4"])
    assert k1[2]["global_step"] == 13
    assert k1[2]["lr"] == [pytest.approx(1e-3 * 0.5**6)]
    _assert_same(k1, k4)


class PoisonAt(Callback):
    """Sets one weight to NaN when the batch holding optimizer step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, b, i) -> None:
        k = getattr(module, "steps_per_batch", 1)
        if trainer.global_step <= self.step < trainer.global_step + k:
            self.module = module
            real = module.model.set_training_step
            target = self.step

            def poison(step: int, real=real, target=target) -> None:
                real(step)
                if step == target:
                    with torch.no_grad():
                        next(module.model.parameters()).view(-1)[0] = float("nan")

            module.model.set_training_step = poison


def test_nan_stops_at_the_exact_step_inside_a_block(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [*BASE, "trainer.max_epochs=2", "module.steps_per_batch=4"], tmp_path, fake_mnist
    )
    with (
        extra_callbacks(PoisonAt(step=6)),  # the 3rd step of the 2nd block
        pytest.raises(NonFiniteError, match=r"training loss is nan at global step 6 \("),
    ):
        train(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.gradient_clip_val=1.0", "gradients are clipped .*gradient_clip_val=null"),
        ("+trainer.accumulate_grad_batches=2", "gradients are accumulated .*data.batch_size"),
        ("+callbacks.model_checkpoint.every_n_train_steps=5", "multiple of 3"),
    ],
)
def test_what_k_blocks_cannot_keep_is_refused(
    override: str, message: str, fake_mnist: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [*BASE, "trainer.max_epochs=1", "module.steps_per_batch=3", override], tmp_path, fake_mnist
    )
    with pytest.raises(ValueError, match=rf"module.steps_per_batch=3 {message}|{message}"):
        train(cfg)


def test_reduce_on_plateau_is_refused(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *BASE,
            "module.steps_per_batch=2",
            "scheduler=null",
            "+scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
            "+scheduler._partial_=true",
        ],
        tmp_path,
        fake_mnist,
    )
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        train(cfg)


def test_k_blocks_under_bf16_mixed_precision_equal_k1(fake_mnist: Path, tmp_path: Path) -> None:
    extra = ["trainer.max_epochs=1", "trainer.precision=bf16-mixed"]
    k4 = _run(tmp_path, fake_mnist, "k4", [*extra, "module.steps_per_batch=4"])
    assert k4[2]["direct"] is True  # bf16 has no loss scaler
    _assert_same(_run(tmp_path, fake_mnist, "k1", extra), k4)


def test_loader_hands_out_the_k1_minibatches_stacked() -> None:
    from vaelab.data.loader import IndexBatchLoader
    from vaelab.data.transforms import dynamic_binarize

    data = torch.randint(0, 256, (23, 1, 2, 2), dtype=torch.uint8)
    one = IndexBatchLoader(data, 3, dynamic_binarize, shuffle=True, drop_last=True, seed=5)
    four = IndexBatchLoader(
        data, 3, dynamic_binarize, shuffle=True, drop_last=True, seed=5, steps_per_batch=4
    )
    singles = list(one)
    blocks = list(four)
    assert len(one) == 7 and len(four) == 2 and [b.shape[0] for b in blocks] == [4, 3]
    assert torch.equal(torch.cat(blocks), torch.stack(singles))


class TorchRNGInCheckpoint(Callback):
    """Keeps torch's global RNG state in checkpoints (the reparameterisation noise), so that a
    resumed run can be compared bit for bit with an uninterrupted one."""

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["test_torch_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        torch.set_rng_state(checkpoint["test_torch_rng"])


def test_resume_at_an_epoch_end_with_k_blocks_reproduces_the_uninterrupted_run(
    fake_mnist: Path, tmp_path: Path
) -> None:
    rng = "+callbacks.rng._target_=tests.integration.test_steps_per_batch.TorchRNGInCheckpoint"
    extra = ["module.steps_per_batch=3", rng]  # 10 steps an epoch: blocks 3, 3, 3, 1
    whole = _run(tmp_path, fake_mnist, "whole", [*extra, "trainer.max_epochs=2"])
    _run(tmp_path, fake_mnist, "first", [*extra, "trainer.max_epochs=1"])
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = _run(
        tmp_path, fake_mnist, "resumed", [*extra, "trainer.max_epochs=2", f"ckpt_path={last}"]
    )
    assert resumed[2]["global_step"] == 20
    sw, rw, _ = whole
    sr, rr, _ = resumed
    for k in sw:
        assert torch.equal(sw[k], sr[k]), k
    assert [r for r in rw if int(r["step"]) >= 10] == rr  # the second epoch's rows, identical


class CountsZeroGrad(Callback):
    """Overrides ``on_before_zero_grad``, a hook only automatic optimization calls: with it, K = 1
    keeps Lightning's automatic optimization."""

    def __init__(self) -> None:
        self.calls = 0

    def on_before_zero_grad(self, trainer, module, optimizer) -> None:
        self.calls += 1


ZERO_GRAD = "+callbacks.zg._target_=tests.integration.test_steps_per_batch.CountsZeroGrad"


def test_k1_runs_as_one_step_blocks_equal_to_automatic_optimization(
    fake_mnist: Path, tmp_path: Path
) -> None:
    extra = ["trainer.max_epochs=2", *IWAE_SCHEDULE]
    blocks = _run(tmp_path, fake_mnist, "blocks", extra)
    auto = _run(tmp_path, fake_mnist, "auto", [*extra, ZERO_GRAD])
    assert blocks[2]["automatic"] is False and blocks[2]["direct"] is True
    assert auto[2]["automatic"] is True
    (counter,) = [c for c in auto[2]["callbacks"] if type(c).__name__ == "CountsZeroGrad"]
    assert counter.calls == 20  # the automatic-only hook still runs at every step
    _assert_same(blocks, auto)
    assert _val_rows(tmp_path, "blocks") == _val_rows(tmp_path, "auto")


@pytest.mark.parametrize("first_automatic", [True, False])
def test_a_resume_across_optimization_modes_keeps_the_step_count(
    first_automatic: bool, fake_mnist: Path, tmp_path: Path
) -> None:
    # Lightning counts steps per mode: without carrying the count over, global_step restarted at 0
    # (the resumed run trained 2 more epochs from "step 0" and its rows were labelled 0-9 again).
    straight = _run(tmp_path, fake_mnist, "straight", ["trainer.max_epochs=2"])
    one, two = ([ZERO_GRAD], []) if first_automatic else ([], [ZERO_GRAD])
    _run(tmp_path, fake_mnist, "first", ["trainer.max_epochs=1", *one])
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = _run(
        tmp_path, fake_mnist, "resumed", ["trainer.max_epochs=2", f"ckpt_path={last}", *two]
    )
    assert resumed[2]["automatic"] is not first_automatic
    assert resumed[2]["global_step"] == 20
    assert [r["step"] for r in resumed[1]] == [str(s) for s in range(10, 20)]
    for k, v in straight[0].items():
        assert torch.equal(v, resumed[0][k]), k


def test_k1_keeps_automatic_optimization_where_blocks_cannot_clip(
    fake_mnist: Path, tmp_path: Path
) -> None:
    clipped = _run(
        tmp_path, fake_mnist, "clip", ["trainer.max_epochs=1", "trainer.gradient_clip_val=1.0"]
    )
    assert clipped[2]["automatic"] is True


# -- steps_per_batch: auto (vaelab-train's default) ------------------------------------------------
AUTO = "module.steps_per_batch=auto"


class CountsBatches(Callback):
    """Counts Lightning batches; declares that its batch hook is fine with K-step blocks."""

    takes_step_blocks = True

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches += 1


def test_auto_is_the_default_and_trains_k_blocks_equal_to_k1(
    fake_mnist: Path, tmp_path: Path
) -> None:
    assert compose_train([], tmp_path).module.steps_per_batch == "auto"
    extra = [
        "trainer.max_epochs=2",
        *IWAE_SCHEDULE,
        "+callbacks.n._target_=tests.integration.test_steps_per_batch.CountsBatches",
    ]
    auto = _run(tmp_path, fake_mnist, "auto", [*extra, AUTO])
    assert auto[2]["k"] == AUTO_STEPS_PER_BATCH and auto[2]["reason"] is None
    assert auto[2]["automatic"] is False and auto[2]["direct"] is True
    (counter,) = [c for c in auto[2]["callbacks"] if type(c).__name__ == "CountsBatches"]
    assert counter.batches == 2  # one block of the epoch's 10 steps per epoch
    k1 = _run(tmp_path, fake_mnist, "k1", extra)
    assert k1[2]["k"] == 1
    _assert_same(k1, auto)
    assert _val_rows(tmp_path, "auto") == _val_rows(tmp_path, "k1")


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("+trainer.limit_train_batches=4", "limit_train_batches=4 counts Lightning batches"),
        ("+trainer.val_check_interval=5", "val_check_interval=5 counts Lightning batches"),
        ("trainer.gradient_clip_val=1.0", "gradients are clipped"),
        ("+trainer.accumulate_grad_batches=2", "gradients are accumulated"),
        ("+trainer.profiler=simple", "a profiler (SimpleProfiler)"),
        ("+callbacks.last_checkpoint.every_n_train_steps=3", "a checkpoint every 3 optimizer"),
        (f"{LR_MONITOR},+callbacks.lr.logging_interval=step", "the callback LearningRateMonitor"),
        (ZERO_GRAD, "the callback CountsZeroGrad has on_before_zero_grad"),
    ],
)
def test_auto_keeps_k1_where_blocks_would_change_the_run(
    override: str, reason: str, fake_mnist: Path, tmp_path: Path
) -> None:
    # What an explicit K > 1 refuses, and what it would change (counts of Lightning batches,
    # hooks run once a batch), makes auto train K = 1, saying why, instead of refusing.
    run = _run(tmp_path, fake_mnist, "r", ["trainer.max_epochs=1", AUTO, *override.split(",")])
    assert run[2]["k"] == 1
    assert reason in run[2]["reason"]
    steps = 4 if "limit_train" in override else 5 if "accumulate" in override else 10
    assert run[2]["global_step"] == steps


def test_auto_goes_back_to_k1_for_reduce_on_plateau(fake_mnist: Path, tmp_path: Path) -> None:
    # The scheduler is known only after setup, where auto has picked K; it goes back to K = 1
    # (and to Lightning's automatic optimization, which steps the scheduler with the metric).
    # (max_steps=5 stops before the epoch's end, where Lightning would step the scheduler without
    # a metric: vaelab's configure_optimizers names no monitor, with any K.)
    plateau = [
        "scheduler=null",
        "+scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "+scheduler._partial_=true",
        "+trainer.max_steps=5",
    ]
    cfg = compose_train([*BASE, "trainer.max_epochs=1", AUTO, *plateau], tmp_path, fake_mnist)
    _, objects = train(cfg)
    module = objects["module"]
    assert module.steps_per_batch == 1 and "ReduceLROnPlateau" in module.auto_steps_reason
    assert module.automatic_optimization is True
    assert objects["trainer"].num_training_batches == 10  # not one block of 10
    assert objects["trainer"].global_step == 5


def test_a_k1_checkpoint_resumes_under_auto(fake_mnist: Path, tmp_path: Path) -> None:
    # steps_per_batch is how the steps run, not what they compute: a checkpoint of an older
    # vaelab's K = 1 run resumes under auto (refused as a changed config on the old code) and
    # carries on bit for bit.
    extra = ["+callbacks.rng._target_=tests.integration.test_steps_per_batch.TorchRNGInCheckpoint"]
    straight = _run(tmp_path, fake_mnist, "straight", ["trainer.max_epochs=2", *extra])
    _run(tmp_path, fake_mnist, "first", ["trainer.max_epochs=1", *extra])
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = _run(
        tmp_path, fake_mnist, "resumed", ["trainer.max_epochs=2", AUTO, f"ckpt_path={last}", *extra]
    )
    assert resumed[2]["k"] == AUTO_STEPS_PER_BATCH
    assert resumed[2]["global_step"] == 20
    assert [r["step"] for r in resumed[1]] == [str(s) for s in range(10, 20)]
    for k, v in straight[0].items():
        assert torch.equal(v, resumed[0][k]), k


@pytest.mark.parametrize("value", [0, -1, "fast", 2.5, True])
def test_a_bad_steps_per_batch_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
        GenerativeModule(torch.nn.Linear(1, 1), steps_per_batch=value)  # type: ignore[arg-type]


def test_the_progress_bar_counts_optimizer_steps_with_k_blocks(
    fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # auto trains the epoch's 10 steps as one Lightning batch; the bar still shows 10 steps of 50
    # images, as with K = 1 (before: a total of 1, and 500 images an "it").
    from lightning.pytorch.callbacks import RichProgressBar

    from vaelab.callbacks.progress import ThroughputProgressBar

    seen: dict[str, list] = {"totals": [], "positions": []}
    add_task, update = RichProgressBar._add_task, RichProgressBar._update

    def recording_add_task(self, total, description, visible=True):
        if "Epoch" in str(description):
            seen["totals"].append(total)
        return add_task(self, total, description, visible)

    def recording_update(self, bar_id, current, visible=True, hard=False):
        if bar_id is not None and bar_id == self.train_progress_bar_id:
            seen["positions"].append(current)
        return update(self, bar_id, current, visible, hard)

    monkeypatch.setattr(RichProgressBar, "_add_task", recording_add_task)
    monkeypatch.setattr(RichProgressBar, "_update", recording_update)
    bars = {}
    for name, k in (("k1", "module.steps_per_batch=1"), ("auto", AUTO)):
        seen["totals"].clear()
        seen["positions"].clear()
        extra = [
            "trainer.max_epochs=1",
            k,
            "trainer.enable_progress_bar=true",
            "callbacks.rich_progress_bar.refresh_rate=100000",  # redraw at every batch
        ]
        run = _run(tmp_path, fake_mnist, name, extra)
        (bar,) = [c for c in run[2]["callbacks"] if isinstance(c, ThroughputProgressBar)]
        bars[name] = (run[2]["k"], list(seen["totals"]), list(seen["positions"]))
        assert set(bar.items_per_batch.values()) >= {50}
    assert bars["k1"] == (1, [10], list(range(1, 11)))
    assert bars["auto"] == (AUTO_STEPS_PER_BATCH, [10], [10])
