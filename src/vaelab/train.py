"""``vaelab-train``: compose the config, instantiate, fit, test, write ``metrics.json``.

vaelab-train                                   # VAE on dynamically binarized MNIST
vaelab-train model=beta_vae model.objective.beta=4
vaelab-train experiment=iwae_vae_1layer schedule.stages=4
vaelab-train ckpt_path=last                    # resume the newest run of this config
vaelab-train --help                            # config groups and options
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab.callbacks.resume import ResumeState
from vaelab.callbacks.wandb_resume import tracking_callbacks, wandb_state_from_checkpoint
from vaelab.checkpoint_hygiene import clean_stale_partials
from vaelab.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    checkpoint_paths,
    read_checkpoint,
)
from vaelab.config import config_dir, register_resolvers
from vaelab.config_check import check_values
from vaelab.distributed import hydra_ddp_jobs
from vaelab.extras import check_command_line
from vaelab.lit import GenerativeModule
from vaelab.loggers import continue_wandb_runs, finish_loggers, is_wandb_logger_config
from vaelab.resume import config_differences, describe_differences, find_resume_checkpoint
from vaelab.stop import stop_on_sigterm
from vaelab.tasks import TaskRecord, short_errors, task_wrapper
from vaelab.training import quiet_lightning
from vaelab.utils import print_summary, to_float_dict

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate datamodule, model, LightningModule, callbacks, loggers and trainer from ``cfg``."""
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module: GenerativeModule = instantiate(
        cfg.module, model=model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler
    )
    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c
    ]
    if not cfg.trainer.get("enable_progress_bar", True):  # else Lightning refuses the bar callback
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    callbacks += tracking_callbacks(loggers, callbacks)  # e.g. the W&B run id in checkpoints
    # First, so that on resume the RNG states are back before any other epoch-start hook draws.
    callbacks.insert(0, ResumeState(job_num=_multirun_job_num()))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=checkpoint_plugins(cfg),
    )
    return {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "module": module,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


def checkpoint_plugins(cfg: DictConfig) -> list[Any]:
    """``cfg.trainer.plugins`` plus :class:`AtomicCheckpointIO` (atomic writes, safe loads),
    unless the config already names a CheckpointIO of its own."""
    from lightning.fabric.plugins import CheckpointIO

    plugins = [
        instantiate(p) if OmegaConf.is_config(p) else p for p in (cfg.trainer.get("plugins") or [])
    ]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO(trust=bool(cfg.get("trust_checkpoint", False))))
    return plugins


def _multirun_job_num() -> int | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return int(HydraConfig.get().job.num)
    return None


