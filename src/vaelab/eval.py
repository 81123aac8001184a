"""``vaelab-eval``: rebuild a run from its checkpoint and evaluate it on the test set.

    vaelab-eval ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch009.ckpt
    vaelab-eval ckpt_path=... eval.num_samples=5000 eval.split=val

The checkpoint carries the run's resolved config (written by ``vaelab-train``), so the model and
data are rebuilt exactly; only the data folder (``paths.data_dir`` / ``VAELAB_DATA_DIR``), k and the
evaluation seed come from this command. With the same k and seed the result reproduces the
training run's ``test/nll``.

The checkpoint is read weights-only (``trust_checkpoint=true`` for a file you trust that needs
pickle); weights holding a NaN or an infinity are refused, and a non-finite result (a NaN or
infinite ``test/nll``, say) is reported in ``metrics.json`` with a failed status and makes the
command exit non-zero.
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
from omegaconf import DictConfig, OmegaConf

from vaelab.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    non_finite_weights,
    read_checkpoint,
)
from vaelab.config import config_dir, register_resolvers
from vaelab.training import quiet_lightning
from vaelab.utils import print_summary, to_float_dict, write_metrics

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
    """
    ckpt_path = str(cfg.ckpt_path)
    out_dir = Path(cfg.paths.output_dir)
    metrics: dict[str, float] = {}
    status = "ok"
    ckpt: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    trust = bool(cfg.get("trust_checkpoint", False))
    try:
        ckpt = read_checkpoint(ckpt_path, trust=trust)
        if "vaelab_config" not in ckpt:
            raise CheckpointError(
                f"{ckpt_path} has no vaelab_config: it was not written by vaelab-train, so the "
                "model cannot be rebuilt from it"
            )
        bad = non_finite_weights(ckpt["state_dict"])
        if bad:
            raise CheckpointError(
                f"{ckpt_path} holds weights that are not finite ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); its figures would be NaN. Evaluate an "
                "earlier checkpoint of the run (checkpoints/best-*.ckpt, or the last good last.ckpt)"
            )
        run = OmegaConf.create(ckpt["vaelab_config"])
        run.data.data_dir = cfg.eval.data_dir
        L.seed_everything(cfg.get("seed", 0), workers=True)
        datamodule = instantiate(run.data)
        model = instantiate(run.model)
        module = instantiate(
            run.module,
            model=model,
            optimizer=instantiate(run.optimizer),
            test_num_samples=cfg.eval.num_samples,
            eval_seed=cfg.eval.seed,
        )
        loggers = [
            instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c
        ]
        trainer: L.Trainer = instantiate(
            cfg.trainer, logger=loggers or False, plugins=[AtomicCheckpointIO(trust=trust)]
        )
        objects = {"trainer": trainer, "module": module, "datamodule": datamodule}
        if cfg.eval.split == "val":
            datamodule.test_dataloader = datamodule.val_dataloader  # evaluate the held-out split
        elif cfg.eval.split != "test":
            raise ValueError(f"eval.split must be 'test' or 'val', got {cfg.eval.split!r}")
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = to_float_dict(trainer.callback_metrics)
        if cfg.eval.split == "val":
            metrics = {k.replace("test/", "val/", 1): v for k, v in metrics.items()}
        bad_figures = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad_figures:
            raise NonFiniteResultError(
                f"{ckpt_path}: {', '.join(f'{k} = {metrics[k]}' for k in bad_figures)}; the "
                "model's likelihood overflows on this data (check that the data matches the "
                "run's, and evaluate an earlier checkpoint)"
            )
    except BaseException as err:
        status = f"failed: {type(err).__name__}: {err}"
        raise
    finally:
        trainer = objects.get("trainer")
        rank = trainer.global_rank if trainer is not None else rank_zero_only.rank
        if rank == 0:
            try:
                write_metrics(
                    out_dir / "metrics.json",
                    metrics,
                    status=status,
                    checkpoint=ckpt_path,
                    num_samples=int(cfg.eval.num_samples),
                    split=str(cfg.eval.split),
                    epoch=ckpt.get("epoch"),
                    global_step=ckpt.get("global_step"),
                )
            except Exception as err:  # never hide the evaluation's own error behind this one
                if status == "ok":
                    raise
                log.error("could not write %s: %s", out_dir / "metrics.json", err)
    if rank == 0:
        print_summary(
            f"vaelab eval: {Path(ckpt_path).name} (k = {cfg.eval.num_samples})",
            metrics,
            {"checkpoint": ckpt_path, "metrics": str(out_dir / "metrics.json")},
        )
    return metrics, objects


register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
