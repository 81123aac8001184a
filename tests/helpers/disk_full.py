"""A full disk, simulated: files opened for writing under one folder take ``room`` bytes, then
every write raises ``OSError(ENOSPC)`` (after writing what fits, as a real full disk does)."""

from __future__ import annotations

import builtins
import errno
import io
from pathlib import Path
from typing import Any

import pytest


class FillsUp:
    """A writable file on a disk with ``room`` bytes left."""

    def __init__(self, f: Any, room: int) -> None:
        self._f, self.room = f, room

    def write(self, data: Any) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self._f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._f.write(data)

    def __enter__(self) -> FillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def fill_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, room: int = 4096) -> None:
    """Every file opened for writing under ``folder`` from now on sits on a full disk."""
    real_open = builtins.open
    folder = Path(folder).resolve()

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wxa+")
        if writing and isinstance(file, str | Path) and folder in Path(file).resolve().parents:
            return FillsUp(f, room)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
