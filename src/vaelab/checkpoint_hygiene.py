"""Checkpoint files on disk: stale partial files across a task's runs, and torch's legacy format.

- :func:`clean_stale_partials`: a writer killed mid-save leaves its ``.vaelab-partial~...`` file
  (:func:`vaelab.checkpoints.atomic_write`); the next write cleans only its own folder, but every
  ``ckpt_path=last`` resume writes a new run folder, so the partials of earlier runs were never
  removed (36 MB after 7 kills). ``vaelab-train ckpt_path=last`` now cleans them across the runs it
  searches (``<paths.log_dir>/<task_name>/``), safely: only files named as vaelab names its own
  partials, only those of this host whose writer process is gone, and only when untouched for
  :data:`STALE_AFTER_S` seconds.
- :func:`legacy_format_problem`: a file in torch's legacy (pre-1.6, non-zip) format is named so,
  with the one-line conversion that reads it weights-only, instead of "corrupt or truncated".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: A partial file untouched this long, whose writer is gone, is stale (a live save touches it).
STALE_AFTER_S = 60.0

#: The first bytes of ``torch.save(..., _use_new_zipfile_serialization=False)``: pickle protocol 2
#: and torch's legacy magic number 0x1950a86a20f9469cfc6c.
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


LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def clean_stale_partials(root: str | os.PathLike[str], min_age_s: float = STALE_AFTER_S) -> int:
    """Remove stale ``.vaelab-partial~<host>~<pid>~<hex>`` files anywhere under ``root``.

    Returns:
        The number of bytes freed.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    host, now, freed, count = socket.gethostname(), time.time(), 0, 0
    for p in root.rglob(".vaelab-partial~*"):
        m = _PARTIAL.match(p.name)
        if m is None or m["host"] != host or int(m["pid"]) == os.getpid():
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if not p.is_file() or p.is_symlink() or now - st.st_mtime < min_age_s:
            continue
        if _alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            freed += st.st_size
            count += 1
    if count:
        log.info(
            "removed %d stale partial file(s) (%d bytes) of killed writes under %s",
            count,
            freed,
            root,
        )
    return freed


def legacy_format_problem(path: str | os.PathLike[str]) -> str | None:
    """What to say about a file in torch's legacy (non-zip) format, or None if it is not one."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError:
        return None
    if head != LEGACY_MAGIC:
        return None
    new = p.with_name(p.stem + "-zip" + p.suffix)
    return (
        f"checkpoint {p} is in torch's legacy (pre-1.6, non-zip) format, which vaelab does not "
        "read (it was written by an old torch or with _use_new_zipfile_serialization=False). "
        'Convert it once, weights-only (this runs none of its code): python -c "import torch; '
        f"torch.save(torch.load('{p}', weights_only=True), '{new}')\" and pass ckpt_path={new} "
        "(if torch refuses that, the file holds objects only pickle can rebuild: load it with "
        "weights_only=False only if you trust it)"
    )


__all__ = ["LEGACY_MAGIC", "STALE_AFTER_S", "clean_stale_partials", "legacy_format_problem"]
