"""Rebuilding a finished run: ``vaelab.load_run(path)`` -> model with its weights, datamodule,
config and ``metrics.json``, from a run folder or a checkpoint (what ``vaelab-eval``,
``vaelab-compress``, ``vaelab-reproduce`` and the notebooks use). The file is read weights-only and
its stored config may name only trusted targets (:mod:`vaelab.safe_config`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from vaelab.checkpoints import CheckpointError, _describe, non_finite_weights, read_checkpoint
from vaelab.safe_config import stored_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedRun:
    """A trained run rebuilt from its checkpoint (:func:`load_run`).

    Attributes:
        model: the ``GenerativeModel`` with the checkpoint's weights, on the CPU, in eval mode.
        datamodule: the run's DataModule (not set up), reading from this machine's data folder.
        config: the run's resolved config, as ``vaelab-train`` stored it in the checkpoint.
        metrics: the run's ``metrics.json`` (``{}`` when the run folder has none).
        checkpoint: the checkpoint itself, read weights-only (``epoch``, ``global_step``, ...).
        checkpoint_path: the file the weights came from.
    """

    model: nn.Module
    datamodule: L.LightningDataModule
    config: DictConfig
    metrics: dict[str, Any]
    checkpoint: dict[str, Any]
    checkpoint_path: Path


def run_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint a run folder stands for: its ``metrics.json``'s ``best_checkpoint``, else
    its ``last_checkpoint``, else ``checkpoints/last.ckpt``; a file is itself.

    A path recorded in ``metrics.json`` that no longer exists (the folder was moved) is looked up
    by name in the folder's ``checkpoints/``.

    Raises:
        CheckpointError: the path does not exist, or the folder holds no checkpoint.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return p  # read_checkpoint names a missing file
    recorded = _read_metrics(p / "metrics.json")
    for key in ("best_checkpoint", "last_checkpoint"):
        value = recorded.get(key)
        if value:
            for candidate in (Path(value), p / "checkpoints" / Path(value).name):
                if candidate.is_file():
                    return candidate
    last = p / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise CheckpointError(
        f"run folder {_describe(p)} holds no checkpoint (no best_checkpoint or last_checkpoint "
        "in its metrics.json, no checkpoints/last.ckpt); pass a .ckpt file, e.g. "
        "<run>/checkpoints/last.ckpt of a run of vaelab-train"
    )


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("could not read %s (%s); the run's metrics are left out", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def load_run(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    trust: bool = False,
    trusted: Sequence[str] = (),
) -> LoadedRun:
    """Rebuild a ``vaelab-train`` run: model with its weights, datamodule, config and metrics.

    The checkpoint carries the run's resolved config (``vaelab_config``), so the model and data
    are rebuilt exactly (``hydra.utils.instantiate``), and the weights are the LightningModule's
    ``model.*`` entries. The file is read weights-only (:func:`read_checkpoint`; no pickle unless
    ``trust``), and the stored config may name only the targets :mod:`vaelab.safe_config` allows
    (it is data: instantiating an arbitrary ``_target_`` would run code).

    Args:
        path: a run folder (``logs/train/runs/<run>``; see :func:`run_checkpoint` for which
            checkpoint it stands for) or a ``.ckpt`` file of one.
        data_dir: this machine's data folder, replacing the one recorded in the run's config
            (``None`` keeps it).
        trust: allow full unpickling, for a file you trust (``trust_checkpoint=true``).
        trusted: targets the stored config may instantiate beyond vaelab's own
            (``trusted_targets=[...]`` on the command line; see :mod:`vaelab.safe_config`).

    Raises:
        CheckpointError: missing, corrupt or unsafe file; not written by ``vaelab-train``; weights
            that are not finite or do not fit the model the config describes.
        vaelab.safe_config.UntrustedConfigError: the stored config names a target that is not
            allowed.

    Example:
        >>> run = vaelab.load_run("logs/train/runs/2026-01-01_12-00-00")  # doctest: +SKIP
        >>> run.model.log_likelihood(run.datamodule.batch("test", 10), 100)  # doctest: +SKIP
    """
    ckpt_path = run_checkpoint(path)
    ckpt = read_checkpoint(ckpt_path, trust=trust)
    if "vaelab_config" not in ckpt:
        raise CheckpointError(
            f"{ckpt_path} has no vaelab_config: it was not written by vaelab-train, so the model "
            "cannot be rebuilt from it"
        )
    bad = non_finite_weights(ckpt["state_dict"])
    if bad:
        raise CheckpointError(
            f"{ckpt_path} holds weights that are not finite ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); its figures would be NaN. Use an earlier "
            "checkpoint of the run (checkpoints/best-*.ckpt, or the last good last.ckpt)"
        )
    config = stored_config(ckpt, trusted, str(ckpt_path))  # checked targets only
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    datamodule = instantiate(config.data)
    model = instantiate(config.model)
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{ckpt_path}: the weights do not fit the model its config describes ({err})"
        ) from err
    model.eval()
    folder = Path(path).expanduser()
    folder = folder if folder.is_dir() else ckpt_path.parent.parent  # <run>/checkpoints/x.ckpt
    metrics = _read_metrics(folder / "metrics.json")
    return LoadedRun(model, datamodule, config, metrics, ckpt, ckpt_path)


__all__ = [
    "LoadedRun",
    "load_run",
    "run_checkpoint",
]
