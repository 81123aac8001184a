"""Checkpoints: read without running code, write atomically, and find the run a resume may continue.

- **Reading** (:func:`read_checkpoint`) always uses ``torch.load(weights_only=True)``: tensors,
  numbers, strings, lists and dicts only, so a file whose pickle would run code is refused with a
  :class:`CheckpointError` instead of being executed. A checkpoint written by ``vaelab-train`` never
  needs more. For a file you trust (say, written by an old version), the opt-in is explicit:
  ``trust_checkpoint=true`` on the command line, ``read_checkpoint(path, trust=True)`` in Python.
- **Writing** (:func:`atomic_write`, :class:`AtomicCheckpointIO`) goes to a temporary file in the
  *same folder*, is flushed and fsynced, then ``os.replace``\\ d over the target: a kill or a full disk
  at any moment leaves either the old file or the new one, never a truncated one. Lightning's own
  save writes the temporary file in ``$TMPDIR`` and moves it, which is a truncating copy when
  ``$TMPDIR`` is another filesystem. Partial files of dead writers are removed on the next write.
Which run a resume continues is :mod:`vaelab.resume`; rebuilding a finished run
(``vaelab.load_run``) is :mod:`vaelab.runs`. Both read files through this module.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import math
import os
import pickle
import secrets
import shutil
import socket
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vaelab.checkpoint_hygiene import _PARTIAL, _alive, legacy_format_problem

log = logging.getLogger(__name__)

#: The command-line opt-in named in every refusal.
TRUST_OPTION = "trust_checkpoint=true"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe to load, or belongs to another run."""


# -- reading ---------------------------------------------------------------------------------------
def _describe(p: Path) -> str:
    where = p if p.is_absolute() else f"{p} (from {Path.cwd()}: {p.resolve()})"
    return str(where)


