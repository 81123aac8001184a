"""``vaelab-train --help`` and ``--cfg job``, and the progress bar (loss, images/s, few redraws)."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.helpers.workflow import cli_env, run_cli
from vaelab.callbacks.progress import ThroughputProgressBar, batch_items


def test_help_lists_the_config_groups_and_examples(tmp_path: Path) -> None:
    out = run_cli("vaelab-train --help", env=cli_env(tmp_path), cwd=tmp_path, timeout=300).stdout
    groups = dict(
        line.split(": ", 1)
        for line in out.split("== Config groups (group=option) ==", 1)[1].splitlines()
        if ": " in line and not line.startswith(" ")
    )
    assert {"wandb", "csv", "tensorboard", "many_loggers"} <= set(groups["logger"].split(", "))
    assert "ddp" in groups["trainer"] and "vae_optuna" in groups["hparams_search"]
    assert {"vae", "beta_vae", "hvae"} <= set(groups["model"].split(", "))
    assert "rich_progress_bar" in groups["callbacks"]
    assert "parallel" in groups["hydra/launcher"] and "slurm" in groups["hydra/launcher"]
    assert "optuna" in groups["hydra/sweeper"]
    # conf/reproduce/ holds vaelab-reproduce's tables: no group of vaelab-train
    assert "reproduce" not in groups and "iwae_table1" not in out
    for example in ("vaelab-train logger=wandb", "--cfg job", "hparams_search=vae_optuna"):
        assert example in out
    assert not (tmp_path / "logs").exists()  # --help runs nothing


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    proc = run_cli(
        "vaelab-train --cfg job logger=[csv,wandb] trainer=ddp model=beta_vae",
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
    )
    cfg = yaml.safe_load(proc.stdout)
    assert set(cfg["logger"]) == {"csv", "wandb"}
    assert cfg["logger"]["wandb"]["_target_"] == "vaelab.loggers.WandbLogger"
    assert cfg["logger"]["wandb"]["offline"] is None  # auto
    assert (
        cfg["trainer"]["strategy"] == "ddp" and cfg["trainer"]["use_distributed_sampler"] is False
    )
    assert cfg["model"]["objective"]["beta"] == 4.0
    assert cfg["callbacks"]["rich_progress_bar"]["_target_"].endswith("ThroughputProgressBar")
    assert "hydra" not in cfg
    assert not (tmp_path / "logs").exists()


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.net(x).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_progress_bar_shows_loss_and_images_per_second_and_redraws_rarely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 fast steps at refresh_rate=4: the bar is updated a handful of times, not 400."""
    from lightning.pytorch.callbacks import RichProgressBar

    updates: list[int] = []
    original = RichProgressBar.on_train_batch_end

    def counting(self, trainer, pl_module, outputs, batch, batch_idx):
        updates.append(batch_idx)
        return original(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", counting)
    screen = io.StringIO()
    bar = ThroughputProgressBar(
        refresh_rate=4, console_kwargs={"file": screen, "force_terminal": True, "width": 160}
    )
    data = torch.randn(400 * 8, 4)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    try:
        trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=8))
    finally:
        import rich

        rich.reconfigure()  # Lightning's bar reconfigures rich's global console
    assert updates[-1] == 399  # the last batch always updates the bar (it ends complete)
    assert len(updates) < 400 // 4, updates  # at most one redraw per 0.25 s, plus the last
    text = screen.getvalue()
    assert "train/loss" in text and "img/s" in text and "it/s" in text
    assert "v_num" not in text
    assert bar.items_per_batch[bar.train_progress_bar_id] == 8


def test_batch_items() -> None:
    assert batch_items(torch.zeros(7, 1, 28, 28)) == 7
    assert batch_items((torch.zeros(5, 3), torch.zeros(5))) == 5
    assert batch_items({"x": torch.zeros(3, 2)}) == 3
    assert batch_items(torch.tensor(1.0)) is None and batch_items("x") is None
