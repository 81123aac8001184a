"""vaelab-train end to end on tiny data: every model x data config, errors, NaN, resume, eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import REPO, compose_train
from tests.helpers.training import extra_callbacks
from vaelab.checkpoints import CheckpointError, read_checkpoint
from vaelab.lit import NonFiniteError
from vaelab.train import train

MODELS_FOR_DATA = {
    "binarized_mnist": ["vae", "beta_vae", "iwae", "conv_vae", "hvae"],
    "mnist": ["vae_gaussian", "realnvp", "realnvp_mlp"],
}
CASES = [(d, m) for d, ms in MODELS_FOR_DATA.items() for m in ms]


@pytest.mark.parametrize(("data", "model"), CASES)
def test_fast_dev_run_every_model_and_data(
    data: str, model: str, fake_mnist: Path, tmp_path: Path
) -> None:
    # The paper-size RealNVP (8 ResNet blocks of 64 maps per coupling) took 27 of the test's 28 s
    # on 2 CPU cores; the same architecture, narrower, runs every line of it.
    small = ["model.num_blocks=2", "model.hidden_channels=16"] if model == "realnvp" else []
    cfg = compose_train(
        [f"data={data}", f"model={model}", "+trainer.fast_dev_run=true", *small],
        tmp_path,
        fake_mnist,
    )
    metrics, objects = train(cfg)
    # One test batch was evaluated: its NLL is a finite positive number of nats, bpd consistent.
    assert torch.isfinite(torch.tensor(metrics["test/nll"]))
    assert objects["trainer"].global_step == 1
    kind = objects["datamodule"].kind
    d = 784
    expected_bpd = metrics["test/nll"] / (d * 0.6931471805599453)
    if kind == "dequantized":
        expected_bpd += 8.0
    assert metrics["test/bpd"] == pytest.approx(expected_bpd, rel=1e-4)
    if model.startswith("realnvp"):  # exact likelihood, computed once by forward
        assert metrics["test/nll"] == pytest.approx(-metrics["test/elbo"], rel=1e-6)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/nll"] == pytest.approx(metrics["test/nll"])
    assert saved["status"] == "ok"


def test_bernoulli_on_pixel_data_is_refused(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        ["data=mnist", "model=vae", "+trainer.fast_dev_run=true"], tmp_path, fake_mnist
    )
    with pytest.raises(ValueError, match=r"cannot model 'dequantized' data.*data=binarized_mnist"):
        train(cfg)


def test_unknown_model_name_lists_the_choices(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vaelab.train", "model=vea", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode != 0
    assert "Could not find 'model/vea'" in r.stderr
    assert "Available options" in r.stderr and "beta_vae" in r.stderr


class PoisonAt(Callback):
    """Writes a NaN into a weight before global step ``step`` (a stand-in for a diverging run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch, idx
    ) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = float("nan")


def test_nan_stops_training_and_keeps_last_good_checkpoint(
    fake_mnist: Path, tmp_path: Path
) -> None:
    cfg = compose_train(["trainer.max_epochs=5"], tmp_path, fake_mnist)
    with (
        extra_callbacks(PoisonAt(step=9)),  # epoch 2 (4 batches per epoch)
        pytest.raises(NonFiniteError, match=r"global step 9 \(epoch 2\).*last good checkpoint"),
    ):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 8  # saved after epoch 1, untouched since
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"].startswith("failed: NonFiniteError")


def test_resume_continues_epochs_and_optimizer_state(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(["trainer.max_epochs=2", "test=false"], tmp_path, fake_mnist)
    train(cfg)
    first = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    adam_steps = first["optimizer_states"][0]["state"][0]["step"]
    assert float(adam_steps) == 8

    cfg2 = compose_train(
        ["trainer.max_epochs=3", "test=false", "ckpt_path=last"], tmp_path, fake_mnist
    )
    cfg2.paths.output_dir = str(tmp_path / "run2")
    # "last" finds the newest last.ckpt under paths.log_dir/task_name: point log_dir at run 1.
    cfg2.paths.log_dir = str(tmp_path)
    cfg2.task_name = "run"
    _, objects = train(cfg2)
    assert objects["trainer"].current_epoch == 3
    assert objects["trainer"].global_step == 12  # 8 restored + 4 new, not 12 new
    second = read_checkpoint(tmp_path / "run2" / "checkpoints" / "last.ckpt")
    assert float(second["optimizer_states"][0]["state"][0]["step"]) == 12


def test_resume_keeps_the_checkpoint_weights(fake_mnist: Path, tmp_path: Path) -> None:
    # init_from_data (on by default) runs in setup, before Lightning restores the checkpoint: a
    # resumed run must come back with the saved decoder bias, not a re-initialised one.
    cfg = compose_train(["trainer.max_epochs=1", "test=false"], tmp_path, fake_mnist)
    train(cfg)
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    cfg2 = compose_train(["trainer.max_epochs=1", "test=false"], tmp_path, fake_mnist)
    cfg2.ckpt_path = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg2.paths.output_dir = str(tmp_path / "run2")
    _, objects = train(cfg2)  # max_epochs already reached: no step is taken
    for name, value in objects["module"].state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)


