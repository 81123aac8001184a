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
- **Resuming** (:func:`find_resume_checkpoint`, :func:`config_differences`): ``ckpt_path=last``
  continues only a run whose stored model / data / objective / optimizer config equals the current
  one; a changed config is refused with the differing keys named.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import secrets
import socket
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vaelab.checkpoint_hygiene import legacy_format_problem

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
    """Names of floating-point tensors in ``state_dict`` holding a NaN or an infinity."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]


# -- writing ---------------------------------------------------------------------------------------
# .vaelab-partial~<host>~<pid>~<random>: no "last" and no ".ckpt" in the name, so neither Lightning's
# ModelCheckpoint nor ckpt_path=last ever mistakes a partial file for a checkpoint.
_PARTIAL = re.compile(r"^\.vaelab-partial~(?P<host>[^~]+)~(?P<pid>\d+)~[0-9a-f]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(f)`` into a temp file in the same folder, flush, fsync,
    ``os.replace``. On any failure the temp file is removed and the old ``path`` is untouched."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    clean_partial_files(folder)
    tmp = folder / f".vaelab-partial~{socket.gethostname()}~{os.getpid()}~{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
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


def checkpoint_paths(trainer: Any) -> dict[str, str]:
    """``{"best": ..., "last": ...}`` paths written so far by the trainer's ModelCheckpoints ("")

    ``best``: the best checkpoint of the first callback with a monitor; ``last``: ``last.ckpt``,
    whether written by ``save_last`` or by a monitor-less callback named ``last``
    (``conf/callbacks/model_checkpoint.yaml``).
    """
    best = last = ""
    for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
        path = getattr(cb, "best_model_path", "") or ""
        if getattr(cb, "monitor", None) is None and path and Path(path).stem == "last":
            last = last or path
        else:
            best = best or path
        last = last or (getattr(cb, "last_model_path", "") or "")
    return {"best": best, "last": last}


# -- which run a resume continues ------------------------------------------------------------------
#: Config sections that must be equal for a resume (the run's model, data, objective and optimizer).
RESUME_KEYS = ("seed", "model", "data", "optimizer", "scheduler", "module")
#: Keys inside them that may change between runs: where the data is, and evaluation-only settings.
RESUME_FREE = (
    "data.data_dir",
    "data.download",
    "data.on_device",
    "data.eval_batch_size",
    "data.eval_seed",
    "module.val_num_samples",
    "module.test_num_samples",
    "module.eval_seed",
    "module.active_units",
    # How the steps run, not what they compute: a run trained with CUDA graphs on a GPU resumes
    # without them (e.g. on a CPU, which refuses them), and the other way round.
    "module.cuda_graph",
    # Likewise K optimizer steps per Lightning batch: bitwise the same steps as K = 1
    # (tests/integration/test_steps_per_batch.py), so a run of an older vaelab (K = 1) resumes
    # under steps_per_batch: auto. A resume inside an epoch under another K is still refused,
    # by the training loader (its position is counted in the checkpoint's blocks).
    "module.steps_per_batch",
)


def _flatten(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        if not node:
            yield prefix, {}
        for k, v in node.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``[(key, saved value, current value)]`` over :data:`RESUME_KEYS`, minus :data:`RESUME_FREE`."""
    missing = object()
    a = dict(_flatten({k: saved.get(k) for k in RESUME_KEYS}, ""))
    b = dict(_flatten({k: current.get(k) for k in RESUME_KEYS}, ""))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in RESUME_FREE):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    parts = [f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"... and {len(diffs) - limit} more")
    return "; ".join(parts)


def stored_job_num(ckpt: Mapping[str, Any]) -> int | None:
    """The Hydra multirun job number saved by ``vaelab.callbacks.ResumeState``, if any."""
    state = (ckpt.get("callbacks") or {}).get("ResumeState") or {}
    num = state.get("job_num")
    return int(num) if num is not None else None


def find_resume_checkpoint(
    log_dir: str | os.PathLike[str],
    task_name: str,
    config: Mapping[str, Any],
    job_num: int | None = None,
    trust: bool = False,
) -> tuple[Path | None, str]:
    """The ``last.ckpt`` that ``ckpt_path=last`` continues: the newest under ``log_dir/task_name``
    whose stored config matches ``config`` (:func:`config_differences`); under a multirun, one
    of the same job number first. Returns ``(path or None, why none matched)``.

    Raises:
        CheckpointError: a candidate newer than the chosen one (or than every candidate, when none
            matches) cannot be read: it may be this run's, so it is not silently passed over.
    """
    root = Path(log_dir) / task_name
    found = sorted(
        root.glob("**/checkpoints/last*.ckpt"), key=lambda q: q.stat().st_mtime, reverse=True
    )
    if not found:
        return None, f"no last.ckpt under {root}/"
    matches: list[tuple[Path, int | None]] = []
    first_mismatch = ""
    for p in found:
        try:
            ckpt = read_checkpoint(p, trust=trust, mmap=True)  # the config, not the tensors
        except CheckpointError as err:
            if not matches:
                raise CheckpointError(
                    f"ckpt_path=last: the newest checkpoint of task {task_name!r} cannot be "
                    f"used: {err}. Pass ckpt_path=<another checkpoint>, or move the file away."
                ) from err
            break
        saved = ckpt.get("vaelab_config")
        if saved is None:
            first_mismatch = first_mismatch or f"{p} holds no vaelab config"
            continue
        diffs = config_differences(saved, config)
        if diffs:
            first_mismatch = first_mismatch or f"{p} differs: {describe_differences(diffs)}"
            continue
        matches.append((p, stored_job_num(ckpt)))
        if job_num is None or stored_job_num(ckpt) == job_num:
            return p, ""
    if matches:
        return matches[0][0], ""
    return None, (
        f"no last.ckpt under {root}/ was trained with this config (the newest: {first_mismatch})"
    )


__all__ = [
    "RESUME_FREE",
    "RESUME_KEYS",
    "TRUST_OPTION",
    "AtomicCheckpointIO",
    "CheckpointError",
    "atomic_write",
    "atomic_write_text",
    "checkpoint_paths",
    "clean_partial_files",
    "config_differences",
    "find_resume_checkpoint",
    "non_finite_weights",
    "read_checkpoint",
]
