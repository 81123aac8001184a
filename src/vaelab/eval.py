"""``vaelab-eval``: rebuild a run from its checkpoint and evaluate it on the test set.

    vaelab-eval ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch009.ckpt
    vaelab-eval ckpt_path=... eval.num_samples=5000 eval.split=val

The checkpoint carries the run's resolved config (written by ``vaelab-train``), so the model and
data are rebuilt exactly; only the data folder (``paths.data_dir`` / ``VAELAB_DATA_DIR``), k and the
evaluation seed come from this command. With the same k and seed the result reproduces the
training run's ``test/nll``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vaelab.config import config_dir, register_resolvers
from vaelab.utils import (
    CheckpointError,
    print_summary,
    read_checkpoint,
    to_float_dict,
    write_metrics,
)

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Test the checkpoint ``cfg.ckpt_path``; returns ``(metrics, objects)``, writes metrics.json."""
    ckpt_path = str(cfg.ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    if "vaelab_config" not in ckpt:
        raise CheckpointError(
            f"{ckpt_path} has no vaelab_config: it was not written by vaelab-train, so the model "
            "cannot be rebuilt from it"
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
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False)
    if cfg.eval.split == "val":
        datamodule.test_dataloader = datamodule.val_dataloader  # evaluate the held-out split
    elif cfg.eval.split != "test":
        raise ValueError(f"eval.split must be 'test' or 'val', got {cfg.eval.split!r}")
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    metrics = to_float_dict(trainer.callback_metrics)
    if cfg.eval.split == "val":
        metrics = {k.replace("test/", "val/", 1): v for k, v in metrics.items()}
    out_dir = Path(cfg.paths.output_dir)
    if trainer.global_rank == 0:
        write_metrics(
            out_dir / "metrics.json",
            metrics,
            checkpoint=ckpt_path,
            num_samples=int(cfg.eval.num_samples),
            split=str(cfg.eval.split),
            epoch=ckpt.get("epoch"),
            global_step=ckpt.get("global_step"),
        )
        print_summary(
            f"vaelab eval: {Path(ckpt_path).name} (k = {cfg.eval.num_samples})",
            metrics,
            {"checkpoint": ckpt_path, "metrics": str(out_dir / "metrics.json")},
        )
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
