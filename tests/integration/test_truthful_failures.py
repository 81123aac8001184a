"""Issue 26 cases 6-11: failures report themselves truthfully, and no result is lost.

Each test failed on the code before the fix (the docstring or first comment says how).
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import compose_train
from tests.helpers.disk_full import FillsUp
from vaelab.checkpoints import read_checkpoint
from vaelab.train import train


def disk_full_from_write(monkeypatch: pytest.MonkeyPatch, first_failing: int) -> list[int]:
    """Atomic writes number ``first_failing`` (1-based) and later fail with a full disk."""
    import builtins

    import vaelab.checkpoints

    count = [0]

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        if mode == "xb" and ".vaelab-partial~" in str(path):
            count[0] += 1
            if count[0] >= first_failing:
                return FillsUp(f, room=4096)  # tests/helpers/disk_full.py
        return f

    monkeypatch.setattr(vaelab.checkpoints, "open", fake_open, raising=False)
    return count


def test_a_full_disk_during_a_checkpoint_save_is_named_and_recorded_truthfully(
    fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs
    # 598` after a long traceback, and metrics.json named best-epoch001.ckpt, never written.
    cfg = compose_train(
        ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "~callbacks.images"],
        tmp_path,
        fake_mnist,
    )
    # Epoch 0 writes best-epoch000.ckpt and last.ckpt; epoch 1's first checkpoint hits the full
    # disk (and so would everything after it, but metrics.json goes to another disk here).
    count = disk_full_from_write(monkeypatch, first_failing=3)
    import vaelab.utils

    monkeypatch.setattr(
        vaelab.utils,
        "atomic_write_text",
        lambda path, text: Path(path).write_text(text) and Path(path),
    )
    with pytest.raises(OSError, match=r"no space left on .* writing .*\.ckpt") as info:
        train(cfg)
    assert info.value.errno == errno.ENOSPC
    assert "inline_container" not in str(info.value)
    assert count[0] >= 3
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"].startswith("failed: DiskFullError: ")
    assert "no space left on" in metrics["status"]
    for key in ("best_checkpoint", "last_checkpoint"):
        assert metrics[key] is not None and Path(metrics[key]).is_file(), (key, metrics[key])
    # The last good checkpoint is whole and from epoch 0; no partial file is left.
    assert read_checkpoint(metrics["last_checkpoint"])["epoch"] == 0
    assert not list((run / "checkpoints").glob(".vaelab-partial*"))


HOLD_RUN_DIR = """
import importlib.util, sys
# vaelab.runlock imports no torch: loaded by path, the holder starts in a fraction of a second.
spec = importlib.util.spec_from_file_location("runlock", sys.argv[2])
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
with runlock.run_dir_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_in_a_held_run_directory_is_refused_naming_the_holder(
    fake_mnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 26 case 6. Before: two runs pinned to one hydra.run.dir both ended ok, and one
    # metrics.json, config and checkpoint set overwrote the other's.
    import socket
    import subprocess
    import sys

    import vaelab.runlock
    from vaelab.runlock import run_dir_lock

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_RUN_DIR, str(run), vaelab.runlock.__file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (run / "metrics.json").write_text('{"status": "ok", "the first run": 1}')
        cfg = compose_train(["~callbacks.images"], tmp_path, fake_mnist)
        with pytest.raises(RuntimeError, match="in use by another vaelab run") as info:
            train(cfg)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in str(info.value)
        assert "hydra.run.dir" in str(info.value)
        assert json.loads((run / "metrics.json").read_text())["the first run"] == 1
        assert not (run / "checkpoints").exists()
        # The command line is refused before Hydra writes .hydra/ or the job's log there.
        from tests.helpers.workflow import cli_env, run_cli

        r = run_cli(
            ["vaelab-train", f"hydra.run.dir={run}", f"paths.data_dir={fake_mnist}"],
            env=cli_env(tmp_path),
            cwd=tmp_path,
            check=False,
        )
        assert r.returncode == 1
        assert f"in use by another vaelab run (pid {holder.pid} on host" in r.stderr
        assert sorted(p.name for p in run.iterdir()) == [".vaelab.lock", "metrics.json"]
    finally:
        holder.kill()  # kill -9: the kernel releases the lock, the lock file stays
        holder.wait()
    with caplog.at_level("WARNING", logger="vaelab.runlock"), run_dir_lock(run):
        pass
    assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text


def test_a_diverging_run_ends_diverged_with_its_step_and_a_hint(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Issue 26 case 9. Before: optimizer.lr=1e6 ended `status: ok` with test/nll 9.4e17 (a
    # finite blow-up never tripped the NaN stop).
    from vaelab.callbacks.divergence import DivergedError

    cfg = compose_train(
        ["optimizer.lr=1e6", "trainer.max_epochs=2", "trainer.limit_train_batches=8"],
        tmp_path,
        fake_mnist,
    )
    with pytest.raises(DivergedError, match=r"diverged at global step \d+ .*Lower the learning"):
        train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"].startswith("diverged: training diverged at global step ")
    assert "optimizer.lr=1e+06" in metrics["status"]
    assert "test/nll" not in metrics  # no figures of a diverged model are reported as results


def test_a_sane_run_is_not_diverged_and_reports_its_last_steps_train_figures(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Issue 26 case 9. Before: in a run shorter than trainer.log_every_n_steps (50), metrics.json's
    # train/* were step 0's (the last *logged* step), not the last step's.
    cfg = compose_train(
        [
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=4",
            "test=false",
            "~callbacks.images",
            "+callbacks.loss_per_step._target_=tests.integration.test_train.LossPerStep",
        ],
        tmp_path,
        fake_mnist,
    )
    _, objects = train(cfg)
    (recorder,) = [c for c in objects["callbacks"] if type(c).__name__ == "LossPerStep"]
    assert sorted(recorder.loss) == list(range(8))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "ok"
    assert saved["train/loss"] == pytest.approx(recorder.loss[7], rel=1e-6)
    assert saved["train/loss"] != pytest.approx(recorder.loss[0], rel=1e-6)
    assert -saved["train/elbo"] == pytest.approx(
        saved["train/rate"] + saved["train/distortion"], rel=1e-5
    )


class BlowUpThenNaN(L.Callback):
    """Weights x 1e30 before epoch 1's validation (finite, but every figure overflows), then a NaN
    loss at epoch 2: what optimizer.lr=1e30 does, in two deterministic steps."""

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                for p in module.parameters():
                    p.mul_(1e30)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *_) -> None:
        if trainer.current_epoch == 2:
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = float("nan")


def test_the_checkpoint_named_after_a_nan_stop_evaluates_finite(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Issue 26 case 10. Before: "The last good checkpoint is kept: .../last.ckpt", whose weights
    # were 1e30: vaelab-eval on it gave test/nll = inf.
    import re

    from tests.helpers.training import extra_callbacks
    from tests.integration.test_checkpoint_safety import eval_config
    from vaelab.eval import NonFiniteResultError, evaluate
    from vaelab.lit import NonFiniteError

    cfg = compose_train(
        ["trainer.max_epochs=4", "~callbacks.images", "~callbacks.divergence"],
        tmp_path,
        fake_mnist,
    )
    with extra_callbacks(BlowUpThenNaN()), pytest.raises(NonFiniteError) as info:
        train(cfg)
    message = str(info.value)
    named = re.search(r"A checkpoint that evaluates finite: (\S+) \(val/nll = ", message)
    assert named is not None, message
    assert Path(named.group(1)).name == "best-epoch000.ckpt"
    metrics, _ = evaluate(eval_config(Path(named.group(1)), tmp_path / "e1", fake_mnist))
    assert 0 < metrics["test/nll"] < 1e4
    # last.ckpt (epoch 1, finite weights) is still kept to resume from, but not called usable.
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"kept: {last}; its figures are not checked" in message
    with pytest.raises(NonFiniteResultError):
        evaluate(eval_config(last, tmp_path / "e2", fake_mnist))


@pytest.fixture(scope="module")
def tiny_last(fake_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny")
    train(compose_train(["test=false", "~callbacks.images"], tmp, fake_mnist))
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("k", ["-1", "0", "abc"])
def test_eval_refuses_a_non_positive_k_naming_the_key(
    k: str, tiny_last: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Issue 26 case 11. Before: eval.num_samples=-1 ended `ok` with no test/nll.
    from tests.integration.test_checkpoint_safety import eval_config
    from vaelab.eval import evaluate

    cfg = eval_config(tiny_last, tmp_path, fake_mnist, f"eval.num_samples={k}")
    with pytest.raises(
        ValueError,
        match=r"eval\.num_samples=.*(must be a positive integer|expected an integer >= 1)",
    ):
        evaluate(cfg)
    status = json.loads((tmp_path / "metrics.json").read_text())["status"]
    assert re.match(r"failed: (Config)?ValueError: eval\.num_samples=", status), status


def test_sigterm_stops_a_long_evaluation_within_seconds(
    tiny_last: Path, fake_mnist: Path, tmp_path: Path
) -> None:
    # Issue 26 case 11. Before: eval.num_samples=100000000 ignored SIGTERM (Lightning checks it
    # between batches only, and one batch never ended) and grew to 17 GB.
    import _thread
    import os
    import signal
    import threading
    import time

    from tests.integration.test_checkpoint_safety import eval_config
    from vaelab.eval import evaluate
    from vaelab.stop import EvaluationStopped

    def absorb(signum, frame) -> None:  # a SIGTERM outside the evaluation must not end pytest
        pass

    sent: list[float] = []
    done = threading.Event()
    original = signal.signal(signal.SIGTERM, absorb)

    def terminate_once_evaluating() -> None:
        while signal.getsignal(signal.SIGTERM) is absorb and not done.is_set():
            time.sleep(0.05)  # until evaluation puts its handlers in place
        time.sleep(1.0)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)
        if not done.wait(60):  # the old code never stopped: end the test, not the suite
            _thread.interrupt_main()

    watcher = threading.Thread(target=terminate_once_evaluating, daemon=True)
    cfg = eval_config(tiny_last, tmp_path, fake_mnist, "eval.num_samples=100000000")
    try:
        watcher.start()
        with pytest.raises(EvaluationStopped, match="stopped by SIGTERM"):
            evaluate(cfg)
        stopped = time.monotonic()
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGTERM, original)
    assert stopped - sent[0] < 10.0
    status = json.loads((tmp_path / "metrics.json").read_text())["status"]
    assert status.startswith("failed: EvaluationStopped: evaluation stopped by SIGTERM")


def test_a_test_pass_logs_its_progress_with_a_time_estimate(
    tiny_last: Path, fake_mnist: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 25/26. Before: the test pass printed nothing when the output was not a terminal.
    from tests.integration.test_checkpoint_safety import eval_config
    from vaelab.eval import evaluate

    with caplog.at_level("INFO", logger="vaelab.callbacks.eval_progress"):
        evaluate(eval_config(tiny_last, tmp_path, fake_mnist))  # 200 test images, 2 batches
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("eval_progress")]
    assert lines and lines[0].startswith("test: 1/2 batches (50 %), ")
    assert "elapsed, about " in lines[0] and lines[0].endswith("left (k = 5)")
