"""``vaelab.tasks.task_wrapper``: metrics.json with its status whatever the task does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vaelab.tasks import TaskRecord, task_wrapper


def config(tmp_path: Path):
    return OmegaConf.create({"paths": {"output_dir": str(tmp_path / "out")}})


@task_wrapper
def task(cfg, record: TaskRecord, fail: BaseException | None = None, closed: list | None = None):
    record.fields = lambda: {"where": "here", "seconds": record.seconds()}
    if closed is not None:
        record.on_close(lambda r: closed.append(r.status))
    record.metrics["test/nll"] = 90.5
    if fail is not None:
        raise fail
    record.metrics["test/bpd"] = float("nan")
    return record.metrics


def read(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_a_finished_task_writes_ok_its_figures_and_fields(tmp_path: Path) -> None:
    closed: list[str] = []
    assert task(config(tmp_path), closed=closed)["test/nll"] == 90.5
    saved = read(tmp_path)
    # figures sorted, NaN kept as a string, then the status and the task's fields in order
    assert list(saved) == ["test/bpd", "test/nll", "status", "where", "seconds"]
    assert saved["test/bpd"] == "nan" and saved["status"] == "ok" and saved["seconds"] >= 0
    assert closed == ["ok"]


@pytest.mark.parametrize("err", [ValueError("bad config"), KeyboardInterrupt("Ctrl-C")])
def test_a_failed_task_records_the_error_and_raises_it_unchanged(
    err: BaseException, tmp_path: Path
) -> None:
    closed: list[str] = []
    with pytest.raises(type(err)) as info:
        task(config(tmp_path), fail=err, closed=closed)
    assert info.value is err
    saved = read(tmp_path)
    assert saved["status"] == f"failed: {type(err).__name__}: {err}"
    assert saved["test/nll"] == 90.5 and "test/bpd" not in saved  # what it had so far
    assert closed == [saved["status"]]  # on_close runs after the write, also on failure


def test_only_the_main_process_writes(tmp_path: Path) -> None:
    @task_wrapper
    def other_rank(cfg, record: TaskRecord) -> None:
        record.is_main = lambda: False

    other_rank(config(tmp_path))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_write_error_never_hides_the_tasks_own(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").mkdir()  # a folder: the write fails
    with pytest.raises(RuntimeError, match="the task's own"):
        task(config(tmp_path), fail=RuntimeError("the task's own"))
    with pytest.raises(OSError):  # a task that succeeded reports the failed write
        task(config(tmp_path))


def test_another_metrics_path(tmp_path: Path) -> None:
    @task_wrapper(path=lambda cfg: Path(cfg.out_dir) / "metrics.json")
    def table(cfg, record: TaskRecord) -> int:
        record.metrics["rows_ok"] = 3.0
        return 0

    assert table(OmegaConf.create({"out_dir": str(tmp_path / "table")})) == 0
    saved = json.loads((tmp_path / "table" / "metrics.json").read_text())
    assert saved == {"rows_ok": 3.0, "status": "ok"}
