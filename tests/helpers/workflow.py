"""Running ``vaelab-train`` as a user would, in a subprocess, with tiny settings and no network.

Every run writes under the test's ``tmp_path`` (logs, W&B files, caches, HOME), never in the repo,
and W&B sees no API key, so ``logger=wandb`` is offline by default.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent


def tiny(data_dir: Path, log_dir: Path, epochs: int = 1, batches: int = 3) -> list[str]:
    """Overrides that make a run take a few seconds on the fake MNIST (500 train, 100 val)."""
    return [
        f"paths.data_dir={data_dir}",
        "data.download=false",
        f"paths.log_dir={log_dir}",
        f"trainer.max_epochs={epochs}",
        f"+trainer.limit_train_batches={batches}",
        "+trainer.num_sanity_val_steps=0",
        "+trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        "data.batch_size=50",
        "data.eval_batch_size=100",
        "data.val_size=100",
        "eval.num_samples=5",
        "eval.val_num_samples=5",
    ]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no W&B account: HOME, caches and W&B dirs under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        NETRC=str(home / ".netrc"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
        WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
        WANDB_SILENT="true",
        HYDRA_FULL_ERROR="1",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.pop("VAELAB_DATA_DIR", None)
    env.update(extra)
    return env


def run_cli(
    command: str | Sequence[str],
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``vaelab-train ...`` (a shell-like string, as written in the docs) plus ``extra``."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[0].startswith("vaelab-") and (BIN / argv[0]).exists():
        argv[0] = str(BIN / argv[0])
    elif argv[0] == "python":
        argv[0] = sys.executable
    proc = subprocess.run(
        [*argv, *extra],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} failed with exit code {proc.returncode}\n"
            f"--- stdout (end) ---\n{proc.stdout[-4000:]}\n--- stderr (end) ---\n{proc.stderr[-6000:]}"
        )
    return proc


def sweep_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    """Multirun folders under ``log_dir/<task>/multiruns``, oldest first."""
    root = log_dir / task / "multiruns"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def run_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    """Single-run folders under ``log_dir/<task>/runs``, oldest first."""
    root = log_dir / task / "runs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def job_metrics(sweep_dir: Path) -> dict[str, dict]:
    """``{job num: metrics.json}`` of a sweep."""
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))
    }
