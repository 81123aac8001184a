"""Sweeps as docs/sweeps.md writes them, with tiny settings appended.

Default suite: the Optuna search (2 trials) and the parallel local jobs (joblib, 4 jobs), each
gathered with ``vaelab-collect``; a misspelt launcher or sweeper. ``-m slow``: the
15-job grid and the longer variants.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException

from tests.helpers.wandb_offline import offline_runs, read_offline_run
from tests.helpers.workflow import cli_env, job_metrics, run_cli, sweep_dirs, tiny
from vaelab.config import config_dir

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "sweeps.md"
COLLECT = "vaelab-collect"

GRID = "vaelab-train -m model=beta_vae model.objective.beta=0.5,1,2,4,8 seed=0,1,2"
PARALLEL = "vaelab-train -m hydra/launcher=parallel seed=0,1,2,3"
PARALLEL_GRID = (
    "vaelab-train -m hydra/launcher=parallel hydra.launcher.n_jobs=5 model=beta_vae "
    "model.objective.beta=0.5,1,2,4,8"
)
OPTUNA = "vaelab-train hparams_search=vae_optuna"
OPTUNA_PARALLEL = (
    "vaelab-train hparams_search=vae_optuna hydra.sweeper.n_trials=40 hydra/launcher=parallel "
    "hydra.sweeper.n_jobs=2"
)
SLURM = (
    "vaelab-train -m hydra/launcher=slurm hydra.launcher.partition=gpu model.objective.beta=1,4 seed=0,1",
    "vaelab-train -m hydra/launcher=slurm trainer=ddp trainer.devices=4 trainer.num_nodes=2 "
    "hydra.launcher.timeout_min=1440",
)
# Small and fast: no pictures, no checkpoints, no progress bar.
FAST = ["callbacks=none"]


def doc_commands() -> list[str]:
    """``vaelab-train`` lines of the bash blocks of the sweeps page (``docs/sweeps.md``)."""
    body = DOC.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("vaelab-train"):
                lines.append(line)
    return lines


def test_every_sweep_command_of_the_docs_is_run_by_a_test() -> None:
    tested = {GRID, PARALLEL, PARALLEL_GRID, OPTUNA, OPTUNA_PARALLEL, *SLURM}
    assert set(doc_commands()) == tested


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# -- Optuna ---------------------------------------------------------------------------------------
def run_optuna(command: str, fake_mnist: Path, tmp: Path, trials: int = 2) -> Path:
    logs = tmp / "logs"
    proc = run_cli(
        command,
        [
            *tiny(fake_mnist, logs),
            *FAST,
            "test=false",
            "logger=wandb",  # offline: no key
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.sampler.n_startup_trials={trials}",
        ],
        env=cli_env(tmp),
        cwd=tmp,
    )
    # The sweeper imports alembic, whose plugin registry logged seven "setup plugin" lines.
    assert "alembic" not in proc.stdout + proc.stderr, proc.stdout[:2000]
    (sweep,) = sweep_dirs(logs)
    return sweep


def check_optuna_sweep(sweep: Path, trials: int) -> None:
    metrics = job_metrics(sweep)
    assert sorted(metrics, key=int) == [str(i) for i in range(trials)]
    params = {}
    for job, m in metrics.items():
        assert m["status"] == "ok"
        overrides = dict(
            o.split("=", 1)
            for o in yaml.safe_load((sweep / job / ".hydra/overrides.yaml").read_text())
        )
        lr, beta = float(overrides["optimizer.lr"]), float(overrides["model.objective.beta"])
        assert 1e-4 <= lr <= 3e-3 and 0.25 <= beta <= 4.0
        cfg = yaml.safe_load((sweep / job / ".hydra/config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == pytest.approx(lr) and cfg["model"]["objective"][
            "beta"
        ] == pytest.approx(beta)
        params[job] = (lr, beta)
    assert len(set(params.values())) == trials  # the sampler proposed different points
    runs = {job: read_offline_run(offline_runs(sweep / job)[0]) for job in metrics}
    assert {r["group"] for r in runs.values()} == {f"train-{sweep.name}"}  # one group per search
    for job, run in runs.items():
        lr, beta = params[job]
        assert run["name"].startswith(f"{job}-optimizer.lr=")  # named by the sampled values
        assert run["config"]["optimizer"]["lr"] == pytest.approx(lr)
        assert run["summary"]["val/nll"] == pytest.approx(metrics[job]["val/nll"], rel=1e-6)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_job = min(metrics, key=lambda j: metrics[j]["val/nll"])
    assert result["best_value"] == pytest.approx(metrics[best_job]["val/nll"], rel=1e-6)
    assert result["best_params"]["optimizer.lr"] == pytest.approx(params[best_job][0])
    assert result["best_params"]["model.objective.beta"] == pytest.approx(params[best_job][1])


def test_optuna_search_completes_its_trials_and_is_collected(
    fake_mnist: Path, tmp_path: Path
) -> None:
    assert OPTUNA in doc_commands()
    sweep = run_optuna(OPTUNA, fake_mnist, tmp_path)
    check_optuna_sweep(sweep, trials=2)

    proc = run_cli(f"{COLLECT} {sweep} --sort val/nll", env=cli_env(tmp_path))
    assert "optimizer.lr" in proc.stdout and "model.objective.beta" in proc.stdout
    rows = read_csv(sweep / "sweep.csv")
    metrics = job_metrics(sweep)
    assert len(rows) == 2 and [float(r["val/nll"]) for r in rows] == sorted(
        m["val/nll"] for m in metrics.values()
    )
    for r in rows:
        assert float(r["val/nll"]) == pytest.approx(metrics[r["job"]]["val/nll"])
        assert r["status"] == "ok"


# -- joblib ---------------------------------------------------------------------------------------
def test_parallel_local_jobs_with_joblib(fake_mnist: Path, tmp_path: Path) -> None:
    assert PARALLEL in doc_commands()
    logs = tmp_path / "logs"
    proc = run_cli(PARALLEL, [*tiny(fake_mnist, logs), *FAST], env=cli_env(tmp_path), cwd=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    (sweep,) = sweep_dirs(logs)
    metrics = job_metrics(sweep)
    assert sorted(metrics) == ["0", "1", "2", "3"]
    assert all(m["status"] == "ok" and m["global_step"] == 3 for m in metrics.values())
    assert len({m["test/nll"] for m in metrics.values()}) == 4  # four seeds, four models
    hydra_cfg = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["launcher"]["_target_"].endswith("JoblibLauncher")

    run_cli(f"{COLLECT} {sweep} --mean-over seed", env=cli_env(tmp_path))
    (row,) = read_csv(sweep / "sweep.csv")
    assert int(row["n"]) == 4
    nlls = [m["test/nll"] for m in metrics.values()]
    assert float(row["test/nll"]) == pytest.approx(statistics.fmean(nlls), rel=1e-9)
    assert float(row["test/nll std"]) == pytest.approx(statistics.stdev(nlls), rel=1e-9)


# -- bad names ------------------------------------------------------------------------------------
def test_unknown_launcher_is_a_clear_error(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    env.pop("HYDRA_FULL_ERROR")  # what a user sees
    proc = run_cli(
        "vaelab-train -m hydra/launcher=slurn seed=0,1",
        [f"paths.log_dir={tmp_path / 'logs'}"],
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert err.startswith("In 'hydra/config': Could not find 'hydra/launcher/slurn'"), err[:500]
    options = err.split("Available options in 'hydra/launcher':", 1)[1].split("Config search", 1)[0]
    assert {"basic", "joblib", "parallel", "slurm", "submitit_slurm"} <= set(options.split())
    assert "Traceback" not in err
    assert not (tmp_path / "logs").exists()  # stopped before any job started


@pytest.mark.parametrize(
    ("override", "group"),
    [
        ("hydra/sweeper=optunaa", "hydra/sweeper"),
        ("hydra/launcher=ray", "hydra/launcher"),
        ("hparams_search=vae_optuner", "hparams_search"),
    ],
)
def test_unknown_sweeper_or_search_is_a_clear_error(override: str, group: str) -> None:
    GlobalHydra.instance().clear()
    with (
        initialize_config_dir(config_dir=config_dir(), version_base="1.3"),
        pytest.raises(MissingConfigException) as info,
    ):
        compose("train", overrides=[override], return_hydra_config=True)
    message = str(info.value)
    name = override.split("=", 1)[1]
    assert f"Could not find '{group}/{name}'" in message
    assert f"Available options in '{group}'" in message


def test_launcher_configs_compose_for_a_cluster() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
        parallel = compose("train", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu" and launcher.timeout_min == 240
    assert parallel.hydra.launcher._target_.endswith("JoblibLauncher")
    assert parallel.hydra.launcher.n_jobs == 2


# -- the long ones --------------------------------------------------------------------------------
@pytest.mark.slow
def test_grid_beta_by_seed_as_written(fake_mnist: Path, tmp_path: Path) -> None:
    assert GRID in doc_commands()
    logs = tmp_path / "logs"
    run_cli(GRID, [*tiny(fake_mnist, logs, batches=2), *FAST], env=cli_env(tmp_path), cwd=tmp_path)
    (sweep,) = sweep_dirs(logs)
    metrics = job_metrics(sweep)
    assert len(metrics) == 15 and all(m["status"] == "ok" for m in metrics.values())
    run_cli(f"{COLLECT} {sweep} --mean-over seed --sort test/nll", env=cli_env(tmp_path))
    rows = read_csv(sweep / "sweep.csv")
    assert sorted(float(r["model.objective.beta"]) for r in rows) == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(int(r["n"]) == 3 for r in rows)


@pytest.mark.slow
def test_parallel_grid_and_parallel_optuna_as_written(fake_mnist: Path, tmp_path: Path) -> None:
    logs = tmp_path / "grid_logs"
    run_cli(
        PARALLEL_GRID,
        [*tiny(fake_mnist, logs, batches=2), *FAST, "hydra.launcher.n_jobs=2"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
    )
    (sweep,) = sweep_dirs(logs)
    assert len(job_metrics(sweep)) == 5
    optuna_tmp = tmp_path / "optuna"
    optuna_tmp.mkdir()
    check_optuna_sweep(run_optuna(OPTUNA_PARALLEL, fake_mnist, optuna_tmp, trials=4), trials=4)


def test_metrics_json_is_what_collect_reads(tmp_path: Path) -> None:
    """vaelab-collect on a hand-made sweep: swept keys only, failed jobs kept with their status."""
    sweep = tmp_path / "sweep"
    jobs = {
        "0": (["seed=0", "data.val_size=100"], {"test/nll": 90.0, "status": "ok"}),
        "1": (["seed=1", "data.val_size=100"], {"test/nll": 92.0, "status": "ok"}),
        "2": (["seed=2", "data.val_size=100"], None),  # killed before writing metrics.json
    }
    for job, (overrides, metrics) in jobs.items():
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if metrics is not None:
            (sweep / job / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "table.csv"
    proc = run_cli(f"{COLLECT} {sweep} --csv {out}", env=cli_env(tmp_path))
    rows = read_csv(out)
    assert [r["seed"] for r in rows] == ["0", "1", "2"]
    assert "data.val_size" not in rows[0]  # the same in every job: not a column
    assert rows[2]["status"].startswith("no metrics.json") and rows[2]["test/nll"] == ""
    assert "3 rows" in proc.stdout
    missing = run_cli(f"{COLLECT} {tmp_path / 'nope'}", env=cli_env(tmp_path), check=False)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
