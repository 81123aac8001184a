"""``vaelab.load_run``: a run rebuilt from its folder or a checkpoint, weights-only."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import vaelab
from tests.conftest import compose_train
from vaelab.checkpoints import CheckpointError, read_checkpoint
from vaelab.train import train


@pytest.fixture(scope="module")
def run_dir(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("load_run")
    train(compose_train(["test=false", "~callbacks.images"], tmp, fake_mnist))
    return tmp / "run"


def test_a_run_folder_stands_for_its_best_checkpoint(run_dir: Path, fake_mnist: Path) -> None:
    run = vaelab.load_run(run_dir, data_dir=fake_mnist)
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert str(run.checkpoint_path) == recorded["best_checkpoint"]
    assert run.metrics == recorded and run.metrics["status"] == "ok"
    assert run.config.model._target_ == "vaelab.models.VAE"
    assert run.config.data.data_dir == str(fake_mnist)  # this machine's data folder
    ckpt = read_checkpoint(run.checkpoint_path)
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.{name}"]), name
    assert not run.model.training
    run.datamodule.setup()
    x = run.datamodule.batch("test", 8)
    assert torch.isfinite(run.model.log_likelihood(x, 2)).all()


def test_a_checkpoint_file_and_a_moved_folder(run_dir: Path, tmp_path: Path) -> None:
    last = vaelab.load_run(run_dir / "checkpoints" / "last.ckpt")
    assert last.checkpoint_path == run_dir / "checkpoints" / "last.ckpt"
    assert last.metrics["status"] == "ok"  # the run's metrics.json, next to checkpoints/
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    recorded = json.loads((moved / "metrics.json").read_text())
    for key in ("best_checkpoint", "last_checkpoint"):  # as written on another machine
        recorded[key] = "/elsewhere/run/checkpoints/" + Path(recorded[key]).name
    (moved / "metrics.json").write_text(json.dumps(recorded))
    run = vaelab.load_run(moved)
    assert run.checkpoint_path == moved / "checkpoints" / Path(recorded["best_checkpoint"]).name


def test_refusals_name_the_file(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        vaelab.load_run(empty)
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    del ckpt["vaelab_config"]
    torch.save(ckpt, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="no vaelab_config"):
        vaelab.load_run(tmp_path / "foreign.ckpt")


def test_vaelab_eval_takes_a_run_folder_without_lightnings_ckpt_path_warning(
    run_dir: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: trainer.test(ckpt_path=...) re-read the file and warned that the callbacks that
    # wrote it (ModelCheckpoint, ResumeState, ...) should be given to the Trainer.
    from tests.integration.test_checkpoint_safety import eval_config
    from vaelab.eval import evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics, _ = evaluate(eval_config(run_dir, tmp_path / "eval", fake_mnist))
    about_ckpt = [str(w.message) for w in caught if "ckpt_path" in str(w.message)]
    assert not about_ckpt, about_ckpt
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["status"] == "ok" and saved["checkpoint"] == str(run_dir)
    assert saved["test/nll"] == metrics["test/nll"] and math.isfinite(metrics["test/nll"])
