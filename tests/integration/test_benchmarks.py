"""Smoke tests: the benchmark scripts run end to end on tiny data and report what they claim to.

They check that the scripts keep working as the package changes (and that their ratios are sane
numbers); they make no speed claim. The measured ratios are in docs/speed.md and
benchmarks/README.md, with their commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def run_benchmark(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_epoch_speed_reports_every_ratio(fake_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    r = run_benchmark(
        "epoch_speed.py",
        [
            *("--reps", "1", "--train-images", "300", "--data-dir", str(fake_mnist)),
            *("--batch-sizes", "20", "100", "--variant", "k1=module.steps_per_batch=1"),
            *("--plain-lightning", "--ll", "--ll-images", "20", "--ll-k", "10", "--ll-batch", "10"),
            *("--json", str(out)),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["train_images"] == 300 and d["threads"] == 1
    assert set(d["batch"]) == {"20", "100"}
    for bs, arms in d["batch"].items():
        assert set(arms) == {"hand", "bare", "vaelab", "k1", "plain_lightning"}
        assert arms["hand"]["ratio"] == 1.0  # the hand-written loop is the baseline
        # The default arm runs what vaelab-train's default picks (auto: K = 20, its timer takes
        # blocks; it timed K = 1 before), the k1 variant one step per Lightning batch.
        assert arms["vaelab"]["steps_per_batch"] == 20 and arms["k1"]["steps_per_batch"] == 1
        for arm, v in arms.items():
            assert v["optimizer_steps"] == 300 // int(bs), (arm, v)
            # One block holds the whole epoch (15 or 3 steps) of the K = 20 arm: no interval
            # between two batch starts to time a step by.
            ratios = ("ratio", "pair_ratio_median", "cpu_ratio")
            for key in (*ratios, "step_ratio") if arm != "vaelab" else ratios:
                # Sane numbers, not a speed claim: at 3 steps an epoch one interval slowed by
                # another process moves a ratio a lot (a run beside a benchmark saw 0.199).
                assert 0.05 < v[key] < 20.0, (bs, arm, key, v[key])
    assert d["complete"] is True
    full = d["batch"]["20"]["vaelab"]["full_iwae_schedule_h"]
    per_step = d["batch"]["20"]["vaelab"]["ms_per_step"]
    assert abs(full - per_step * 3280 * 2980 / 3.6e6) < 0.01
    assert d["ll_images"] == 20 and d["ll_k"] == 10 and d["ll_seconds"] >= 0  # rounded to 0.01 s
    # docs/speed.md's tables are rendered from such a file: one row per batch size and arm.
    table = run_benchmark("speed_table.py", [str(out)], tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.splitlines()
    assert len(lines) == 2 + 2 * 5
    assert "`k1` (module.steps_per_batch=1)" in table.stdout
    assert f"| {d['batch']['20']['vaelab']['ms_per_step']:.2f} |" in table.stdout


def test_flow_speed_runs(fake_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "flow.json"
    r = run_benchmark(
        "flow_speed.py",
        [
            *("--experiment", "none", "model=realnvp_mlp", "data=mnist", "--batch-size", "50"),
            # 3 alternating epochs: the median shrugs off one slow epoch on a shared machine (one
            # CI run saw a single 0.5 s epoch of the bare arm 5x slow, ratio 0.199).
            *("--reps", "3", "--train-images", "150", "--data-dir", str(fake_mnist)),
            *("--json", str(out)),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    ratios = {k: v for k, v in d.items() if "ratio" in k and isinstance(v, int | float)}
    assert ratios, d
    assert all(0.2 < v < 5.0 for v in ratios.values()), ratios


def test_interleaved_speed_pairs_every_arm_round_by_round(fake_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "interleaved.json"
    r = run_benchmark(
        "interleaved_speed.py",
        [
            *("--train-images", "600", "--batch-sizes", "20", "--slot", "6"),
            *("--data-dir", str(fake_mnist), "--variant", "k2=module.steps_per_batch=2"),
            *("--json", str(out)),
            # every fit (the variant's own K wins): K = 1 fits rounds of 6, auto's K = 20 does not
            "module.steps_per_batch=1",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    for name, k in (("vaelab", 1), ("k2", 2)):
        v = d["batch"]["20"][name]
        # 30 steps in rounds of 6: the last round's vaelab slot is cut by the epoch end.
        assert v["rounds"] == 4, v
        arms = v["arms"]
        assert set(arms) == {"vaelab", "hand", "bare"}
        assert arms["hand"]["ratio"] == 1.0
        for arm, a in arms.items():
            # Every arm timed over the same steps: (slot - K) / K groups of K a round.
            assert a["timed_groups"] == 4 * (6 - k) // k, (name, arm, a)
            for key in ("ratio", "pair_ratio_median", "median_ratio"):
                assert 0.05 < a[key] < 20.0, (name, arm, key, a[key])
    assert d["complete"] is True
    table = run_benchmark("speed_table.py", [str(out)], tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    assert len(table.stdout.splitlines()) == 2 + 2 * 3  # one row per fit and arm
    assert "| `k2` (module.steps_per_batch=2) | 4 |" in table.stdout


def test_a_benchmark_stopped_partway_keeps_the_arms_it_measured(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # A benchmark bounded by `timeout` keeps what finished before the stop in the JSON. Here the second fit stops the run (K = 4 does not divide the slot of 6).
    out = tmp_path / "partial.json"
    r = run_benchmark(
        "interleaved_speed.py",
        [
            *("--train-images", "300", "--batch-sizes", "20", "--slot", "6"),
            *("--data-dir", str(fake_mnist), "--variant", "k4=module.steps_per_batch=4"),
            *("--json", str(out)),
            "module.steps_per_batch=1",
        ],
        tmp_path,
    )
    assert r.returncode != 0 and "--slot 6 must be a multiple" in r.stderr, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["complete"] is False
    assert set(d["batch"]["20"]) == {"vaelab"}  # the fit that finished, and only it
    assert d["batch"]["20"]["vaelab"]["rounds"] >= 1
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_a_variant_that_fails_is_reported_and_the_others_still_run(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # On the GPU machine a compiled variant may fail (inductor needs a compiler there): the
    # variants after it must still be measured. Here module.compile=gpu, refused, fails.
    for script, extra, fits in (
        # rounds of 6 steps need a K that divides 6 in every fit (auto would pick 20)
        (
            "interleaved_speed.py",
            ["--train-images", "300", "--slot", "6"],
            ["module.steps_per_batch=1"],
        ),
        ("epoch_speed.py", ["--train-images", "100", "--reps", "2", "--no-bare"], []),
    ):
        out = tmp_path / f"{script}.json"
        r = run_benchmark(
            script,
            [
                *extra,
                *("--batch-sizes", "20", "--data-dir", str(fake_mnist), "--json", str(out)),
                *("--variant", "bad=module.compile=gpu"),
                *("--variant", "k2=module.steps_per_batch=2"),
                *fits,
            ],
            tmp_path,
        )
        assert r.returncode != 0, script
        assert "variants that failed: batch 20, bad" in r.stderr, r.stderr[-3000:]
        d = json.loads(out.read_text())
        assert d["complete"] is True
        assert (
            list(d["errors"]) == ["batch 20, bad"]
            and "compile must be" in d["errors"]["batch 20, bad"]
        )
        assert "k2" in d["batch"]["20"] and "bad" not in d["batch"]["20"], (script, d["batch"])
