"""Interrupt a vaelab write part-way, as a kill or a full disk would, in a child process.

    python -m tests.helpers.interrupt_write {kill,full} {checkpoint,metrics} OUT DATA_DIR

``checkpoint``: trains 1 tiny epoch, then saves ``last.ckpt`` again through the Trainer (its
CheckpointIO, the path every ModelCheckpoint write takes), with the next file opened for writing
in the run's ``checkpoints/`` folder limited to half the size of the current ``last.ckpt``
(``RLIMIT_FSIZE``). ``kill``: ``SIGXFSZ`` at its default action, so the kernel kills the process the
moment the write passes that size (like ``kill -9`` mid-write; no cleanup runs). ``full``: Python's
default (``SIGXFSZ`` ignored), so the write fails part-way with ``EFBIG``, as it would with
``ENOSPC`` on a full disk. ``metrics``: the same for a second ``metrics.json`` write.

Moves across folders are made cross-device (``os.rename`` raises ``EXDEV`` when source and target
folders differ, as when ``$TMPDIR`` is another filesystem), so ``shutil.move`` falls back to a copy.
Before arming, the SHA-256 of the file that must survive is written to ``OUT/expected.sha256``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import sys
from pathlib import Path

MODE, TARGET, OUT, DATA = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
_rename = os.rename


def cross_device_rename(src, dst, *args, **kwargs):
    if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
        raise OSError(errno.EXDEV, "Invalid cross-device link (simulated)", str(src))
    return _rename(src, dst, *args, **kwargs)


os.rename = cross_device_rename


def arm(watched: Path, survivor: Path) -> None:
    """Limit the next file opened for writing under ``watched`` to half of ``survivor``'s size."""
    (OUT / "expected.sha256").write_text(hashlib.sha256(survivor.read_bytes()).hexdigest())
    limit = survivor.stat().st_size // 2
    if MODE == "kill":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    armed = []

    def hook(event: str, args: tuple) -> None:
        if event != "open" or armed or not isinstance(args[0], str | bytes | os.PathLike):
            return
        path, mode, flags = args
        writing = (mode and any(c in str(mode) for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)
        )
        if writing and os.path.abspath(os.fsdecode(path)).startswith(str(watched)):
            armed.append(path)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    sys.addaudithook(hook)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if TARGET == "metrics":
        from vaelab.utils import write_metrics

        path = OUT / "metrics.json"
        write_metrics(path, {"val/nll": 90.0}, status="ok")
        arm(OUT.resolve(), path)
        write_metrics(path, {f"test/x{i}": float(i) for i in range(500)}, status="ok")
        return

    from tests.conftest import compose_train
    from vaelab import train as train_mod

    ckpt_dir = (OUT / "run" / "checkpoints").resolve()
    cfg = compose_train(["trainer.max_epochs=1", "test=false", "~callbacks.images"], OUT, DATA)
    _, objects = train_mod.train(cfg)
    last = ckpt_dir / "last.ckpt"
    arm(ckpt_dir, last)
    objects["trainer"].save_checkpoint(last)  # the Trainer's CheckpointIO, as ModelCheckpoint's


if __name__ == "__main__":
    main()
