"""Issue 26 case 5: a re-run sweep job resumes its own checkpoint or none, never another job's."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from tests.conftest import compose_train
from vaelab.resume import find_resume_checkpoint


def job_config(tmp_path: Path, clip: float) -> dict:
    cfg = compose_train([f"trainer.gradient_clip_val={clip}"], tmp_path)
    return OmegaConf.to_container(cfg, resolve=True)


def write_job_checkpoint(log_dir: Path, job: int, config: dict) -> Path:
    path = log_dir / "train" / "multiruns" / "2026-01-01_00-00-00" / str(job) / "checkpoints"
    path.mkdir(parents=True)
    ckpt = {
        "state_dict": {"w": torch.zeros(1)},
        "vaelab_config": config,
        "callbacks": {"ResumeState": {"job_num": job}},
    }
    torch.save(ckpt, path / "last.ckpt")
    return path / "last.ckpt"


def test_a_sweep_job_without_its_own_checkpoint_starts_afresh(tmp_path: Path) -> None:
    # Before: `-m trainer.gradient_clip_val=0.01,100 ckpt_path=last` after job 0 finished and job
    # 1 never started: job 1 resumed job 0's checkpoint (the newest whose model/data/optimizer
    # config matched), trained 0 steps and reported job 0's figures as its own.
    logs = tmp_path / "logs"
    job0 = write_job_checkpoint(logs, 0, job_config(tmp_path, 0.01))
    for num, clip in ((1, 100), (0, 100)):  # job 1; or the re-run sweep lists 100 first
        found, why = find_resume_checkpoint(
            logs,
            "train",
            job_config(tmp_path, clip),
            job_num=num,
            job_overrides=[f"trainer.gradient_clip_val={clip}", "ckpt_path=last"],
        )
        assert found is None, found
        assert "another sweep job's" in why and "trainer.gradient_clip_val" in why
    # Its own checkpoint is found under any job number (the re-run may list the values in
    # another order) and with keys a re-run may change (a longer run).
    for num in (0, 1):
        found, _ = find_resume_checkpoint(
            logs,
            "train",
            job_config(tmp_path, 0.01),
            job_num=num,
            job_overrides=["trainer.gradient_clip_val=0.01", "trainer.max_epochs=5"],
        )
        assert found == job0