def test_eval_reproduces_the_runs_test_nll(fake_mnist: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir
    from vaelab.eval import evaluate

    cfg = compose_train(["trainer.max_epochs=2", "eval.num_samples=20"], tmp_path, fake_mnist)
    metrics, objects = train(cfg)
    best = objects["trainer"].checkpoint_callback.best_model_path
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        ecfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={best}",
                "eval.num_samples=20",
                f"paths.output_dir={tmp_path / 'eval'}",
                f"paths.data_dir={fake_mnist}",
                "+trainer.enable_progress_bar=false",
                "trainer.accelerator=cpu",
            ],
        )
    emetrics, _ = evaluate(ecfg)
    assert emetrics["test/nll"] == pytest.approx(metrics["test/nll"], abs=1e-4)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())[
        "test/nll"
    ] == pytest.approx(metrics["test/nll"], abs=1e-4)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_real_mnist_short_training_lowers_validation_loss(real_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=200",
            "data.val_size=1000",
            "data.batch_size=100",
            "data.eval_batch_size=500",
            "test=false",
        ],
        tmp_path,
        real_mnist,
        tiny=True,
    )
    train(cfg)
    import csv

    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 3
    assert val[0] > val[1] > val[2], val
    assert val[0] - val[2] > 5.0  # nats: a real improvement, not noise
    assert val[2] < 200.0  # past the mean-image plateau (~215 nats)


class LossPerStep(Callback):
    """The loss each optimizer step's training_step returned, by global step."""

    def __init__(self) -> None:
        self.loss: dict[int, float] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out, batch, idx
    ) -> None:
        self.loss[trainer.global_step - 1] = float(out["loss"])  # the step has been taken


def test_training_rows_carry_the_values_of_the_step_they_are_labelled_with(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Lightning writes self.log'ed step metrics at (step + 1) % n == 0, so values computed at step
    # s would appear under step s + n - 1; vaelab writes them under the step that computed them.
    cfg = compose_train(
        [
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=8",
            "trainer.log_every_n_steps=3",
            "test=false",
            "logger=csv",
            "+callbacks.loss_per_step._target_=tests.integration.test_train.LossPerStep",
        ],
        tmp_path,
        fake_mnist,
    )
    metrics, objects = train(cfg)
    # Hydra imports this module again under its dotted name: match the class by name.
    (recorder,) = [c for c in objects["callbacks"] if type(c).__name__ == "LossPerStep"]
    assert sorted(recorder.loss) == list(range(16))
    import csv

    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 9, 12, 15]
    for r in rows:
        step = int(r["step"])
        assert float(r["train/loss"]) == pytest.approx(recorder.loss[step], rel=1e-6), step
        assert int(r["epoch"]) == step // 8
        for term in ("train/elbo", "train/rate", "train/distortion", "train/bpd"):
            assert r[term] != "", (term, step)
        # -ELBO = rate + distortion, within one row: all values are of the same step.
        assert -float(r["train/elbo"]) == pytest.approx(
            float(r["train/rate"]) + float(r["train/distortion"]), rel=1e-5
        )
    # metrics.json keeps the last values written, and the progress bar's train/loss agrees.
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train/loss"] == pytest.approx(recorder.loss[15], rel=1e-6)
    assert saved["train/rate"] == pytest.approx(float(rows[-1]["train/rate"]), rel=1e-6)
    assert metrics["train/rate"] == saved["train/rate"]


def test_accumulated_batches_write_one_row_per_step(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "+trainer.accumulate_grad_batches=2",
            "trainer.log_every_n_steps=1",
            "test=false",
            "logger=csv",
        ],
        tmp_path,
        fake_mnist,
    )
    train(cfg)  # 4 batches, 2 optimizer steps
    import csv

    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [0, 1]


class BarProbe(Callback):
    """What the progress bar would show after each training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict, dict, float | None]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out, batch, idx
    ) -> None:
        bar = trainer.progress_bar_callback
        self.seen.append(
            (
                dict(trainer.progress_bar_metrics),
                bar.get_metrics(trainer, module),
                module.last_train_metrics.get("train/loss"),
            )
        )


def test_progress_bar_shows_the_loss_without_a_per_step_prog_bar_metric(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Lightning turns every prog_bar=True value into a Python number after every batch (a device
    # sync each step on a GPU); the bar reads the module's last logged float instead.
    cfg = compose_train(
        [
            "trainer.enable_progress_bar=true",
            "trainer.log_every_n_steps=2",
            "test=false",
            "+callbacks.bar_probe._target_=tests.integration.test_train.BarProbe",
        ],
        tmp_path,
        fake_mnist,
    )
    _, objects = train(cfg)
    (probe,) = [c for c in objects["callbacks"] if type(c).__name__ == "BarProbe"]
    assert len(probe.seen) == 4
    for lightning_pbar, shown, last in probe.seen:
        assert not any(k.startswith("train/") for k in lightning_pbar), lightning_pbar
        assert shown["train/loss"] == last
    assert [s[2] for s in probe.seen][:2] == [probe.seen[0][2]] * 2  # steps 0, 1: step 0's loss
    assert probe.seen[2][2] != probe.seen[0][2]  # step 2 logged anew
    assert "train/loss" in objects["trainer"].callback_metrics  # still monitorable


class PoisonAfterLastStep(Callback):
    """NaN into a weight after the last optimizer step of epoch ``epoch``: the loss check cannot see
    it before the epoch-end checkpoint, so the save itself must refuse."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, out, batch, idx
    ) -> None:
        if trainer.current_epoch == self.epoch and idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = float("nan")


def test_nan_weights_are_never_checkpointed(fake_mnist: Path, tmp_path: Path) -> None:
    # No validation and no monitor: Lightning saves last.ckpt at every train-epoch end, whatever the
    # metrics, so only vaelab's own check can stop the NaN weights from being written.
    cfg = compose_train(
        [
            "trainer.max_epochs=3",
            "test=false",
            "data.val_size=0",
            "callbacks.model_checkpoint.monitor=null",
        ],
        tmp_path,
        fake_mnist,
    )
    with (
        extra_callbacks(PoisonAfterLastStep(epoch=1), first=True),
        pytest.raises(NonFiniteError, match=r"not finite.*before writing the checkpoint"),
    ):
        train(cfg)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 0  # epoch 0's checkpoint, not overwritten by epoch 1's NaN weights
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
