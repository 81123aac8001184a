"""``vaelab-compress``: a tiny trained run compressed and decompressed through the Hydra config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("constriction")

from tests.conftest import compose_train


def compose_compress(overrides: list[str], tmp_path: Path, data_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="compress",
            overrides=[
                f"paths.output_dir={tmp_path}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"data_dir={data_dir}",
                "elbo_samples=2",
                *overrides,
            ],
        )


def train_tiny(tmp_path: Path, data_dir: Path, overrides: list[str] = ()) -> Path:
    from vaelab.train import train

    cfg = compose_train(
        ["test=false", "data.download=false", "model.latent_dim=4", *overrides], tmp_path, data_dir
    )
    train(cfg)
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def tiny_ckpt(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("train"), fake_mnist)


def test_compress_writes_file_and_metrics_and_decompress_restores(
    tiny_ckpt: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    from vaelab import load_run
    from vaelab.compression.cli import run, split_images

    cfg = compose_compress(
        [f"ckpt_path={tiny_ckpt}", "num_images=150", "coder.block_size=40"], tmp_path, fake_mnist
    )
    metrics = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "compress/bpd",
        "compress/bpd_with_initial",
        "compress/file_bpd",
        "compress/neg_elbo_bpd",
        "compress/gap_percent",
        "compress/initial_bits",
        "compress/encode_images_per_s",
        "compress/decode_images_per_s",
        "compress/baseline/gzip_bpd",
        "compress/baseline/bz2_bpd",
        "compress/baseline/lzma_bpd",
        "compress/baseline/png_bpd",
    ):
        assert key in saved, key
    assert saved["coder"]["order"] == "bitswap" and saved["model_sha256"]
    # what vaelab-reproduce's report reads, as vaelab-train writes it: the checkpoint's training
    # (1 epoch of 4 steps, compose_train's TINY) and where the compression ran
    assert saved["status"] == "ok" and saved["checkpoint"] == str(tiny_ckpt)
    assert (saved["epochs"], saved["global_step"]) == (1, 4)
    assert saved["device"] == "cpu" and saved["threads"] >= 1 and saved["seconds"] > 0
    # The stored stream sits between the net rate and the whole file.
    assert metrics["compress/bpd"] < metrics["compress/bpd_with_initial"]
    assert metrics["compress/bpd_with_initial"] < metrics["compress/file_bpd"]
    # The code length is the discretised model's -ELBO: near the model's own -ELBO (a tiny,
    # barely trained model; the 1 % check on a real model is in the README's results).
    assert metrics["compress/gap_percent"] == pytest.approx(0.0, abs=10.0)
    file = tmp_path / "test.vlbb"
    assert file.is_file()

    out = tmp_path / "restored.npy"
    cfg = compose_compress(
        [f"ckpt_path={tiny_ckpt}", "mode=decompress", f"file={file}", f"output={out}"],
        tmp_path / "dec",
        fake_mnist,
    )
    restored = run(cfg)
    dm = load_run(tiny_ckpt, fake_mnist).datamodule
    expected = split_images(dm, "test", 150)
    assert np.array_equal(np.load(out), expected) and np.array_equal(restored, expected)


def test_decompress_refuses_truncated_file_and_other_checkpoint(
    tiny_ckpt: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    from vaelab.compression import CompressedFileError
    from vaelab.compression.cli import run

    run(compose_compress([f"ckpt_path={tiny_ckpt}", "num_images=50"], tmp_path, fake_mnist))
    file = tmp_path / "test.vlbb"
    data = file.read_bytes()
    cut = tmp_path / "cut.vlbb"
    cut.write_bytes(data[: len(data) - 20])
    with pytest.raises(CompressedFileError, match="truncated"):
        run(compose_compress([f"ckpt_path={tiny_ckpt}", "mode=decompress", f"file={cut}"], tmp_path / "a", fake_mnist))  # fmt: skip
    other = train_tiny(tmp_path / "other", fake_mnist, ["seed=1"])
    with pytest.raises(CompressedFileError, match="different model"):
        run(compose_compress([f"ckpt_path={other}", "mode=decompress", f"file={file}"], tmp_path / "b", fake_mnist))  # fmt: skip


def test_gaussian_likelihood_run_is_refused(fake_mnist: Path, tmp_path: Path) -> None:
    from vaelab.compression import NotCompressibleError
    from vaelab.compression.cli import run

    ckpt = train_tiny(tmp_path, fake_mnist, ["data=mnist", "model=vae_gaussian"])
    with pytest.raises(NotCompressibleError, match="GaussianLikelihood likelihood"):
        run(compose_compress([f"ckpt_path={ckpt}"], tmp_path / "c", fake_mnist))
    # the refusal is recorded, as vaelab-train records a failed run
    saved = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert saved["status"].startswith("failed: NotCompressibleError: ")
    assert saved["epochs"] == 1 and "compress/bpd" not in saved


def test_bbans_vae_experiment_is_townsend_et_al(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=bbans_vae"], tmp_path, tiny=False)
    assert cfg.model.latent_dim == 20
    assert list(cfg.model.encoder.net.hidden) == [100]
    assert list(cfg.model.decoder.net.hidden) == [100]
    assert cfg.model.encoder.net.activation == "relu" == cfg.model.decoder.net.activation
    assert cfg.model._target_ == "vaelab.models.VAE"
    assert cfg.model.decoder._target_.endswith("BernoulliLikelihood")
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.data.batch_size == 100 and cfg.data.binarize == "dynamic"
    assert cfg.trainer.max_epochs == 20 and cfg.scheduler is None


@pytest.mark.slow  # two subprocesses that import Lightning: about 1 min on a shared 2-core machine
def test_console_script_runs_as_documented(
    tiny_ckpt: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    """``vaelab-compress`` as a user types it (a subprocess), then ``mode=decompress``."""
    from tests.helpers.workflow import cli_env, run_cli

    env = cli_env(tmp_path, VAELAB_DATA_DIR=str(fake_mnist))
    out = tmp_path / "c"
    run_cli(
        f"vaelab-compress ckpt_path={tiny_ckpt} split=test num_images=30 hydra.run.dir={out}",
        env=env,
        cwd=tmp_path,
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["compress/num_images"] == 30 and m["compress/bpd"] > 0
    run_cli(
        f"vaelab-compress mode=decompress ckpt_path={tiny_ckpt} file={out / 'test.vlbb'} "
        f"output={tmp_path / 'x.npy'} hydra.run.dir={tmp_path / 'd'}",
        env=env,
        cwd=tmp_path,
    )
    assert np.load(tmp_path / "x.npy").shape == (30, 1, 28, 28)


def test_compressing_over_a_file_on_a_full_disk_keeps_the_old_file(
    tiny_ckpt: Path, fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 26 case 8. Before: Path.write_bytes truncated the old .vlbb, then the disk filled:
    # a 4096-byte fragment was left, and the error named no file.
    from tests.helpers.disk_full import fill_disk
    from vaelab.compression.cli import run

    disk = tmp_path / "disk"
    disk.mkdir()
    old = disk / "test.vlbb"
    old.write_bytes(b"the old file, whole" * 1000)
    fill_disk(monkeypatch, disk, room=64)
    cfg = compose_compress(
        [f"ckpt_path={tiny_ckpt}", "num_images=50", f"file={old}", "baselines=false"],
        tmp_path / "out",
        fake_mnist,
    )
    with pytest.raises(OSError, match=rf"no space left on .* writing {old}"):
        run(cfg)
    assert old.read_bytes() == b"the old file, whole" * 1000
    assert [p.name for p in disk.iterdir()] == ["test.vlbb"]  # no partial file either
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"].startswith("failed: DiskFullError") and str(old) in metrics["status"]


@pytest.mark.parametrize("fault", ["missing", "truncated", "no_file", "no_checkpoint", "garbage"])
def test_every_failed_decompress_writes_metrics_json(
    fault: str, tiny_ckpt: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Issue 26 case 8. Before: a failed mode=decompress run wrote no metrics.json at all.
    from vaelab.compression.cli import run

    file = tmp_path / "f.vlbb"
    if fault == "truncated":
        file.write_bytes(b"VLBB" + b"\0" * 10)
    elif fault == "garbage":
        file.write_bytes(b"not a vaelab file at all")
    ckpt = tmp_path / "none.ckpt" if fault == "no_checkpoint" else tiny_ckpt
    if fault == "no_checkpoint":
        run(compose_compress([f"ckpt_path={tiny_ckpt}", "num_images=20", f"file={file}", "baselines=false"], tmp_path / "c", fake_mnist))  # fmt: skip
    overrides = [f"ckpt_path={ckpt}", "mode=decompress"]
    if fault != "no_file":
        overrides.append(f"file={file}")
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run(compose_compress(overrides, out, fake_mnist))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == f"failed: {type(info.value).__name__}: {info.value}"