def read_checkpoint(
    path: str | os.PathLike[str], trust: bool = False, mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``; errors say what is wrong and what to do.

    Args:
        path: the ``.ckpt`` file.
        trust: allow full unpickling (``weights_only=False``). Only for files you trust: a pickle
            can run any code when it is loaded.
        mmap: map the tensors from the file instead of reading them (to look at the config of
            many checkpoints quickly).

    Raises:
        CheckpointError: missing, truncated or corrupt file, not a Lightning checkpoint, or a file
            that only pickle can load (with ``trust=False``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {_describe(p)} does not exist; pass ckpt_path=<path to a .ckpt file> "
            "(relative paths are read from the working directory)"
        )
    if not zipfile.is_zipfile(p):
        if legacy_format_problem(p):  # issue 26: torch's legacy format, named as such
            raise CheckpointError(legacy_format_problem(p))
        raise CheckpointError(
            f"checkpoint {_describe(p)} is corrupt or truncated (not a torch zip archive, "
            f"{p.stat().st_size} bytes); use another checkpoint of the run, e.g. "
            "checkpoints/best-*.ckpt, or delete it to start afresh"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as err:
        if trust:
            raise CheckpointError(
                f"checkpoint {_describe(p)} could not be unpickled: {err}"
            ) from err
        first = str(err).strip().splitlines()
        reason = next((line for line in first if "Unsupported" in line or "GLOBAL" in line), "")
        raise CheckpointError(
            f"checkpoint {_describe(p)} holds objects that only pickle can rebuild "
            f"({reason.strip() or 'not plain tensors, numbers, strings, lists or dicts'}). "
            "Loading it could run arbitrary code, so it is refused; a checkpoint written by "
            "vaelab-train never needs this. If you trust this file (you wrote it yourself), "
            f"pass {TRUST_OPTION} (or read_checkpoint(path, trust=True) in Python)."
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {_describe(p)} could not be read ({type(err).__name__}: {err}); it is "
            "corrupt or was written by an incompatible version. Use another checkpoint of the run."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{_describe(p)} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def non_finite_weights(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` holding a NaN or an infinity.

    The one check of a checkpoint's weights: :func:`load_run` refuses such a file, and the
    LightningModule refuses to write one.
    """
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]


# -- writing ---------------------------------------------------------------------------------------
def clean_partial_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the partial files that dead writers on this host left in ``folder``; returns them.

    A writer killed mid-write leaves its temporary file behind (the target is untouched). Files
    of live processes and of other hosts (a shared filesystem) are left alone.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for p in folder.iterdir():
        m = _PARTIAL.match(p.name)
        if m is None or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    if removed:
        log.info("removed %d partial file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


class DiskFullError(OSError):
    """A write failed because its filesystem is full (or the user's quota is spent): the message
    names the device and the file; the file's previous version, if any, is untouched."""


#: errnos that mean "the filesystem has no room for this write".
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def device_of(path: str | os.PathLike[str]) -> str:
    """``/dev/sda1 (mounted at /work)`` for a path on that filesystem (the mount point alone
    where ``/proc/mounts`` is not readable)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    source = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] == str(mount):
                source = fields[0]  # the last mount at that point wins
    return f"{source} (mounted at {mount})" if source else str(mount)


def _write_error(err: BaseException, path: Path) -> BaseException | None:
    """A :class:`DiskFullError` naming the device and ``path`` if ``err`` is an out-of-space
    error, else None."""
    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        free = ""
        with contextlib.suppress(OSError):
            free = f", {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
        return DiskFullError(
            err.errno,
            f"no space left on {device_of(path.parent)} writing {path} ({os.strerror(err.errno)}"
            f"{free}); the previous {path.name}, if any, is kept. Free some space (or point "
            "paths.log_dir / paths.output_dir at another disk) and run again",
        )
    return None


class _RecordingWriter:
    """The temp file as handed to ``write``: remembers the first ``OSError`` of a write, which
    ``torch.save``'s zip writer swallows (it raises ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos ...`` instead)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(f)`` into a temp file in the same folder, flush, fsync,
    ``os.replace``. On any failure the temp file is removed and the old ``path`` is untouched.

    Raises:
        DiskFullError: the filesystem is full (or the quota spent): "no space left on <device>
            writing <path>", whatever form the writer gave the error (``torch.save`` turns it into
            a ``RuntimeError``).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    clean_partial_files(folder)
    tmp = folder / f".vaelab-partial~{socket.gethostname()}~{os.getpid()}~{secrets.token_hex(4)}"
    writer: _RecordingWriter | None = None
    try:
        with open(tmp, "xb") as f:
            writer = _RecordingWriter(f)
            write(writer)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        full = _write_error(err, path)
        if full is None and writer is not None and writer.error is not None:
            full = _write_error(writer.error, path)
        if full is not None:
            raise full from err
        raise
    _fsync_dir(folder)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` plugin: atomic local writes and weights-only loads.

    ``vaelab-train`` and ``vaelab-eval`` give it to their Trainer (``plugins=[...]``), so every
    checkpoint Lightning writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) and reads
    (``fit``/``test`` with ``ckpt_path``) goes through here. Remote paths (``s3://``, ...) use
    Lightning's fsspec path, still with ``weights_only=True`` unless ``trust``.

    Args:
        trust: load with full unpickling (``trust_checkpoint=true``); for files you trust only.
    """

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = bool(trust)

    @staticmethod
    def _remote(path: Any) -> bool:
        return "://" in str(path)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or self._remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        return None

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if self._remote(path):
            return super().load_checkpoint(path, map_location, weights_only=not self.trust)
        return read_checkpoint(path, trust=self.trust)


def _existing_checkpoint(cb: Any, path: str) -> str:
    """``path`` if that file exists, else the newest existing file the callback ``cb`` wrote
    (its folder, its file name up to the first ``{``), else "". A save that failed (a full disk)
    leaves the callback naming a file that was never written; the previous one is still there."""
    if not path or Path(path).is_file():
        return path
    folder = getattr(cb, "dirpath", None)
    if not folder or not Path(folder).is_dir():
        return ""
    stem = str(getattr(cb, "filename", None) or "").split("{")[0] or Path(path).stem.split("-")[0]
    files = [
        p
        for p in Path(folder).glob(f"{glob.escape(stem)}*{getattr(cb, 'FILE_EXTENSION', '.ckpt')}")
        if p.is_file()
    ]
    return str(max(files, key=lambda p: p.stat().st_mtime)) if files else ""


def checkpoint_paths(trainer: Any) -> dict[str, str]:
    """``{"best": ..., "last": ...}`` paths written so far by the trainer's ModelCheckpoints ("")

    ``best``: the best checkpoint of the first callback with a monitor; ``last``: ``last.ckpt``,
    whether written by ``save_last`` or by a monitor-less callback named ``last``
    (``conf/callbacks/model_checkpoint.yaml``). Only files that exist: after a failed save the
    callback's previous file is named instead of the one it could not write.
    """
    best = last = ""
    for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
        path = getattr(cb, "best_model_path", "") or ""
        if getattr(cb, "monitor", None) is None and path and Path(path).stem == "last":
            last = last or _existing_checkpoint(cb, path)
        elif getattr(cb, "monitor", None) is not None or path:
            best = best or _existing_checkpoint(cb, path)
        saved_last = getattr(cb, "last_model_path", "") or ""
        if saved_last and Path(saved_last).is_file():
            last = last or saved_last
    return {"best": best, "last": last}


def finite_checkpoint_note(trainer: Any) -> str:
    """What a run stopped by a non-finite value still has: a checkpoint that *evaluates* finite, or
    a plain statement that none does, and ``last.ckpt`` (finite weights, the resume point).

    Finite weights are not enough: weights of 1e30 (``optimizer.lr=1e30``) are finite, and their
    test NLL is infinite. A checkpoint of a monitored ``ModelCheckpoint`` (the best by ``val/nll``)
    was written right after its validation with exactly its weights; it is named when that
    recorded figure is finite, the file exists and its weights are finite.
    """
    found: tuple[float, str, str] | None = None
    for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
        monitor = getattr(cb, "monitor", None)
        if monitor is None:
            continue
        sign = -1.0 if getattr(cb, "mode", "min") == "max" else 1.0
        for path, score in (getattr(cb, "best_k_models", None) or {}).items():
            value = float(score)
            if not math.isfinite(value) or not Path(path).is_file():
                continue
            if found is not None and sign * value >= sign * found[0]:
                continue
            try:
                weights = read_checkpoint(path, mmap=True)["state_dict"]
            except CheckpointError:
                continue
            if not non_finite_weights(weights):
                found = (value, str(path), str(monitor))
    last = checkpoint_paths(trainer)["last"]
    if found is not None:
        value, path, monitor = found
        note = (
            f"A checkpoint that evaluates finite: {path} ({monitor} = {value:.6g} when it was "
            f"written); vaelab-eval ckpt_path={path}."
        )
    else:
        note = (
            "No checkpoint of this run evaluates finite (none has a finite validation figure): "
            "start afresh."
        )
    if last:
        note += (
            f" The last good checkpoint (finite weights, to resume from) is kept: {last}; "
            "its figures are not checked."
        )
    return note


__all__ = [
    "TRUST_OPTION",
    "AtomicCheckpointIO",
    "CheckpointError",
    "DiskFullError",
    "atomic_write",
    "atomic_write_text",
    "checkpoint_paths",
    "clean_partial_files",
    "device_of",
    "finite_checkpoint_note",
    "non_finite_weights",
    "read_checkpoint",
]
