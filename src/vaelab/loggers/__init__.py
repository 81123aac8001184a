"""Experiment trackers: a W&B logger that works with no account and no network, and helpers.

``logger=wandb`` builds :class:`WandbLogger` (``conf/logger/wandb.yaml``):

- **Offline by default without an API key.** ``offline: null`` (auto) runs offline when no key is
  found (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` or a netrc entry for the W&B host) or when
  ``WANDB_MODE`` says ``offline``/``disabled``; ``offline: true`` forces it. Offline runs are written
  under ``<save_dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync <dir>``.
- **Never hangs or crashes the run.** ``wandb.init`` is bounded by ``init_timeout`` seconds; if an
  online start fails (no network, bad key, server down), the run goes on offline with a warning.
- **One run per Hydra job.** Under ``--multirun`` every job is its own W&B run, grouped by sweep
  (``group = <task_name>-<sweep dir name>``, ``name = <job num>-<overrides>``); the run is
  finished at the end of each job (:func:`finish_loggers`), so the next job in the same process
  does not reuse it.
- **Resume keeps the run.** The run id is saved in every checkpoint (the
  :class:`vaelab.callbacks.wandb_resume.WandbResume` callback); ``ckpt_path=last`` or an explicit
  checkpoint continues the same W&B run (:func:`continue_wandb_runs` sets the logger's ``id``).

:func:`log_images` sends pictures to every image-capable logger (W&B, TensorBoard).

One module per concern: :mod:`~vaelab.loggers.wandb_mode` (online/offline without the network),
:mod:`~vaelab.loggers.naming` (group and run names under Hydra),
:mod:`~vaelab.loggers.wandb_logger` (the logger and its run's lifecycle),
:mod:`~vaelab.loggers.images` (pictures to every logger). Reading an offline run's binary file
back (for tests and debugging) lives in ``tests/helpers/wandb_offline.py``.
"""

from vaelab.loggers.images import log_images
from vaelab.loggers.naming import hydra_run_names
from vaelab.loggers.wandb_logger import (
    WandbLogger,
    continue_wandb_runs,
    finish_loggers,
    is_wandb_logger_config,
    wandb_loggers,
)
from vaelab.loggers.wandb_mode import (
    WANDB_HOSTS,
    resolve_mode,
    started_run,
    wandb_api_key_available,
)

__all__ = [
    "WANDB_HOSTS",
    "WandbLogger",
    "continue_wandb_runs",
    "finish_loggers",
    "hydra_run_names",
    "is_wandb_logger_config",
    "log_images",
    "resolve_mode",
    "started_run",
    "wandb_api_key_available",
    "wandb_loggers",
]
