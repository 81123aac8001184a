"""One task wrapper for every command: ``metrics.json`` with a status, whatever happens.

``vaelab-train``, ``vaelab-eval`` and ``vaelab-compress`` write ``<output_dir>/metrics.json`` at the
end of their task, also when it fails (a refused checkpoint, a bad config, a NaN, Ctrl-C): the
figures gathered so far, ``status: ok`` or ``status: failed: <ExceptionType>: <message>``, and the
task's own fields (epochs, checkpoint, ...). :func:`task_wrapper` writes it once for all of them,
as the lightning-hydra-template's ``task_wrapper`` (``src/utils/utils.py``) wraps its tasks::

    @task_wrapper
    def evaluate(cfg: DictConfig, record: TaskRecord) -> dict[str, float]:
        record.fields = lambda: {"checkpoint": str(cfg.ckpt_path)}
        ...
        record.metrics.update(figures)
        return record.metrics

    evaluate(cfg)  # the caller passes cfg only; the wrapper makes the record

The task fills ``record.metrics`` as it goes; ``record.fields`` is called when the file is written
(after the task ended or failed), so it can read state that exists only by then.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vaelab.checkpoints import CheckpointError
from vaelab.config_check import ConfigValueError
from vaelab.data.mnist import DatasetNotFoundError
from vaelab.runlock import run_dir_lock
from vaelab.safe_config import UntrustedConfigError
from vaelab.stop import stopped_from
from vaelab.utils import write_metrics

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _rank_zero() -> bool:
    return rank_zero_only.rank == 0


@dataclass
class TaskRecord:
    """What a task's ``metrics.json`` records, filled by the task while it runs.

    Attributes:
        path: the file (``<cfg.paths.output_dir>/metrics.json``).
        metrics: the figures so far (sorted by name in the file; NaN and inf kept as strings).
        fields: called when the file is written; the task's own keys, in order, after ``status``.
        is_main: called when the file is written; only the process for which it is true writes
            (under DDP: global rank 0).
        status: ``ok``, or ``failed: <type>: <message>`` once the task raised.
        started: ``time.perf_counter()`` when the task started (see :meth:`seconds`).
    """

    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    fields: Callable[[], Mapping[str, Any]] = dict
    is_main: Callable[[], bool] = _rank_zero
    status: str = "ok"
    started: float = field(default_factory=time.perf_counter)
    _on_close: list[Callable[[TaskRecord], None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the task has not failed (so far)."""
        return self.status == "ok"

    def seconds(self) -> float:
        """Seconds since the task started, rounded to 0.01 s (as ``metrics.json`` records it)."""
        return round(time.perf_counter() - self.started, 2)

    def on_close(self, fn: Callable[[TaskRecord], None]) -> None:
        """Call ``fn(record)`` after ``metrics.json`` is written, also when the task failed
        (e.g. to finish the W&B runs with the final figures and status)."""
        self._on_close.append(fn)

    def fail(self, err: BaseException) -> None:
        """Record that the task raised ``err``: ``failed: <type>: <message>``, or
        ``<word>: <message>`` for an error that names its own status word in ``run_status``
        (``diverged`` for :class:`vaelab.callbacks.divergence.DivergedError`)."""
        word = getattr(err, "run_status", None)
        self.status = f"{word}: {err}" if word else f"failed: {type(err).__name__}: {err}"

    def write(self) -> Path | None:
        """Write ``metrics.json`` (main process only); returns its path, or None if not written.

        A failure to write is raised when the task succeeded, and only logged when it failed: the
        task's own error is never hidden behind this one.
        """
        if not self.is_main():
            return None
        try:
            return write_metrics(self.path, self.metrics, status=self.status, **self.fields())
        except Exception as err:
            if self.ok:
                raise
            log.error("could not write %s: %s", self.path, err)
            return None

    def close(self) -> None:
        """Write ``metrics.json``, then run the :meth:`on_close` callbacks."""
        try:
            self.write()
        finally:
            for fn in self._on_close:
                fn(self)


def metrics_path(cfg: DictConfig) -> Path:
    """``<cfg.paths.output_dir>/metrics.json``: where every command writes its record."""
    return Path(cfg.paths.output_dir) / "metrics.json"


@overload
def task_wrapper(
    task: Callable[Concatenate[DictConfig, TaskRecord, P], R],
) -> Callable[Concatenate[DictConfig, P], R]: ...


@overload
def task_wrapper(
    *, path: Callable[[DictConfig], Path]
) -> Callable[
    [Callable[Concatenate[DictConfig, TaskRecord, P], R]], Callable[Concatenate[DictConfig, P], R]
]: ...


def task_wrapper(task: Any = None, *, path: Callable[[DictConfig], Path] = metrics_path) -> Any:
    """Run ``task(cfg, record, ...)`` as ``wrapped(cfg, ...)``; write ``metrics.json`` whatever happens.

    The wrapper makes the :class:`TaskRecord` (at ``path(cfg)``, :func:`metrics_path` unless
    given: ``@task_wrapper(path=lambda cfg: Path(cfg.out_dir) / "metrics.json")``), marks it
    failed with the exception's type and message if the task raises (the exception propagates
    unchanged; Lightning's SIGTERMException becomes :class:`vaelab.stop.EvaluationStopped`, so
    the process exits non-zero), and closes it: writes the file and runs the task's
    :meth:`TaskRecord.on_close` callbacks. The record's folder is held for the task's duration
    (:func:`vaelab.runlock.run_dir_lock`): a second task there is refused before it writes.
    """

    def decorate(
        task: Callable[Concatenate[DictConfig, TaskRecord, P], R],
    ) -> Callable[Concatenate[DictConfig, P], R]:
        @functools.wraps(task)
        def wrapped(cfg: DictConfig, *args: P.args, **kwargs: P.kwargs) -> R:
            record_path = path(cfg)
            # One run per folder: a second run is refused before it writes anything there.
            with run_dir_lock(record_path.parent):
                record = TaskRecord(record_path)
                try:
                    return task(cfg, record, *args, **kwargs)
                except BaseException as err:
                    stopped = stopped_from(err)  # Lightning's SIGTERMException would exit 0
                    if stopped is not None and stopped is not err:
                        record.fail(stopped)
                        raise stopped from err
                    record.fail(err)
                    raise
                finally:
                    record.close()

        return wrapped

    return decorate if task is None else decorate(task)


#: Errors about the user's input: :func:`short_errors` prints their message alone.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigValueError,
    CheckpointError,
    DatasetNotFoundError,
    UntrustedConfigError,
)


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def short_errors(prog: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a Hydra task function: errors about the user's input (:data:`USER_ERRORS`: a bad
    config value, a refused checkpoint or stored config, a missing or damaged data file) print
    their message only and exit 1; ``HYDRA_FULL_ERROR=1`` raises them as usual (the traceback),
    and so does a ``--multirun`` job (so that the sweep's other jobs still run, as Hydra runs
    them)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or _multirun():
                    raise  # a sweep's other jobs still run; Hydra reports the failed one
                print(
                    f"{prog}: error: {err}\n(HYDRA_FULL_ERROR=1 shows the traceback)",
                    file=sys.stderr,
                )
                sys.exit(1)

        return run

    return wrap


__all__ = ["USER_ERRORS", "TaskRecord", "metrics_path", "short_errors", "task_wrapper"]
