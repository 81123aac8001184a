"""DDP on CPU (2 processes, gloo): training steps run, and evaluation is exactly the single-process one.

Evaluation batches are dealt whole to the ranks and seeded by their global index, and the figures
are sums, sums of squares and counts reduced over ranks, so ``val/nll`` and ``test/nll`` under DDP
equal a single-process evaluation of the same checkpoint. The splits are chosen so that the ranks
get different numbers of images (test: 200 images in batches of 90 -> rank 0 gets 110, rank 1 90;
val: 100 -> 90 and 10), where averaging per-rank means would give a different number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.wandb_offline import offline_runs, read_offline_run
from tests.helpers.workflow import cli_env, job_metrics, run_cli, run_dirs, sweep_dirs, tiny

DDP = "trainer=ddp trainer.accelerator=cpu trainer.devices=2"


def evaluate_single_process(ckpt: Path, data_dir: Path, out: Path, split: str) -> dict:
    """``vaelab-eval`` in this process (one process, no DDP) with the run's k and seed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir
    from vaelab.eval import evaluate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={ckpt}",
                "eval.num_samples=5",
                f"eval.split={split}",
                f"eval.data_dir={data_dir}",
                f"paths.output_dir={out}",
                "trainer.accelerator=cpu",
                "+trainer.enable_progress_bar=false",
            ],
        )
    metrics, _ = evaluate(cfg)
    return metrics


def test_ddp_cpu_trains_and_matches_single_process_nll(fake_mnist: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    run_cli(
        f"vaelab-train {DDP}",
        [
            *tiny(fake_mnist, logs, batches=4),
            "data.eval_batch_size=90",
            "callbacks=[model_checkpoint]",
        ],
        env=cli_env(tmp_path),
        cwd=tmp_path,
    )
    (run_dir,) = run_dirs(logs)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok"
    # Per rank (600 - 100 val) // 2 = 250 training images: 5 batches of 50, 4 allowed.
    assert m["global_step"] == 4 and m["epochs"] == 1
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same run folder
    best = Path(m["best_checkpoint"])
    assert best.is_file() and Path(m["last_checkpoint"]).is_file()

    single_test = evaluate_single_process(best, fake_mnist, tmp_path / "eval_test", "test")
    single_val = evaluate_single_process(best, fake_mnist, tmp_path / "eval_val", "val")
    for key in ("test/nll", "test/elbo", "test/rate", "test/distortion", "test/bpd"):
        assert m[key] == pytest.approx(single_test[key], rel=1e-6, abs=1e-6), key
        # The standard error too: from sums, sums of squares and counts reduced over the ranks
        # (110 and 90 images: averaging per-rank errors would give another number).
        assert m[f"{key}_se"] > 0
        assert m[f"{key}_se"] == pytest.approx(single_test[f"{key}_se"], rel=1e-5), key
    # Active units: per-rank (count, mean, M2) combined exactly over the ranks.
    assert m["test/active_units/z"] == single_test["test/active_units/z"]
    # val/nll was computed inside fit, after the 4 steps whose weights the checkpoint holds.
    for key in ("val/nll", "val/elbo", "val/rate"):
        assert m[key] == pytest.approx(single_val[key], rel=1e-6, abs=1e-6), key
    assert m["test/nll"] < -m["test/elbo"]  # L_5 above the ELBO: real numbers, not zeros


@pytest.mark.slow
def test_ddp_inside_a_multirun_runs_each_job_with_its_own_processes(
    fake_mnist: Path, tmp_path: Path
) -> None:
    """Lightning's launcher re-runs the command line for rank 1; under -m that would start a sweep
    in every child. ``vaelab.distributed`` makes each child run its own job only."""
    logs = tmp_path / "logs"
    run_cli(
        f"vaelab-train -m {DDP} seed=0,1 logger=wandb",
        [*tiny(fake_mnist, logs), "callbacks=[model_checkpoint]"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
    )
    (sweep,) = sweep_dirs(logs)  # no second sweep folder started by a child
    metrics = job_metrics(sweep)
    assert sorted(metrics) == ["0", "1"]
    assert all(m["status"] == "ok" and m["global_step"] == 3 for m in metrics.values())
    assert metrics["0"]["test/nll"] != metrics["1"]["test/nll"]  # different seeds, different runs
    for job in ("0", "1"):
        assert (sweep / job / "train_ddp_process_1.log").is_file()
        (run,) = offline_runs(sweep / job)  # one W&B run per job, from rank 0 only
        data = read_offline_run(run)
        assert data["group"] == f"train-{sweep.name}" and data["name"] == f"{job}-seed={job}"
        assert data["summary"]["test/nll"] == pytest.approx(metrics[job]["test/nll"], rel=1e-6)