def _multirun_job_overrides() -> list[str] | None:
    """This multirun job's command-line overrides (its swept values among them), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return [str(o) for o in HydraConfig.get().overrides.task]
    return None


def resolve_ckpt_path(cfg: DictConfig, run_config: dict[str, Any] | None = None) -> str | None:
    """The checkpoint this run resumes from, checked against the run's config.

    ``null`` -> None. ``last`` -> the newest ``last.ckpt`` of this task whose stored model, data,
    objective and optimizer config equals this run's; under ``--multirun``, only one of this job
    (the same values of the keys the job sets, swept ones included; the same job number first),
    and a job with none starts afresh, so re-running an interrupted sweep resumes each job that
    had started and never another job's checkpoint. A path -> that file, refused if its config
    differs (unless ``resume_strict=false``). Checkpoints are read weights-only (``trust_checkpoint=true`` to opt
    out for a file you trust).

    Raises:
        CheckpointError: missing, corrupt or unsafe file, or a config that differs (keys named).
    """
    path = cfg.get("ckpt_path")
    if not path:
        return None
    if run_config is None:
        run_config = OmegaConf.to_container(cfg, resolve=True)
    trust = bool(cfg.get("trust_checkpoint", False))
    if path == "last":
        clean_stale_partials(Path(cfg.paths.log_dir) / cfg.task_name)  # issue 26: across runs
        job_num = _multirun_job_num()
        found, why = find_resume_checkpoint(
            cfg.paths.log_dir,
            cfg.task_name,
            run_config,
            job_num=job_num,
            trust=trust,
            job_overrides=_multirun_job_overrides(),
        )
        if found is not None:
            log.info("Resuming from %s", found)
            return str(found)
        if job_num is not None:
            log.warning("ckpt_path=last: job %d starts afresh: %s", job_num, why)
            return None
        raise CheckpointError(
            f"ckpt_path=last: {why}. Resume with the checkpoint's values, pass an explicit "
            "ckpt_path=<file> (with resume_strict=false to accept a changed config), or start a "
            "new run (drop ckpt_path, or use another task_name)"
        )
    ckpt = read_checkpoint(path, trust=trust)  # clear error if missing, corrupt or unsafe
    saved = ckpt.get("vaelab_config")
    if saved is None:
        log.warning("%s holds no vaelab config: cannot check that it belongs to this run", path)
        return str(path)
    diffs = config_differences(saved, run_config)
    if diffs:
        msg = f"{path} was trained with another config: {describe_differences(diffs)}"
        if cfg.get("resume_strict", True):
            raise CheckpointError(
                f"{msg}. Resume with the checkpoint's values, or pass resume_strict=false to "
                "continue it under the new config"
            )
        log.warning("%s; continuing under the new config (resume_strict=false)", msg)
    return str(path)


def check_validation_requests(cfg: DictConfig, datamodule: Any) -> None:
    """Refuse a run that asks to validate while its data has no validation split.

    ``data.val_size=0`` trains on every training image and turns validation off (never onto the
    test set). What would then wait for a validation figure that never comes is an error here,
    before training: a callback monitoring ``val/*`` (the default best checkpoint monitors
    ``val/nll``) or an explicit ``trainer.val_check_interval``.
    """
    if getattr(datamodule, "val_size", None) != 0:
        return
    asks = []
    for name, cb in (cfg.get("callbacks") or {}).items():
        monitor = cb.get("monitor") if isinstance(cb, DictConfig) else None
        if isinstance(monitor, str) and monitor.startswith("val/"):
            asks.append(f"callbacks.{name}.monitor={monitor}")
    if (cfg.get("trainer") or {}).get("val_check_interval") is not None:
        asks.append(f"trainer.val_check_interval={cfg.trainer.val_check_interval}")
    if asks:
        raise ValueError(
            "data.val_size=0 trains on every training image with no validation data, but "
            + ", ".join(asks)
            + " asks for validation. Drop that, e.g. callbacks.model_checkpoint.monitor=null "
            "(the final epoch's checkpoint is kept and tested), or hold images out with "
            "data.val_size=5000: vaelab-train experiment=bbans_vae data.val_size=0 "
            "callbacks.model_checkpoint.monitor=null"
        )


@quiet_lightning()  # Lightning's noise that is not the user's concern, for this run only
def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit and test one run. Returns ``(metrics, objects)``; writes ``metrics.json``.

    ``metrics.json`` is written whatever happens, with ``status: ok`` or ``status: failed: ...``,
    also when the run fails before training starts (a refused checkpoint, a bad config). A run
    directory another live run holds is refused before anything is written
    (:func:`vaelab.runlock.run_dir_lock`).
    """
    metrics, objects, train_seconds = fit_and_test(cfg)
    if objects["trainer"].global_rank == 0:
        out_dir = Path(cfg.paths.output_dir)
        print_summary(
            f"vaelab {cfg.task_name}: {cfg.model._target_.rsplit('.', 1)[-1]} on "
            f"{cfg.data._target_.rsplit('.', 1)[-1]} ({train_seconds:.0f} s training)",
            metrics,
            {
                "run directory": str(out_dir),
                "metrics": str(out_dir / "metrics.json"),
                "checkpoints": str(out_dir / "checkpoints"),
            },
        )
    return metrics, objects


@task_wrapper
def fit_and_test(
    cfg: DictConfig, record: TaskRecord
) -> tuple[dict[str, float], dict[str, Any], float]:
    """The task of :func:`train`: ``(metrics, objects, seconds of training)``."""
    objects: dict[str, Any] = {}
    metrics = record.metrics
    fit_ckpts: dict[str, str] = {}  # read after fit: testing a checkpoint restores older paths
    ckpt_path: str | None = None

    def fields() -> dict[str, Any]:
        trainer = objects.get("trainer")
        now = checkpoint_paths(trainer)
        return {
            "epochs": trainer.current_epoch if trainer is not None else None,
            "global_step": trainer.global_step if trainer is not None else None,
            "seconds": record.seconds(),
            "resumed_from": ckpt_path,
            "best_checkpoint": fit_ckpts.get("best") or now["best"] or None,
            "last_checkpoint": fit_ckpts.get("last") or now["last"] or None,
            "output_dir": str(Path(cfg.paths.output_dir)),
            # where it ran and on how many CPU threads
            "device": str(objects["module"].device) if objects.get("module") else None,
            "threads": torch.get_num_threads(),
        }

    def finish(r: TaskRecord) -> None:
        if objects.get("loggers"):
            finish_loggers(objects["loggers"], r.metrics, ok=r.ok)  # one W&B run per job

    record.fields = fields
    record.is_main = lambda: (
        (objects["trainer"].global_rank if objects.get("trainer") else rank_zero_only.rank) == 0
    )
    record.on_close(finish)
    check_values(cfg, "train")  # types, ranges and task_name, before anything loads
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path and any(map(is_wandb_logger_config, (cfg.get("logger") or {}).values())):
        # A resumed run continues its W&B run: the saved id goes into the logger's config.
        saved = read_checkpoint(ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))
        if continue_wandb_runs(cfg.logger, wandb_state_from_checkpoint(saved)):
            log.info("Continuing the W&B run saved in %s", ckpt_path)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    objects.update(build(cfg))
    trainer: L.Trainer = objects["trainer"]
    module: GenerativeModule = objects["module"]
    datamodule = objects["datamodule"]
    check_validation_requests(cfg, datamodule)
    module.run_config = run_config  # saved in every checkpoint, so vaelab-eval can rebuild it
    for lg in objects["loggers"]:
        lg.log_hyperparams(run_config)
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(to_float_dict(trainer.callback_metrics))
        # After callback_metrics, whose train/loss is that of the last *logging* step (step 0 in a
        # run shorter than trainer.log_every_n_steps): train/* of the last step taken.
        metrics.update(module.final_train_metrics())
        fit_ckpts.update(checkpoint_paths(trainer))
    train_seconds = time.perf_counter() - record.started
    if cfg.get("test", True):
        best = fit_ckpts.get("best", "") if cfg.get("train", True) else ""
        test_ckpt = best or (None if cfg.get("train", True) else ckpt_path)
        if best:
            log.info("Testing the best checkpoint %s", best)
        with stop_on_sigterm():  # SIGTERM stops L_k at its next chunk, not after the batch
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt)
        metrics.update(to_float_dict(trainer.callback_metrics))
    return metrics, objects, train_seconds


register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@short_errors("vaelab-train")  # a bad value is one message, no traceback
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers."""
    with hydra_ddp_jobs("vaelab.train"):  # DDP children start this job, not the whole sweep
        metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def main() -> None:
    """``vaelab-train``: a missing sweeper/launcher plugin is named with its ``pip install``
    before Hydra looks for its config (which would only say the option does not exist)."""
    check_command_line(prog="vaelab-train")
    hydra_main()


if __name__ == "__main__":
    main()
