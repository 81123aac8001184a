"""Issue 11: checkpoints are safe to load, truly atomic to write, and resumed only by their own run.

Each test here failed on the code before the fix (see docs in each test); they use the public
entry points (``vaelab.train.train``, ``vaelab.eval.evaluate``, the CLI, ``vaelab.utils``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_train
from tests.helpers.workflow import cli_env, run_cli, tiny
from vaelab.checkpoints import CheckpointError, read_checkpoint
from vaelab.train import train
from vaelab.utils import write_metrics


class WritesAFile:
    """A pickle payload: unpickling it calls ``os.mkdir(marker)`` (it could run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A zip-format torch file that looks like a Lightning checkpoint and runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": {}, "epoch": 0, "vaelab_config": {}, "payload": WritesAFile(marker)}, path
    )
    return path


def eval_config(ckpt: Path, out: Path, data: Path, *extra: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                f"ckpt_path={ckpt}",
                "eval.num_samples=5",
                f"paths.output_dir={out}",
                f"paths.data_dir={data}",
                "+trainer.enable_progress_bar=false",
                "trainer.accelerator=cpu",
                *extra,
            ],
        )


@pytest.fixture(scope="module")
def trained(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny finished run (1 epoch); returns its last.ckpt."""
    tmp = tmp_path_factory.mktemp("trained")
    train(compose_train(["test=false", "~callbacks.images"], tmp, fake_mnist))
    return tmp / "run" / "checkpoints" / "last.ckpt"


# -- safe loading ----------------------------------------------------------------------------------
def test_the_payload_is_real_and_trust_is_the_explicit_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"trust_checkpoint=true"):
        read_checkpoint(evil)
    assert not marker.exists()
    read_checkpoint(evil, trust=True)  # the opt-in really unpickles: the payload runs
    assert marker.exists()


@pytest.mark.parametrize("entry", ["train ckpt_path=<file>", "eval", "train logger=wandb last"])
def test_a_malicious_checkpoint_runs_nothing(
    entry: str, fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: torch.load(weights_only=False) in read_checkpoint ran the payload in all three.
    marker = tmp_path / "pwned"
    if entry == "eval":
        from vaelab.eval import evaluate

        evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
        with pytest.raises(CheckpointError, match=r"only pickle can rebuild.*trust_checkpoint"):
            evaluate(eval_config(evil, tmp_path / "eval", fake_mnist))
    elif entry.startswith("train ckpt_path"):
        evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
        cfg = compose_train([f"ckpt_path={evil}"], tmp_path, fake_mnist)
        with pytest.raises(CheckpointError, match=r"trust_checkpoint=true"):
            train(cfg)
    else:  # the W&B resume path reads the run id from the newest last.ckpt of the task
        for k in ("WANDB_API_KEY", "WANDB_BASE_URL"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_SILENT", "true")
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
        monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
        monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
        malicious_checkpoint(
            tmp_path / "logs" / "train" / "runs" / "old" / "checkpoints" / "last.ckpt", marker
        )
        cfg = compose_train(["logger=wandb", "ckpt_path=last"], tmp_path, fake_mnist)
        with pytest.raises(CheckpointError, match=r"trust_checkpoint=true"):
            train(cfg)
    assert not marker.exists(), "the checkpoint's pickle ran"


def test_a_truncated_last_ckpt_reached_by_last_is_a_checkpoint_error(
    trained: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: ckpt_path=last handed the file to Lightning unread: a raw miniz RuntimeError.
    cut = tmp_path / "logs" / "train" / "runs" / "r" / "checkpoints" / "last.ckpt"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    cfg = compose_train(["ckpt_path=last"], tmp_path, fake_mnist)
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*another checkpoint"):
        train(cfg)
    assert str(cut) in json.loads((tmp_path / "run" / "metrics.json").read_text())["status"]


# -- atomic writes ---------------------------------------------------------------------------------
def interrupt(mode: str, target: str, out: Path, data: Path, tmpdir: Path) -> int:
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.interrupt_write", mode, target, str(out), str(data)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (out / "expected.sha256").is_file(), proc.stderr[-3000:]
    return proc.returncode


def other_filesystem_tmpdir(tmp_path: Path) -> Path:
    """A $TMPDIR on another filesystem than tmp_path when the machine has one (/dev/shm); the
    helper also makes every move between folders cross-device, so the test holds either way."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        d = shm / f"vaelab-test-{os.getpid()}-{tmp_path.name}"
    else:
        d = tmp_path / "other-tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize("mode", ["kill", "full"])
def test_an_interrupted_checkpoint_write_keeps_the_previous_last_ckpt(
    mode: str, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: Lightning wrote the temp file in $TMPDIR and shutil.move'd it: across filesystems a
    # copy that truncates last.ckpt first. Killed (SIGXFSZ) or failing (EFBIG, as with a full
    # disk) half-way, last.ckpt was left at half its size, and the killed temp stayed in $TMPDIR.
    tmpdir = other_filesystem_tmpdir(tmp_path)
    try:
        rc = interrupt(mode, "checkpoint", tmp_path, fake_mnist, tmpdir)
        assert rc != 0  # the write was really interrupted
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        expected = (tmp_path / "expected.sha256").read_text()
        assert hashlib.sha256(last.read_bytes()).hexdigest() == expected
        assert read_checkpoint(last)["epoch"] == 0
        assert files_in(tmpdir) == []  # nothing written, nor left, in $TMPDIR
        folder = last.parent
        partial = [n for n in files_in(folder) if not n.endswith(".ckpt")]
        assert len(partial) == (1 if mode == "kill" else 0)  # a killed writer cleans nothing
        write_metrics(folder / "probe.json", {})  # the next write in the folder removes it
        assert [n for n in files_in(folder) if not n.endswith((".ckpt", ".json"))] == []
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_a_failed_metrics_write_keeps_the_previous_metrics_json(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: Path.write_text truncated metrics.json first: a full disk left it empty or cut.
    tmpdir = other_filesystem_tmpdir(tmp_path)
    try:
        rc = interrupt("full", "metrics", tmp_path, fake_mnist, tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert rc != 0
    path = tmp_path / "metrics.json"
    assert (
        hashlib.sha256(path.read_bytes()).hexdigest() == (tmp_path / "expected.sha256").read_text()
    )
    assert json.loads(path.read_text()) == {"val/nll": 90.0, "status": "ok"}
    assert files_in(tmp_path) == ["expected.sha256", "metrics.json"]


# -- resume the right run --------------------------------------------------------------------------
def test_last_ckpt_holds_every_epoch_even_when_val_nll_does_not_improve(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: Lightning 2.6's ModelCheckpoint(save_last=True, monitor=val/nll) rewrote last.ckpt
    # only when val/nll improved; with lr=0 it never does, and last.ckpt stayed at epoch 0.
    cfg = compose_train(
        ["trainer.max_epochs=3", "test=false", "optimizer.lr=0.0", "~callbacks.images"],
        tmp_path,
        fake_mnist,
    )
    train(cfg)
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 12)


def test_a_changed_config_is_refused_with_the_key_named(
    trained: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: ckpt_path=last resumed tanh weights as a relu model without a word.
    log_dir = trained.parents[2]
    for ckpt in ("last", str(trained)):
        cfg = compose_train(
            ["model.encoder.net.activation=relu", f"ckpt_path={ckpt}", "trainer.max_epochs=2"],
            tmp_path,
            fake_mnist,
        )
        cfg.paths.log_dir, cfg.task_name = str(log_dir.parent), log_dir.name
        with pytest.raises(
            CheckpointError,
            match=r"model\.encoder\.net\.activation: 'tanh' in the checkpoint, 'relu' now",
        ):
            train(cfg)


def test_a_resumed_run_saves_its_own_config(
    trained: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: on_load_checkpoint replaced the run's config by the checkpoint's, so the resumed
    # run's checkpoints said max_epochs=1 and k=5 although it ran with 2 and 7.
    cfg = compose_train(
        [f"ckpt_path={trained}", "trainer.max_epochs=2", "eval.num_samples=7", "test=false"],
        tmp_path,
        fake_mnist,
    )
    train(cfg)
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["vaelab_config"]
    assert saved["trainer"]["max_epochs"] == 2
    assert saved["module"]["test_num_samples"] == 7


def test_each_job_of_a_rerun_sweep_resumes_its_own_checkpoint(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: every job of `-m seed=0,1 ckpt_path=last` resumed the newest last.ckpt of the
    # task, i.e. the same file, whatever its seed.
    logs = tmp_path / "logs"
    env = cli_env(tmp_path)
    base = [*tiny(fake_mnist, logs, epochs=1, batches=2), "test=false", "~callbacks.images"]
    run_cli("vaelab-train -m seed=0,1", base, env=env, cwd=tmp_path)
    first = {}
    for m in sorted(logs.glob("train/multiruns/*/*/metrics.json")):
        ck = read_checkpoint(json.loads(m.read_text())["last_checkpoint"])
        first[ck["vaelab_config"]["seed"]] = m.parent
    assert sorted(first) == [0, 1]
    time.sleep(1.1)  # a new sweep folder on old code too
    # The interrupted sweep, rerun longer with one more job that never started (seed=2).
    extra = [*base, "trainer.max_epochs=2", "ckpt_path=last"]
    run_cli("vaelab-train -m seed=1,0,2", extra, env=env, cwd=tmp_path)
    sweeps = sorted(p for p in (logs / "train" / "multiruns").iterdir() if p.is_dir())
    assert len(sweeps) == 2
    jobs = sorted(p for p in sweeps[-1].iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 3
    for job in jobs:
        overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        resumed = re.search(r"Resuming from (\S+)", (job / "train.log").read_text())
        m = json.loads((job / "metrics.json").read_text())
        assert m["global_step"] == 4  # 2 restored + 2 new, or 2 epochs x 2 from scratch
        if seed == 2:
            assert resumed is None  # never started before: a fresh run
        else:
            assert resumed is not None and Path(resumed.group(1)).parents[1] == first[seed]


# -- unique folders, failure records ---------------------------------------------------------------
RESOLVE_RUN_DIR = """
import sys
from hydra import compose, initialize_config_dir
from vaelab.config import config_dir
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("train", return_hydra_config=True, overrides=["paths.log_dir=/L"])
print("ready", flush=True)
sys.stdin.readline()  # both processes resolve the folder name at the same instant
print(cfg.hydra.run.dir, flush=True)
"""


def start_two_runs_at_once() -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE_RUN_DIR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return [p.communicate(timeout=120)[0].strip() for p in procs]


def test_two_runs_started_in_the_same_second_get_different_folders() -> None:
    # Before: hydra.run.dir was ${now:%Y-%m-%d_%H-%M-%S}: one folder for both runs.
    stamp = len("/L/train/runs/2026-01-01_00-00-00")
    for _ in range(3):  # retried only if the two fell on either side of a second boundary
        dirs = start_two_runs_at_once()
        assert all(d.startswith("/L/train/runs/") for d in dirs), dirs
        if dirs[0][:stamp] == dirs[1][:stamp]:
            break
    else:
        pytest.skip(f"never resolved in the same second: {dirs}")
    assert dirs[0] != dirs[1]


@pytest.mark.parametrize(
    ("override", "error"),
    [("ckpt_path=/nowhere/last.ckpt", "CheckpointError"), ("data.shape=[3,32,32]", "Error")],
)
def test_an_early_failure_writes_a_failed_metrics_json(
    override: str, error: str, fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: errors in resolve_ckpt_path or build() came before the try: no metrics.json.
    cfg = compose_train([override], tmp_path, fake_mnist)
    with pytest.raises(Exception):  # noqa: B017 - any error; the record is what is tested
        train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"].startswith("failed: ") and error in saved["status"]


# -- vaelab-eval on bad weights --------------------------------------------------------------------
def test_eval_refuses_non_finite_weights(trained: Path, fake_mnist: Path, tmp_path: Path) -> None:
    # Before: vaelab-eval printed test/nll = nan and exited 0.
    from vaelab.eval import evaluate

    ckpt = read_checkpoint(trained)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=rf"not finite \({name}"):
        evaluate(eval_config(bad, tmp_path / "eval", fake_mnist))
    status = json.loads((tmp_path / "eval" / "metrics.json").read_text())["status"]
    assert status.startswith("failed: CheckpointError")


def test_eval_exits_non_zero_on_non_finite_results(
    trained: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Finite but huge decoder weights: the logits overflow, test/nll is not finite.
    ckpt = read_checkpoint(trained)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("model.decoder") and v.is_floating_point():
            v.mul_(1e37)
    huge = tmp_path / "huge.ckpt"
    torch.save(ckpt, huge)
    proc = run_cli(
        f"vaelab-eval ckpt_path={huge} eval.num_samples=5 paths.data_dir={fake_mnist} "
        f"hydra.run.dir={tmp_path / 'eval'} trainer.accelerator=cpu "
        "+trainer.enable_progress_bar=false",
        env=cli_env(tmp_path),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["status"].startswith("failed: NonFiniteResultError")
    assert saved["test/nll"] in ("nan", "inf", "-inf")


# -- data files ------------------------------------------------------------------------------------
def test_a_truncated_mnist_file_is_named_with_the_fix(tmp_path: Path) -> None:
    # Before: "shape '[-1, 28, 28]' is invalid for input of size ...", no file named.
    from tests.helpers.fake_data import write_fake_mnist

    root = write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-1000])
    cfg = compose_train(["data.download=false"], tmp_path, root)
    with pytest.raises(Exception, match=rf"{f}.*truncated or corrupt.*Delete it"):
        train(cfg)
