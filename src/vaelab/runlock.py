"""One run per run directory: an OS-level lock on ``<run dir>/.vaelab.lock``.

Two runs pinned to one folder (``hydra.run.dir=...`` given twice, a script started twice) would
both write ``metrics.json``, ``.hydra/config.yaml`` and the checkpoints there, and one result would
be lost while both end ``ok``. :func:`run_dir_lock` takes ``fcntl.flock`` on a lock file in the
folder: the second run is refused at once with a :class:`RunDirBusyError` naming the holder (pid,
host, start time, command). The kernel drops the lock when its process ends however it ends
(``kill -9`` included), so a lock file left by a dead run is no obstacle: it is taken over, and the
log notes whose it was. On the command line the lock is taken by a Hydra callback
(:class:`RunDirLockCallback`) before Hydra writes into the folder. This module imports only the
standard library and Hydra (no torch), so it loads in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback

log = logging.getLogger(__name__)

LOCK_NAME = ".vaelab.lock"
_HELD: set[str] = set()  # folders this process holds (run_dir_lock is re-entrant)


class RunDirBusyError(RuntimeError):
    """Another live run holds the run directory."""


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that left no details"
    cmd = " ".join(holder.get("command") or [])
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
        + (f": {cmd}" if cmd else "")
    )


def _read(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        holder = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _dead_here(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return True
    except PermissionError:
        return False
    return False


def _rank() -> int:
    """This process's global rank as Lightning reads it (``rank_zero_only.rank``); 0 without
    any rank variable set, without importing Lightning (this module stays light)."""
    names = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    if all(os.environ.get(n, "0") in ("", "0") for n in names):
        return 0
    from lightning.pytorch.utilities import rank_zero_only

    return int(rank_zero_only.rank)


@contextlib.contextmanager
def run_dir_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``folder``'s run lock while the block runs (only process rank 0 of a DDP run locks).

    Raises:
        RunDirBusyError: another live process holds it (the message names it and what to do).
    """
    import fcntl

    folder = Path(folder)
    key = str(folder.absolute())
    if _rank() != 0 or key in _HELD:  # DDP children; or this process holds it already
        yield folder / LOCK_NAME
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            raise RunDirBusyError(
                f"run directory {folder} is in use by another vaelab run ({_describe(holder)}; "
                f"lock file {path}). Two runs in one folder would overwrite each other's "
                "metrics.json, config and checkpoints. Wait for that run to end, or give this "
                "one its own folder: drop hydra.run.dir=... (each run then gets a new folder) "
                "or pass another hydra.run.dir"
            ) from None
        previous = _read(fd)
        if previous:
            state = "no longer running" if _dead_here(previous) else "ended without releasing it"
            log.warning(
                "took over the stale lock of run directory %s: its holder (%s) is %s",
                folder,
                _describe(previous),
                state,
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD.add(key)
        try:
            yield path
        finally:
            _HELD.discard(key)
            # Emptied, not removed: removing it would let a waiting opener lock a dead inode.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class RunDirLockCallback(HydraCallback):
    """Hydra callback (``conf/hydra/default.yaml``): the run directory's lock is taken *before*
    Hydra writes anything there (``.hydra/config.yaml``, ``overrides.yaml``, the job's log), in
    ``on_run_start``, and held until ``on_run_end``; under ``--multirun`` the sweep directory's.
    Without it a refused second run would still have overwritten the first run's ``.hydra/``
    files. The entry points (``vaelab.train.train``, ``vaelab.eval.evaluate``) take the same lock
    again (re-entrant), which covers calls from Python.
    """

    def __init__(self) -> None:
        self._held: contextlib.ExitStack | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Launchers that run jobs in other processes (joblib) pickle the callbacks: a copy holds
        # nothing (the lock stays with the process that took it).
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._held = None

    def _take(self, folder: Any) -> None:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(run_dir_lock(str(folder)))
        except RunDirBusyError as err:
            # Hydra turns a callback's Exception into a warning and runs the job anyway:
            # SystemExit ends the command here (exit status 1, the message on stderr).
            raise SystemExit(f"Error: {err}") from err
        self._held = stack

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._take(config.hydra.run.dir)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._take(config.hydra.sweep.dir)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._release()


__all__ = ["LOCK_NAME", "RunDirBusyError", "RunDirLockCallback", "run_dir_lock"]
