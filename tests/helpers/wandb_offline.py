"""Read a local (offline) W&B run without a server: run info, config, history, summary, media.

A test and debugging tool, not part of vaelab's API: it reads W&B's binary ``run-<id>.wandb``
format (leveldb-log blocks of protobuf records), which W&B does not document as stable.

    python -m tests.helpers.wandb_offline logs/train/runs/<run>/wandb/offline-run-*
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


def _iter_records(path: Path) -> Iterable[bytes]:
    """Records of a ``run-<id>.wandb`` file (W&B's leveldb-log format: 32 KiB blocks)."""
    data = path.read_bytes()
    ident, _magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, parts = _HEADER.size, []
    while pos + _RECORD.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _RECORD.size:  # block trailer: padding
            pos += room
            continue
        _crc, length, kind = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        parts.append(chunk)
        if kind in (1, 4):
            yield b"".join(parts)
            parts = []


def read_offline_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a local W&B run holds: run info, config, history rows, summary, media files.

    Reads ``<run_dir>/run-<id>.wandb`` with W&B's protobuf records (no network, no server), so an
    offline run can be checked before ``wandb sync``. Returns a dict with ``id``, ``group``,
    ``name``, ``job_type``, ``config`` (flat, dotted keys), ``history`` (list of dicts), ``summary``
    and ``media`` (paths under ``files/media``).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}

    def key_of(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    def value_of(item: Any) -> Any:
        try:
            return json.loads(item.value_json)
        except (ValueError, TypeError):
            return item.value_json

    for raw in _iter_records(files[-1]):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # a truncated last record of a crashed run
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            out.update(
                id=run.run_id,
                project=run.project,
                group=run.run_group,
                name=run.display_name,
                job_type=run.job_type,
                tags=list(run.tags),
                resumed=run.resumed,
            )
            for item in run.config.update:
                out["config"][key_of(item)] = value_of(item)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][key_of(item)] = value_of(item)
        elif kind == "history":
            out["history"].append({key_of(it): value_of(it) for it in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][key_of(item)] = value_of(item)
    media = run_dir / "files" / "media"
    out["media"] = sorted(p for p in media.rglob("*") if p.is_file()) if media.is_dir() else []
    return out


def offline_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Offline run folders under ``root`` (``**/wandb/offline-run-*``), oldest first."""
    runs = [p for p in Path(root).rglob("offline-run-*") if p.is_dir()]
    pattern = re.compile(r"offline-run-(\d{8}_\d{6})")
    return sorted(runs, key=lambda p: (m.group(1) if (m := pattern.search(p.name)) else "", str(p)))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        run = read_offline_run(arg)
        print(json.dumps({k: run[k] for k in ("id", "name", "group", "summary")}, default=str))
