"""Issue 26 case 13: stale partial files across resumed runs, compress's trust option, legacy files."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from vaelab.checkpoints import CheckpointError, read_checkpoint


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(folder: Path, host: str, pid: int, age_s: float, size: int = 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f".vaelab-partial~{host}~{pid}~{os.urandom(4).hex()}"
    p.write_bytes(b"\0" * size)
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def test_a_resume_cleans_stale_partials_of_earlier_runs_only(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: only the folder being written was cleaned, and every ckpt_path=last resume writes a
    # new run folder, so the partials of the killed runs stayed (36 MB after 7 kills).
    from vaelab.train import train

    host, dead = socket.gethostname(), _dead_pid()
    task = tmp_path / "logs" / "train"
    stale = [
        _partial(task / "runs" / "a" / "checkpoints", host, dead, 3600),
        _partial(task / "runs" / "b", host, dead, 3600),  # a metrics.json write
        _partial(task / "multiruns" / "s" / "0" / "checkpoints", host, dead, 3600),
    ]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [
            _partial(task / "runs" / "c" / "checkpoints", host, sleeper.pid, 3600),  # live writer
            _partial(task / "runs" / "c" / "checkpoints", "another-host", dead, 3600),  # NFS peer
            _partial(task / "runs" / "d" / "checkpoints", host, dead, 1),  # just written
        ]
        mine = task / "runs" / "e" / "checkpoints" / ".vaelab-partial~notes.txt"  # not our name
        mine.parent.mkdir(parents=True)
        mine.write_text("keep")
        other_task = _partial(tmp_path / "logs" / "other" / "runs" / "x", host, dead, 3600)
        cfg = compose_train(["ckpt_path=last"], tmp_path, fake_mnist)
        with pytest.raises(CheckpointError, match=r"no last\.ckpt"):
            train(cfg)
        assert [p for p in stale if p.exists()] == []
        assert all(p.exists() for p in [*kept, mine, other_task])
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture(scope="module")
def trained(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vaelab.train import train

    tmp = tmp_path_factory.mktemp("trained")
    train(compose_train(["test=false", "~callbacks.images", "model.latent_dim=4"], tmp, fake_mnist))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(name, overrides=overrides)


def test_the_compress_refusal_suggests_an_option_that_works(
    trained: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: vaelab-compress said "pass trust_checkpoint=true", and then rejected that key
    # ("Could not override 'trust_checkpoint'").
    pytest.importorskip("constriction")
    from vaelab.compression.cli import run

    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    ckpt["extra"] = argparse.Namespace(note="needs pickle, harmless")  # a file you trust
    needs_pickle = tmp_path / "old.ckpt"
    torch.save(ckpt, needs_pickle)
    base = [
        f"ckpt_path={needs_pickle}",
        f"data_dir={fake_mnist}",
        "num_images=5",
        "elbo_samples=1",
        "baselines=false",
    ]
    with pytest.raises(CheckpointError) as err:
        run(_compose("compress", [*base, f"paths.output_dir={tmp_path / 'a'}"]))
    option = str(err.value).split("pass ", 1)[1].split(" ", 1)[0]
    assert option == "trust_checkpoint=true"
    metrics = run(_compose("compress", [*base, f"paths.output_dir={tmp_path / 'b'}", option]))
    assert metrics["compress/num_images"] == 5
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["status"] == "ok"


def test_a_legacy_torch_file_is_called_that_with_what_to_do(trained: Path, tmp_path: Path) -> None:
    # Before: "is corrupt or truncated (not a torch zip archive ...)".
    legacy = tmp_path / "legacy.ckpt"
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(legacy)
    msg = str(err.value)
    assert "legacy (pre-1.6, non-zip) format" in msg and "corrupt" not in msg
    # the conversion it prints works, and its result is read
    code = msg.split('python -c "', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-c", code], check=True)
    new = msg.rsplit("ckpt_path=", 1)[1].split(" ", 1)[0]
    assert read_checkpoint(new)["epoch"] == ckpt["epoch"]
    # a truncated file is still called truncated
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(cut)
