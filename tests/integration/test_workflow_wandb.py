"""Weights & Biases with no account and no network: real offline runs from ``vaelab-train``.

The runs are read back from their ``run-<id>.wandb`` files (``tests.helpers.wandb_offline.read_offline_run``),
so the tests check what W&B would upload with ``wandb sync``: the resolved config, the metrics,
the pictures, the group and the run id.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.wandb_offline import offline_runs, read_offline_run
from tests.helpers.workflow import cli_env, job_metrics, run_cli, run_dirs, sweep_dirs, tiny
from vaelab.checkpoints import read_checkpoint
from vaelab.loggers import resolve_mode, wandb_api_key_available


# -- the mode, without wandb ---------------------------------------------------------------------
def test_offline_is_chosen_without_an_api_key_and_can_be_forced(tmp_path: Path) -> None:
    netrc = tmp_path / ".netrc"
    none = {"HOME": str(tmp_path), "NETRC": str(netrc)}
    assert not wandb_api_key_available(none)
    assert resolve_mode(None, none) == "offline"
    assert resolve_mode(False, none) == "online"  # asked for: tried, then falls back if it fails
    with_key = {**none, "WANDB_API_KEY": "x" * 40}
    assert resolve_mode(None, with_key) == "online"
    assert resolve_mode(True, with_key) == "offline"
    assert resolve_mode(None, {**with_key, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode(None, {**with_key, "WANDB_MODE": "disabled"}) == "disabled"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_mode(None, none) == "online"  # `wandb login` writes this entry
    netrc.write_text("machine example.com\n  login user\n  password secret\n")
    assert resolve_mode(None, none) == "offline"


# -- a sweep of two jobs with W&B, then a resume -------------------------------------------------
@pytest.fixture(scope="module")
def wandb_sweep(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``vaelab-train -m logger=[csv,wandb] seed=0,1`` (offline: no key), 2 epochs of 3 steps."""
    tmp = tmp_path_factory.mktemp("wandb_sweep")
    logs = tmp / "logs"
    proc = run_cli(
        "vaelab-train -m logger=[csv,wandb] seed=0,1",
        [
            *tiny(fake_mnist, logs, epochs=2),
            "trainer.log_every_n_steps=1",
            "callbacks.images.every_n_epochs=1",
            "callbacks.images.num_images=32",
        ],
        env=cli_env(tmp),
        cwd=tmp,
    )
    (sweep,) = sweep_dirs(logs)
    return {"tmp": tmp, "logs": logs, "sweep": sweep, "proc": proc}


def test_multirun_gives_one_offline_run_per_job_in_one_group(wandb_sweep: dict) -> None:
    sweep: Path = wandb_sweep["sweep"]
    metrics = job_metrics(sweep)
    assert sorted(metrics) == ["0", "1"]
    runs = {job: offline_runs(sweep / job) for job in metrics}
    assert all(len(r) == 1 for r in runs.values()), runs  # one run per job, in the job's folder
    data = {job: read_offline_run(r[0]) for job, r in runs.items()}
    assert data["0"]["id"] != data["1"]["id"]
    assert data["0"]["group"] == data["1"]["group"] == f"train-{sweep.name}"
    assert data["0"]["name"] == "0-seed=0" and data["1"]["name"] == "1-seed=1"
    assert {d["job_type"] for d in data.values()} == {"train"}
    for job, d in data.items():
        m = metrics[job]
        # The resolved Hydra config.
        assert d["config"]["seed"] == int(job)
        assert d["config"]["model"]["_target_"] == "vaelab.models.VAE"
        assert d["config"]["paths"]["output_dir"] == str(sweep / job)
        # Every metric: train terms at every step (log_every_n_steps=1), val each epoch, test.
        history = d["history"]
        train_steps = [h["trainer/global_step"] for h in history if "train/loss" in h]
        assert train_steps == list(range(6))
        for term in ("train/elbo", "train/rate", "train/distortion", "train/bpd"):
            assert sum(term in h for h in history) == 6, term
        val = [h["val/nll"] for h in history if "val/nll" in h]
        assert len(val) == 2 and all(math.isfinite(v) for v in val)
        assert val[-1] == pytest.approx(m["val/nll"], rel=1e-6)
        (test_row,) = [h for h in history if "test/nll" in h]
        for key in ("test/nll", "test/elbo", "test/rate", "test/bpd"):
            assert test_row[key] == pytest.approx(m[key], rel=1e-6), key
            assert d["summary"][key] == pytest.approx(m[key], rel=1e-6), key
        # The pictures, as PNG files of the run (and as history entries pointing at them).
        names = {p.name.rsplit("_", 2)[0] for p in d["media"] if p.suffix == ".png"}
        assert {"samples", "reconstructions"} <= names, d["media"]
        logged = [k for h in history for k in h if k.startswith("images/")]
        assert any(k.startswith("images/samples") for k in logged)
        from PIL import Image

        png = next(p for p in d["media"] if p.name.startswith("samples"))
        pixels = torch.tensor(list(Image.open(png).convert("L").getdata()), dtype=torch.float32)
        assert pixels.numel() > 28 * 28 and pixels.std() > 0
        # The CSV logger ran alongside.
        assert (sweep / job / "csv" / "metrics.csv").is_file()


