"""``vaelab-train``: compose the config, instantiate, fit, test, write ``metrics.json``.

vaelab-train                                   # VAE on dynamically binarized MNIST
vaelab-train model=beta_vae model.objective.beta=4
vaelab-train experiment=iwae_vae_1layer schedule.stages=4
vaelab-train ckpt_path=last                    # resume the newest run of this task_name
vaelab-train --help                            # config groups and options
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir, register_resolvers
from vaelab.distributed import hydra_ddp_jobs
from vaelab.lit import GenerativeModule
from vaelab.loggers import finish_loggers, resume_loggers, tracking_callbacks
from vaelab.utils import (
    find_last_checkpoint,
    print_summary,
    read_checkpoint,
    to_float_dict,
    write_metrics,
)

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
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "module": module,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``null`` -> None; ``last`` -> the newest last.ckpt of this task; else a checked path."""
    path = cfg.get("ckpt_path")
    if not path:
        return None
    if path == "last":
        found = find_last_checkpoint(cfg.paths.log_dir, cfg.task_name)
        log.info("Resuming from %s", found)
        return str(found)
    read_checkpoint(path)  # clear error if missing or corrupt
    return str(path)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit and test one run. Returns ``(metrics, objects)``; writes ``metrics.json``."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    objects = build(cfg)
    trainer: L.Trainer = objects["trainer"]
    module: GenerativeModule = objects["module"]
    datamodule = objects["datamodule"]
    run_config = OmegaConf.to_container(cfg, resolve=True)
    module.run_config = run_config  # saved in every checkpoint, so vaelab-eval can rebuild the run
    ckpt_path = resolve_ckpt_path(cfg)
    resume_loggers(objects["loggers"], ckpt_path)  # a resumed run continues its W&B run
    for lg in objects["loggers"]:
        lg.log_hyperparams(run_config)

    metrics: dict[str, float] = {}
    fit_ckpts: dict[str, str] = {}  # read after fit: testing a checkpoint restores older paths
    status = "ok"
    t0 = time.perf_counter()
    try:
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update(module.last_train_metrics)  # train/*, as last written to the loggers
            metrics.update(to_float_dict(trainer.callback_metrics))
            for key in ("best_model_path", "last_model_path"):
                fit_ckpts[key] = getattr(trainer.checkpoint_callback, key, "") or ""
        train_seconds = time.perf_counter() - t0
        if cfg.get("test", True):
            best = (
                getattr(trainer.checkpoint_callback, "best_model_path", "")
                if cfg.get("train", True)
                else ""
            )
            test_ckpt = best or (None if cfg.get("train", True) else ckpt_path)
            if best:
                log.info("Testing the best checkpoint %s", best)
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt)
            metrics.update(to_float_dict(trainer.callback_metrics))
    except BaseException as err:
        status = f"failed: {type(err).__name__}: {err}"
        raise
    finally:
        ckpt_cb = trainer.checkpoint_callback
        if trainer.global_rank == 0:
            write_metrics(
                out_dir / "metrics.json",
                metrics,
                status=status,
                epochs=trainer.current_epoch,
                global_step=trainer.global_step,
                seconds=round(time.perf_counter() - t0, 2),
                best_checkpoint=fit_ckpts.get("best_model_path")
                or getattr(ckpt_cb, "best_model_path", "")
                or None,
                last_checkpoint=fit_ckpts.get("last_model_path")
                or getattr(ckpt_cb, "last_model_path", "")
                or None,
                output_dir=str(out_dir),
            )
        finish_loggers(objects["loggers"], metrics, ok=status == "ok")  # one W&B run per job
    if trainer.global_rank == 0:
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


register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers."""
    with hydra_ddp_jobs("vaelab.train"):  # DDP children start this job, not the whole sweep
        metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
