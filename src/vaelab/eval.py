"""``vaelab-eval``: rebuild a run from its checkpoint and evaluate it on the test set.

    vaelab-eval ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch009.ckpt
    vaelab-eval ckpt_path=... eval.num_samples=5000 eval.split=val
    vaelab-eval ckpt_path=logs/train/runs/<run>     # a run folder: its best checkpoint

The checkpoint carries the run's resolved config (written by ``vaelab-train``), so the model and
data are rebuilt exactly; only the data folder (``paths.data_dir`` / ``VAELAB_DATA_DIR``), k and the
evaluation seed come from this command. With the same k and seed the result reproduces the
training run's ``test/nll``.

The run is rebuilt by ``vaelab.load_run``: the checkpoint is read weights-only
(``trust_checkpoint=true`` for a file you trust that needs pickle); weights holding a NaN or an
infinity are refused, and a non-finite result (a NaN or infinite ``test/nll``, say) is reported in
``metrics.json`` with a failed status and makes the command exit non-zero.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vaelab.callbacks.eval_progress import EvaluationProgressLog
from vaelab.checkpoints import AtomicCheckpointIO
from vaelab.config import config_dir, register_resolvers
from vaelab.config_check import check_values
from vaelab.runs import load_run
from vaelab.safe_config import trusted_from
from vaelab.stop import check_num_samples, stop_on_sigterm
from vaelab.tasks import TaskRecord, metrics_path, short_errors, task_wrapper
from vaelab.training import quiet_lightning
from vaelab.utils import print_summary, to_float_dict

log = logging.getLogger(__name__)


class NonFiniteResultError(FloatingPointError):
    """An evaluation produced a NaN or infinite figure."""


@quiet_lightning(
    test_only=True
)  # Lightning's noise that is not the user's concern, for this run only
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Test the checkpoint ``cfg.ckpt_path``; returns ``(metrics, objects)``, writes metrics.json.

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe, not vaelab's, or its weights are
            not finite.
        NonFiniteResultError: a figure came out NaN or infinite (still written to metrics.json).
        vaelab.runlock.RunDirBusyError: another live run holds the output folder.
    """
    metrics, objects = evaluate_checkpoint(cfg)
    trainer = objects["trainer"]
    if trainer.global_rank == 0:
        ckpt_path = str(cfg.ckpt_path)
        print_summary(
            f"vaelab eval: {Path(ckpt_path).name} (k = {cfg.eval.num_samples})",
            metrics,
            {"checkpoint": ckpt_path, "metrics": str(metrics_path(cfg))},
        )
    return metrics, objects


@task_wrapper
def evaluate_checkpoint(
    cfg: DictConfig, record: TaskRecord
) -> tuple[dict[str, float], dict[str, Any]]:
    """The task of :func:`evaluate`: ``(metrics, objects)``."""
    ckpt_path = str(cfg.ckpt_path)
    ckpt: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    record.fields = lambda: {
        "checkpoint": ckpt_path,
        "num_samples": _int_or_none(cfg.eval.num_samples),
        "split": str(cfg.eval.split),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
    }
    record.is_main = lambda: (
        (objects["trainer"].global_rank if objects.get("trainer") else rank_zero_only.rank) == 0
    )
    check_values(cfg, "eval")  # types and ranges, before anything loads
    check_num_samples(cfg.eval.num_samples, "eval.num_samples", minimum=1)
    trust = bool(cfg.get("trust_checkpoint", False))
    L.seed_everything(cfg.get("seed", 0), workers=True)
    run = load_run(ckpt_path, data_dir=cfg.eval.data_dir, trust=trust, trusted=trusted_from(cfg))
    ckpt.update(run.checkpoint)
    module = instantiate(
        run.config.module,
        model=run.model,
        optimizer=instantiate(run.config.optimizer),
        test_num_samples=cfg.eval.num_samples,
        eval_seed=cfg.eval.seed,
    )
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO(trust=trust)],
        callbacks=[EvaluationProgressLog()],  # log lines with a time estimate
    )
    datamodule = run.datamodule
    objects.update(trainer=trainer, module=module, datamodule=datamodule)
    if cfg.eval.split == "val":
        datamodule.test_dataloader = datamodule.val_dataloader  # evaluate the held-out split
    elif cfg.eval.split != "test":
        raise ValueError(f"eval.split must be 'test' or 'val', got {cfg.eval.split!r}")
    # The weights are in run.model already (read weights-only): no ckpt_path, so Lightning does
    # not read the file a second time, nor warn that the run's training callbacks are missing.
    with stop_on_sigterm():  # SIGTERM stops L_k at its next chunk, not after the batch
        trainer.test(module, datamodule=datamodule)
    metrics = to_float_dict(trainer.callback_metrics)
    if cfg.eval.split == "val":
        metrics = {k.replace("test/", "val/", 1): v for k, v in metrics.items()}
    record.metrics.update(metrics)
    bad_figures = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad_figures:
        raise NonFiniteResultError(
            f"{ckpt_path}: {', '.join(f'{k} = {metrics[k]}' for k in bad_figures)}; the "
            "model's likelihood overflows on this data (check that the data matches the "
            "run's, and evaluate an earlier checkpoint)"
        )
    return record.metrics, objects


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@short_errors("vaelab-eval")  # a bad value is one message, no traceback
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
