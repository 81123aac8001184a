"""Scoped quiet for a fit or a test: warnings and log lines that are not the user's concern.

Nothing here acts at import. :func:`quiet_lightning` is entered around the Trainer's construction,
``fit`` and ``test`` (``vaelab.train.train``, ``vaelab.eval``) and undoes itself on exit;
:func:`pause_nvml_check` is scoped to a fit by the module's ``on_fit_start``/``teardown``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator

import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning

# (message regex, category) of the warnings silenced during a fit or test.
_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Validation and test figures are logged already reduced over processes (MeanWithError sums
    # values, squares and counts), so Lightning's advice to add sync_dist=True does not apply.
    (r".*when logging on epoch level in distributed setting.*", PossibleUserWarning),
    # The module writes the train/* rows itself, at every log_every_n_steps-th optimizer step, so
    # the warning that an epoch has fewer *batches* than that interval is wrong with K-step blocks
    # (the default run's 550 steps an epoch are 28 Lightning batches; all its rows are written).
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        PossibleUserWarning,
    ),
    # torch 2.10 deprecated isinstance(spec, LeafSpec); Lightning 2.6's _pytree still builds one
    # (lightning/pytorch/utilities/_pytree.py), once per fit. Lightning's to fix, not the user's.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # ModelCheckpoint(every_n_train_steps) under manual optimization: the checkpoint holds the
    # state after the step, which under K-step blocks is what automatic optimization saves too.
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", UserWarning),
)

# Info lines Lightning logs through ``lightning.pytorch.utilities.rank_zero`` on every run.
_LOGGER = "lightning.pytorch.utilities.rank_zero"
_LINES = (
    # callback_connector: vaelab's callbacks hold a RichModelSummary, as configured.
    "Trainer already configured with model summary callbacks",
    # logger_connector and callback_connector: advertisements for litlogger and litmodels.
    "Tip: For seamless cloud ",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in _LINES)


# Only where a checkpoint is tested, never resumed (vaelab-eval): Lightning asks for the training
# callbacks whose state the checkpoint holds; testing needs none of them.
_TEST_ONLY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint", UserWarning),
)


@contextlib.contextmanager
def quiet_lightning(test_only: bool = False) -> Iterator[None]:
    """Silence Lightning's noise that is not the user's concern, for the ``with`` block only.

    Also a decorator (``@quiet_lightning()``). Warnings are filtered with
    ``warnings.catch_warnings`` (the filters are put back on exit) and the info lines by a
    ``logging.Filter`` removed on exit. ``test_only``: the block only tests checkpoints (no fit).
    """
    drop = _DropLines()
    log = logging.getLogger(_LOGGER)
    with warnings.catch_warnings():
        for message, category in _WARNINGS + (_TEST_ONLY_WARNINGS if test_only else ()):
            warnings.filterwarnings("ignore", message=message, category=category)
        log.addFilter(drop)
        try:
            yield
        finally:
            log.removeFilter(drop)


# Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, so that asking whether CUDA is
# available does not initialise CUDA before a fork. Until CUDA is initialised torch then answers
# torch.cuda.is_available() by loading NVML afresh (dlopen + nvmlInit) on every call, and every
# Adam/AdamW step asks (Optimizer._accelerator_graph_capture_health_check): on a CPU run with a
# CUDA build of torch that is paid once per optimizer step. A CPU run never initialises CUDA, so
# for the duration of a fit the CUDA runtime's own cached device count answers instead.
_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def pause_nvml_check(device: torch.device) -> Callable[[], None]:
    """On a CPU, unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` (see above); returns what puts it back."""
    if device.type != "cpu" or os.environ.get(_NVML_CHECK) != "1":
        return lambda: None
    value = os.environ.pop(_NVML_CHECK)

    def restore() -> None:
        os.environ[_NVML_CHECK] = value

    return restore


__all__ = ["pause_nvml_check", "quiet_lightning"]
