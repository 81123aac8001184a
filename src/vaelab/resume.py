"""Which run a resume continues: ``ckpt_path=last`` and an explicit ``ckpt_path`` are checked here.

``ckpt_path=last`` continues only a run whose stored model / data / objective / optimizer config
equals the current one (:data:`RESUME_KEYS`, less what may change: :data:`RESUME_FREE`); a
changed config is refused with the differing keys named (:func:`config_differences`). Under
``--multirun`` a job resumes only its own checkpoint (:func:`job_identity_differences`), never
another job's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from vaelab.checkpoints import CheckpointError, read_checkpoint
from vaelab.training import EXECUTION_KEYS

log = logging.getLogger(__name__)

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
    # How the steps run, not what they compute (vaelab.training.EXECUTION_KEYS).
    *EXECUTION_KEYS,
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
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    keys: Sequence[str] | None = RESUME_KEYS,
    free: Sequence[str] = RESUME_FREE,
) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, saved value, current value)]`` where two plain config dicts differ.

    Args:
        saved: the config a run was made with (e.g. a checkpoint's, or its ``.hydra/config.yaml``).
        current: the config asked for now.
        keys: the top-level keys compared (default :data:`RESUME_KEYS`, what a resume must keep);
            ``None`` compares every key of either config.
        free: dotted keys (and everything under them) that may differ (default
            :data:`RESUME_FREE`). A key absent on one side reads as ``None`` there.
    """
    missing = object()
    if keys is None:
        keys = sorted(set(saved) | set(current))
    a = dict(_flatten({k: saved.get(k) for k in keys}, ""))
    b = dict(_flatten({k: current.get(k) for k in keys}, ""))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in free):
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


#: Keys a re-run sweep may change for all its jobs without changing which checkpoint is whose: where
#: files go, how long to train, what to log and evaluate, how to resume.
JOB_FREE = (
    "ckpt_path",
    "trust_checkpoint",
    "resume_strict",
    "paths",
    "hydra",
    "task_name",
    "tags",
    "train",
    "test",
    "eval",
    "logger",
    "callbacks",
    "optimized_metric",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.min_epochs",
    "trainer.min_steps",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    *RESUME_FREE,
)


def _override_key(override: str) -> str | None:
    """``trainer.gradient_clip_val`` of ``+trainer.gradient_clip_val=1`` (None for a bare word)."""
    key = override.split("=", 1)[0].strip().lstrip("+~")
    key = key.split("@", 1)[0]  # group@package=option: the group
    return key or None


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def job_identity_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], job_overrides: Sequence[str]
) -> list[tuple[str, Any, Any]]:
    """The keys this sweep job sets on its command line (its swept values among them) whose value
    in the checkpoint's stored config differs from this run's, minus :data:`JOB_FREE`.

    A checkpoint of another job of the same sweep (``trainer.gradient_clip_val=0.01`` where this
    job has ``100``) differs here even where :func:`config_differences` finds nothing.
    """
    out = []
    for key in dict.fromkeys(k for k in map(_override_key, job_overrides) if k):
        if any(key == f or key.startswith(f + ".") for f in JOB_FREE):
            continue
        a, b = _lookup(saved, key), _lookup(current, key)
        if a != b:
            out.append((key, a, b))
    return out


def find_resume_checkpoint(
    log_dir: str | os.PathLike[str],
    task_name: str,
    config: Mapping[str, Any],
    job_num: int | None = None,
    trust: bool = False,
    job_overrides: Sequence[str] | None = None,
) -> tuple[Path | None, str]:
    """The ``last.ckpt`` that ``ckpt_path=last`` continues: the newest under ``log_dir/task_name``
    whose stored config matches ``config`` (:func:`config_differences`).

    Under a multirun (``job_overrides``: this job's command-line overrides, not None), only a
    checkpoint of *this job* qualifies: one whose stored config also has this job's value of every
    key the job sets (:func:`job_identity_differences`; so another job's checkpoint never does,
    whatever the job numbers), the one of the same job number first. A job with none starts
    afresh. Returns ``(path or None, why none matched)``.

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
        if not diffs and job_overrides is not None:
            diffs = job_identity_differences(saved, config, job_overrides)
            if diffs:
                first_mismatch = first_mismatch or (
                    f"{p} is another sweep job's: {describe_differences(diffs)}"
                )
                continue
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
    "JOB_FREE",
    "RESUME_FREE",
    "RESUME_KEYS",
    "config_differences",
    "describe_differences",
    "find_resume_checkpoint",
    "job_identity_differences",
    "stored_job_num",
]
