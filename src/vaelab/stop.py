"""Stopping a long evaluation on SIGTERM within one chunk of ``L_k``, not after the batch.

Lightning 2.x answers SIGTERM by setting ``trainer.received_sigterm``, which its evaluation loop
reads only *between* batches (then raises ``SIGTERMException``, a ``SystemExit``). One batch of
``L_k`` with a large ``k`` can take hours, so ``vaelab-eval eval.num_samples=100000000`` ignored
SIGTERM. :func:`stop_on_sigterm` adds a handler (Lightning's own still runs: it chains the handler
it finds) that only sets a flag; :func:`check_stop`, called before each chunk of importance
samples (``vaelab.objectives.importance_weighted_bound``), raises :class:`EvaluationStopped`, and the entry
point records ``status: failed: EvaluationStopped: ...`` in ``metrics.json`` and exits non-zero.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_REQUESTED = threading.Event()
_REASON: list[str] = []


class EvaluationStopped(RuntimeError):
    """An evaluation was stopped (SIGTERM) before it finished; its figures are not reported."""


def request_stop(reason: str) -> None:
    """Make the next :func:`check_stop` raise :class:`EvaluationStopped` with ``reason``."""
    _REASON[:] = [reason]
    _REQUESTED.set()


def check_stop() -> None:
    """Raise :class:`EvaluationStopped` if a stop was requested (cheap: one flag read)."""
    if _REQUESTED.is_set():
        raise EvaluationStopped(
            f"evaluation stopped by {_REASON[0] if _REASON else 'a stop request'} before it "
            "finished; no figures are reported. Run it again (a smaller eval.num_samples is "
            "faster: k = 5000 is the papers' protocol)"
        )


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While active, SIGTERM stops the evaluation at its next chunk (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Any = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        request_stop("SIGTERM")
        if callable(previous):
            previous(signum, frame)

    _REQUESTED.clear()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _REQUESTED.clear()


def check_num_samples(value: Any, key: str, minimum: int = 1) -> int:
    """``value`` as k of ``L_k``, refused naming ``key`` unless an integer >= ``minimum``.

    Raises:
        ValueError: not an integer, or below ``minimum`` (``eval.num_samples=-1`` ended ``ok``
            with no test/nll before).
    """
    try:
        k = int(value)
        ok = k == value and not isinstance(value, bool) and k >= minimum
    except (TypeError, ValueError, OverflowError):
        k, ok = 0, False
    if not ok:
        allowed = "a positive integer" if minimum >= 1 else f"an integer >= {minimum}"
        zero = " (0: no L_k, the ELBO only)" if minimum == 0 else ""
        raise ValueError(
            f"{key}={value!r}: k of the importance-weighted bound L_k must be {allowed}{zero}; "
            f"e.g. {key}=5000 (the papers' test protocol) or {key}=100 (faster)"
        )
    return k


def stopped_from(err: BaseException) -> EvaluationStopped | None:
    """``err`` as an :class:`EvaluationStopped` if it is one, or Lightning's SIGTERMException
    (a ``SystemExit``, whose exit code would be 0) raised between batches; else None."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(err, EvaluationStopped):
        return err
    if isinstance(err, SIGTERMException):
        request_stop("SIGTERM")
        try:
            check_stop()
        except EvaluationStopped as stop:
            return stop
        finally:
            _REQUESTED.clear()
    return None


__all__ = [
    "EvaluationStopped",
    "check_num_samples",
    "check_stop",
    "request_stop",
    "stop_on_sigterm",
    "stopped_from",
]