def test_resume_continues_the_same_wandb_run(wandb_sweep: dict) -> None:
    sweep: Path = wandb_sweep["sweep"]
    first = read_offline_run(offline_runs(sweep / "0")[0])
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)  # weights-only: vaelab's checkpoints need no pickle
    assert saved["callbacks"]["WandbResume"]["run_id"] == first["id"]

    tmp: Path = wandb_sweep["tmp"]
    logs = tmp / "resume_logs"
    run_cli(
        f"vaelab-train logger=wandb ckpt_path={last}",
        [*tiny(Path(first["config"]["paths"]["data_dir"]), logs, epochs=3), "seed=0"],
        env=cli_env(tmp),
        cwd=tmp,
    )
    (run_dir,) = run_dirs(logs)
    (resumed,) = offline_runs(run_dir)
    again = read_offline_run(resumed)
    assert again["id"] == first["id"]
    assert again["name"] == first["name"] and again["group"] == first["group"]
    steps = [h["trainer/global_step"] for h in again["history"] if "val/nll" in h]
    assert steps == [8]  # epoch 2 only: epochs 0 and 1 were in the first part (3 steps each)
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 9


def test_online_start_without_network_falls_back_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key but no reachable server: ``wandb.init`` times out and the run logs offline."""
    from vaelab.loggers import WandbLogger, finish_loggers

    for key, value in cli_env(tmp_path).items():
        if key.startswith(("WANDB_", "HOME", "NETRC")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    # An address that refuses connections at once: no DNS and no waiting on this machine or any.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    logger = WandbLogger(save_dir=tmp_path / "run", offline=False, init_timeout=5)
    assert logger.mode == "online"
    run = logger.experiment
    assert logger.mode == "offline" and run.settings.mode in ("offline", "dryrun")
    logger.log_metrics({"val/nll": 1.5}, step=3)
    run_dir = logger.run_dir
    finish_loggers([logger], {"test/nll": 2.0})
    deadline = time.monotonic() + 20
    data = read_offline_run(run_dir)
    while not data["history"] and time.monotonic() < deadline:  # written just after finish()
        time.sleep(0.2)
        data = read_offline_run(run_dir)
    assert [h["val/nll"] for h in data["history"] if "val/nll" in h] == [1.5]
    assert data["summary"]["test/nll"] == 2.0


def test_log_images_reaches_tensorboard_and_skips_csv(tmp_path: Path) -> None:
    """The helper the picture callbacks use: TensorBoard gets each image, CSV is skipped."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vaelab.loggers import log_images

    tb = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = L.Trainer(logger=[CSVLogger(tmp_path, name="csv"), tb], accelerator="cpu")
    grid = torch.rand(3, 20, 30)
    pil = Image.fromarray((torch.rand(12, 14) * 255).to(torch.uint8).numpy())
    assert log_images(trainer, "images/samples", [grid], step=7) == 1
    assert log_images(trainer, "images/pair", [grid, pil], step=8) == 1
    tb.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = set(events.Tags()["images"])
    assert tags == {"images/samples", "images/pair/0", "images/pair/1"}
    (sample,) = events.Images("images/samples")
    assert sample.step == 7 and (sample.width, sample.height) == (30, 20)
    (second,) = events.Images("images/pair/1")
    assert (second.width, second.height) == (14, 12)
