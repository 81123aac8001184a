"""``vaelab-reproduce`` end to end on a fake MNIST: every table at budget=smoke, resume after a kill,
refusal of a changed row, failed rows, and the honesty of the "reproduced?" cell."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.workflow import cli_env
from vaelab import reproduce as rp

BIN = Path(sys.executable).parent
CPU = ("trainer.accelerator=cpu", "data.download=false")


def run_reproduce(
    args: list[str], tmp_path: Path, data: Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "vaelab-reproduce"), *args, f"paths.data_dir={data}", *CPU],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def assert_cells_equal_metrics(out: Path, table: rp.Table) -> list[dict[str, str]]:
    """Every report cell that carries a number is the run's metrics.json value, as written there."""
    lines = read_csv(out / "report.csv")
    md = (out / "report.md").read_text()
    assert len(lines) == sum(len(r.metrics) for r in table.rows)
    for line in lines:
        if line["status"] == "no data":
            continue
        m = json.loads((out / "runs" / line["row"] / "metrics.json").read_text())
        assert line["status"] == m["status"] == "ok", line
        assert float(line["ours"]) == m[line["metric"]]
        assert int(line["epochs"]) == m["epochs"]
        assert int(line["steps"]) == m["global_step"]
        assert float(line["seconds"]) == m["seconds"]
        assert line["device"] == m["device"] == "cpu"
        for extra in table.also:
            if extra in m:
                assert float(line[extra]) == m[extra]
        se = m.get(f"{line['metric']}_se")
        assert (line["se"] == "") == (se is None)
        # the Markdown shows the same value, rounded for reading
        d = rp.digits_for(line["metric"])
        cell = f"{m[line['metric']]:.{d}f} ± " + (
            f"{se:.{d}f}" if se is not None else "(s.e. missing)"
        )
        assert cell in md, cell
        # smoke is not the paper's budget: never "reproduced"
        assert line["reproduced"].startswith("budget:"), line
    return lines


@pytest.mark.parametrize(
    "name", ["iwae_table1", "aevb_fig2", "beta_rd", "realnvp", "vdm_timesteps"]
)
def test_every_table_at_smoke_budget(name: str, tmp_path: Path, fake_mnist: Path) -> None:
    """Smoke test of each table end to end, plus report cells == metrics.json (can fail)."""
    table = rp.load_table(name)
    out = tmp_path / name
    proc = run_reproduce([f"table={name}", "budget=smoke", f"out_dir={out}"], tmp_path, fake_mnist)
    assert "| row | metric | published | ours ± s.e." in proc.stdout  # the report is printed
    if name == "realnvp":  # no CIFAR-10 in the fake data root: reported, not run
        cifar = next(ln for ln in read_csv(out / "report.csv") if ln["row"] == "cifar10")
        assert cifar["status"] == "no data" and cifar["ours"] == "" and cifar["reproduced"] == "—"
        assert not (out / "runs" / "cifar10" / "metrics.json").exists()
    assert_cells_equal_metrics(out, table)
    if table.kind in ("curves", "rate_distortion", "sweep"):
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ledger = json.loads((out / "reproduce.json").read_text())
    assert [s["exit_status"] for s in ledger["sittings"]] == [0]
    record = json.loads((out / "metrics.json").read_text())  # the command's own record
    assert record["status"] == "ok" and record["table"] == name, record
    if name == "beta_rd":  # README results come from the committed reports, not typed
        reports = tmp_path / "reports" / name / "smoke"
        reports.mkdir(parents=True)
        for f in ("report.md", "report.csv", "report.json", f"{name}.png"):
            (reports / f).write_bytes((out / f).read_bytes())
        readme = tmp_path / "README.md"
        readme.write_text(f"# x\n\n{rp.README_START}\nold typed results\n{rp.README_END}\ntail\n")
        rp.write_readme(readme, tmp_path / "reports")
        text = readme.read_text()
        assert "old typed results" not in text and text.endswith("tail\n")
        assert "vaelab-reproduce table=beta_rd budget=smoke" in text
        for line in read_csv(out / "report.csv"):
            assert (
                f"| {line['label']} | `{line['metric']}` | — | {float(line['ours']):.2f} " in text
            )
        assert (
            f"![beta_rd]({(tmp_path / 'reports' / name / 'smoke' / 'beta_rd.png').as_posix()})"
            in text
        )


# -- a small table written by the test --------------------------------------------------------------
SMOKE = [
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "+trainer.num_sanity_val_steps=0",
    "+trainer.enable_progress_bar=false",
    "data.batch_size=20",
    "data.eval_batch_size=50",
    "data.val_size=50",
    "eval.num_samples=2",
    "eval.val_num_samples=1",
    "callbacks.images.every_n_epochs=1000",
]


def write_table(path: Path, rows: list[dict], paper_epochs: int | None = None, **budget) -> Path:
    import yaml

    doc = {
        "name": path.stem,
        "title": "test table",
        "source": "a test",
        "metric": "test/nll",
        "tolerance": 1000.0,
        "budgets": {
            "smoke": {"paper": False, "overrides": SMOKE},
            "paperlike": {"paper": True, "overrides": SMOKE},
        },
        "rows": rows,
    }
    if paper_epochs:
        doc["paper_epochs"] = paper_epochs
    path.write_text(yaml.safe_dump(doc))
    return path


def vae_row(rid: str, epochs: int, *extra: str, published: float | None = 100.0) -> dict:
    return {
        "id": rid,
        "experiment": "beta_rd",
        "overrides": [f"trainer.max_epochs={epochs}", *extra],
        "published": published,
    }


def test_kill_midway_then_rerun_completes_without_rerunning_finished_rows(
    tmp_path: Path, fake_mnist: Path
) -> None:
    table = write_table(
        tmp_path / "killme.yaml", [vae_row("first", 1), vae_row("second", 12), vae_row("third", 1)]
    )
    out = tmp_path / "out"
    args = [f"table={table}", "budget=smoke", f"out_dir={out}"]
    proc = subprocess.Popen(
        [str(BIN / "vaelab-reproduce"), *args, f"paths.data_dir={fake_mnist}", *CPU],
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    second_ckpt = out / "runs" / "second" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    try:
        while not ((out / "runs" / "first" / "metrics.json").is_file() and second_ckpt.is_file()):
            assert proc.poll() is None, "the table finished before it could be killed"
            assert time.time() < deadline, "timed out waiting for the second row to checkpoint"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # preemption: no clean shutdown, no metrics.json
        proc.wait()
    first = out / "runs" / "first" / "metrics.json"
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert json.loads(first_bytes)["status"] == "ok"
    assert not (out / "runs" / "second" / "metrics.json").exists()
    assert not (out / "runs" / "third" / "metrics.json").exists()

    rerun = run_reproduce(args, tmp_path, fake_mnist)
    assert "row first: skipped: finished" in rerun.stdout
    assert f"row second: resume from {second_ckpt.resolve()}" in rerun.stdout
    assert "row third: start" in rerun.stdout
    assert "Restoring states from the checkpoint" in rerun.stdout + rerun.stderr
    # the finished row was not run again
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    second = json.loads((out / "runs" / "second" / "metrics.json").read_text())
    assert second["status"] == "ok" and second["epochs"] == 12 and second["global_step"] == 24
    sittings = json.loads((out / "runs" / "second" / "reproduce_row.json").read_text())["sittings"]
    assert [s["action"].split(" ")[0] for s in sittings] == ["start", "resume"]
    assert (
        len(json.loads((out / "runs" / "first" / "reproduce_row.json").read_text())["sittings"])
        == 1
    )
    rows = {ln["row"]: ln for ln in read_csv(out / "report.csv")}
    assert {r["status"] for r in rows.values()} == {"ok"}
    # a third sitting has nothing to run
    again = run_reproduce([*args, "dry_run=true"], tmp_path, fake_mnist)
    assert again.stdout.count("skipped: finished") == 3
    assert "nothing to run" in again.stdout and "would launch" not in again.stdout


def test_dry_run_prints_each_rows_job_and_the_command(tmp_path: Path, fake_mnist: Path) -> None:
    """dry_run=true says what would run (each row's overrides, the multirun), and runs nothing."""
    pytest.importorskip("constriction")
    out = tmp_path / "out"
    proc = run_reproduce(
        ["table=bbans", "budget=smoke", f"out_dir={out}", "dry_run=true"], tmp_path, fake_mnist
    )
    lines = proc.stdout.splitlines()
    train = next(ln for ln in lines if "row train would run vaelab.train" in ln)
    assert "experiment=bbans_vae" in train and "trainer.max_epochs=2" in train
    comp = next(ln for ln in lines if "row compress would run vaelab.compression.cli" in ln)
    last = (out / "runs" / "train" / "checkpoints" / "last.ckpt").resolve()
    assert f"ckpt_path={last}" in comp and "num_images=40" in comp
    launches = [ln for ln in lines if "would launch" in ln]
    assert len(launches) == 2
    assert "-m vaelab.train --multirun" in launches[0] and "+reproduce_row=train" in launches[0]
    assert "after the above" in launches[1] and "-m vaelab.compression.cli" in launches[1]
    assert not (out / "runs").exists() and not (out / "reproduce.json").exists()


GOOD = vae_row("good", 1)
# SGD with lr 1e30: the loss or the weights overflow within the first steps
BAD = vae_row("bad", 1, "optimizer._target_=torch.optim.SGD", "optimizer.lr=1e30")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, fake_mnist: Path):
    """One sitting of a two-row table at a budget marked as the paper's (paper_epochs=1)."""
    tmp = tmp_path_factory.mktemp("small_table")
    path = write_table(tmp / "small.yaml", [GOOD, BAD], paper_epochs=1)
    out = tmp / "out"
    args = [f"table={path}", "budget=paperlike", f"out_dir={out}"]
    proc = run_reproduce(args, tmp, fake_mnist, check=False)
    return tmp, path, out, args, proc


def test_failed_row_stays_in_the_report_with_its_status(small_run, fake_mnist: Path) -> None:
    tmp, _, out, args, proc = small_run
    assert proc.returncode != 0  # the multirun reports the failed job
    rows = {ln["row"]: ln for ln in read_csv(out / "report.csv")}
    assert rows["good"]["status"] == "ok"
    bad = json.loads((out / "runs" / "bad" / "metrics.json").read_text())
    assert bad["status"].startswith("failed")
    assert rows["bad"]["status"] == bad["status"]
    assert rows["bad"]["ours"] == "" and rows["bad"]["reproduced"] == "—"
    assert bad["status"].split(":")[0] in (out / "report.md").read_text()
    again = run_reproduce([*args, "dry_run=true"], tmp, fake_mnist)
    assert "row bad: skipped: failed" in again.stdout
    assert "row good: skipped: finished" in again.stdout
    # report-only rebuilds the same report from the runs, running nothing
    before = (out / "report.csv").read_text()
    (out / "report.csv").unlink()
    run_reproduce([*args, "report_only=true"], tmp, fake_mnist)
    assert (out / "report.csv").read_text() == before
    assert len(json.loads((out / "reproduce.json").read_text())["sittings"]) == 1


def test_reproduced_only_at_the_papers_budget(small_run, fake_mnist: Path) -> None:
    """paper: true and the paper's epochs reached -> yes/no by tolerance; anything less -> budget."""
    _, path, out, _, _ = small_run
    table = rp.load_table(str(path))
    budget = table.budget("paperlike")
    st = rp.row_state(out / "runs", table.rows[0], str(fake_mnist))
    ours = st.metrics["test/nll"]
    line = next(ln for ln in read_csv(out / "report.csv") if ln["row"] == "good")
    assert line["reproduced"] == "yes"  # |ours - 100| <= 1000
    assert rp.reproduced_cell(table, budget, st, "test/nll", ours) == "yes"
    st.row = rp.Row(**{**table.rows[0].__dict__, "tolerance": 0.0})
    assert rp.reproduced_cell(table, budget, st, "test/nll", ours) == "no"
    # the same run judged against a longer paper schedule, or at a budget that is not the paper's
    longer = rp.Table(**{**table.__dict__, "paper_epochs": 3})
    assert rp.reproduced_cell(longer, budget, st, "test/nll", ours) == "budget: 1 of 3 epochs"
    st.row = table.rows[0]
    assert rp.reproduced_cell(table, table.budget("smoke"), st, "test/nll", ours) == (
        "budget: 1 of 1 epochs"
    )


def test_changed_row_is_refused_before_anything_runs(small_run, fake_mnist: Path) -> None:
    tmp, _, out, args, _ = small_run
    good = (out / "runs" / "good" / "metrics.json").read_bytes()
    sittings = len(json.loads((out / "reproduce.json").read_text())["sittings"])
    changed = write_table(
        tmp / "changed.yaml", [vae_row("good", 1, "model.objective.beta=3.0"), BAD], paper_epochs=1
    )
    proc = run_reproduce(
        [f"table={changed}", "budget=paperlike", f"out_dir={out}"], tmp, fake_mnist, check=False
    )
    assert proc.returncode == 2
    refused = proc.stderr.split("refusing")[1].split("Restore")[0]
    assert "row good" in refused and "model.objective.beta" in refused
    assert "row bad" not in refused
    assert (out / "runs" / "good" / "metrics.json").read_bytes() == good
    assert len(json.loads((out / "reproduce.json").read_text())["sittings"]) == sittings
    # the report against the changed table flags the row instead of judging it
    rep = tmp / "changed_report"
    run_reproduce(
        [
            f"table={changed}",
            "budget=paperlike",
            f"out_dir={out}",
            "report_only=true",
            f"report_dir={rep}",
        ],
        tmp,
        fake_mnist,
    )
    line = next(ln for ln in read_csv(rep / "report.csv") if ln["row"] == "good")
    assert line["status"] == "ok (config differs)"
    assert line["reproduced"] == "no: config differs from the table"
    # a pass-through override that changes what the rows compute is refused too
    proc = run_reproduce([*args, "optimizer.lr=0.5"], tmp, fake_mnist, check=False)
    assert proc.returncode == 2 and "optimizer.lr" in proc.stderr
    # where the run happens is not what it computes: a different data folder is accepted
    ok = run_reproduce([*args, "dry_run=true", "trainer.devices=1"], tmp, fake_mnist)
    assert "skipped: finished" in ok.stdout


def test_unknown_table_or_budget_lists_the_choices() -> None:
    with pytest.raises(
        rp.ReproduceError, match=r"unknown table 'nope'.*aevb_fig2.*beta_rd.*iwae_table1.*realnvp"
    ):
        rp.reproduce(["table=nope"])
    with pytest.raises(rp.ReproduceError, match=r"unknown budget 'gpu'.*full, cpu, smoke"):
        rp.reproduce(["table=iwae_table1", "budget=gpu"])
    with pytest.raises(rp.ReproduceError, match=r"no row 'vae_1l_k2'.*vae_1l_k1"):
        rp.reproduce(["table=iwae_table1", "rows=[vae_1l_k2]"])


def test_missing_experiment_fails_before_anything_runs_naming_the_row(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "typo.yaml",
        [vae_row("fine", 1), {"id": "typo_row", "experiment": "iwae_vae_3layer", "published": 1.0}],
    )
    out = tmp_path / "out"
    with pytest.raises(rp.ReproduceError, match=r"row 'typo_row': experiment 'iwae_vae_3layer'"):
        rp.reproduce([f"table={path}", "budget=smoke", f"out_dir={out}"])
    assert not out.exists()  # nothing was written or run


def test_row_configs_compose_and_cpu_budgets_state_the_truncation(tmp_path: Path) -> None:
    """Every row of every table composes at every budget; non-paper budgets say how they truncate."""
    composed = {}
    for name in rp.table_names():
        table = rp.load_table(name)
        for budget in table.budgets.values():
            if not budget.paper:
                assert budget.about and budget.eval, (name, budget.name)
        plan = rp.plan_table(table, table.budget("cpu"), table.rows, tmp_path / name, (), None)
        assert [st.cfg.reproduce.row for st in plan.states] == [r.id for r in table.rows]
        assert set(plan.actions) == {r.id for r in table.rows}
        composed[name] = {st.row.id: st.cfg for st in plan.states}
    # the VAE k=5 row trains the k-sample ELBO, the IWAE k=5 row L_5
    vae5, iwae5 = composed["iwae_table1"]["vae_1l_k5"], composed["iwae_table1"]["iwae_1l_k5"]
    assert (vae5.model.objective.elbo_samples, vae5.model.objective.iwae_samples) == (5, 1)
    assert (iwae5.model.objective.elbo_samples, iwae5.model.objective.iwae_samples) == (1, 5)
    assert vae5.schedule.stages == 2 and vae5.eval.num_samples == 1000
    aevb = composed["aevb_fig2"]["nz200"]
    assert aevb.model.latent_dim == 200 and aevb.optimizer._target_ == "torch.optim.Adagrad"
    assert aevb.model.encoder.net.init == "normal" and aevb.optimizer.weight_decay > 0


# -- BB-ANS: a training row, then a compression row with its final checkpoint -------------------------
@pytest.fixture(scope="module")
def bbans_smoke(tmp_path_factory: pytest.TempPathFactory, fake_mnist: Path):
    """One sitting of ``table=bbans budget=smoke``: the VAE trains, then its test images are coded."""
    pytest.importorskip("constriction")
    tmp = tmp_path_factory.mktemp("bbans")
    out = tmp / "out"
    args = ["table=bbans", "budget=smoke", f"out_dir={out}"]
    proc = run_reproduce(args, tmp, fake_mnist)
    return tmp, out, args, proc


def test_bbans_table_trains_then_compresses_the_final_checkpoint(bbans_smoke) -> None:
    _, out, _, proc = bbans_smoke
    table = rp.load_table("bbans")
    train_cmd = proc.stdout.index("-m vaelab.train --multirun")
    compress_cmd = proc.stdout.index("-m vaelab.compression.cli --multirun")
    assert train_cmd < compress_cmd  # the training multirun runs first
    # training-only pass-through arguments do not reach (and break) the compression job
    assert "trainer.accelerator=cpu" not in proc.stdout[compress_cmd:].splitlines()[0]
    train = json.loads((out / "runs" / "train" / "metrics.json").read_text())
    comp = json.loads((out / "runs" / "compress" / "metrics.json").read_text())
    last = (out / "runs" / "train" / "checkpoints" / "last.ckpt").resolve()
    assert comp["checkpoint"] == str(last) == train["last_checkpoint"]
    # the final checkpoint, not an earlier one: the same epochs and steps as the training run
    assert (
        (comp["epochs"], comp["global_step"]) == (train["epochs"], train["global_step"]) == (2, 4)
    )
    assert comp["compress/num_images"] == 40 and comp["coder"]["order"] == "bbans"
    lines = assert_cells_equal_metrics(out, table)  # every cell == its row's metrics.json
    by_row = {ln["row"]: ln for ln in lines}
    assert by_row["compress"]["metric"] == "compress/bpd"
    assert float(by_row["compress"]["published"]) == 0.19
    # the -ELBO in bits/dim and the gap sit beside the rate, in the CSV and the Markdown
    md = (out / "report.md").read_text()
    for key in ("compress/neg_elbo_bpd", "compress/gap_percent"):
        assert float(by_row["compress"][key]) == comp[key]
        assert f"| {comp[key]:.{rp.digits_for(key)}f} |" in md
        assert by_row["train"][key] == ""
    gap = comp["compress/gap_percent"]
    verdict = "holds" if abs(gap) <= 1.0 else "does not hold"
    assert f"within about 1 % of the -ELBO (the paper's claim): **{verdict}**" in md
    assert f"compress/gap_percent {gap:.2f};" in md


def test_bbans_rerun_skips_both_rows_and_reruns_an_interrupted_compression(
    bbans_smoke, fake_mnist: Path
) -> None:
    tmp, out, args, _ = bbans_smoke
    train, comp = (
        out / "runs" / "train" / "metrics.json",
        out / "runs" / "compress" / "metrics.json",
    )
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (train, comp)}
    again = run_reproduce(args, tmp, fake_mnist)
    assert "row train: skipped: finished" in again.stdout
    assert "row compress: skipped: finished" in again.stdout
    assert "--multirun" not in again.stdout  # nothing launched
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (train, comp)} == before
    # a compression killed by Ctrl-C (or SIGTERM) runs again, from the same checkpoint; the
    # finished training row does not
    m = json.loads(comp.read_text())
    comp.write_text(json.dumps({**m, "status": "failed: KeyboardInterrupt: "}))
    third = run_reproduce(args, tmp, fake_mnist)
    last = (out / "runs" / "train" / "checkpoints" / "last.ckpt").resolve()
    assert f"row compress: start with {last}" in third.stdout
    assert "-m vaelab.train" not in third.stdout
    assert train.read_bytes() == before[train][0]
    redone = json.loads(comp.read_text())
    assert redone["status"] == "ok" and redone["compress/bpd"] == m["compress/bpd"]  # seeded
    sittings = json.loads((comp.parent / "reproduce_row.json").read_text())["sittings"]
    assert [s["action"].split(" ")[0] for s in sittings] == ["start", "start"]


def test_compress_row_without_a_finished_training_row_is_never_launched(
    tmp_path: Path, fake_mnist: Path
) -> None:
    """Failed, missing or half-trained training row: the compression row says so and never runs."""
    pytest.importorskip("constriction")
    out = tmp_path / "out"
    args = ["table=bbans", "budget=smoke", f"out_dir={out}"]
    # a training run that diverges (Adam with lr 1e30: non-finite loss) fails
    proc = run_reproduce([*args, "optimizer.lr=1e30"], tmp_path, fake_mnist, check=False)
    assert proc.returncode != 0
    train = json.loads((out / "runs" / "train" / "metrics.json").read_text())
    assert train["status"].startswith("failed")
    why = f"its training row train has not finished ok ({train['status']}"
    assert f"row compress: not launched: {why}" in proc.stdout
    assert "-m vaelab.compression.cli" not in proc.stdout
    assert not (out / "runs" / "compress").exists()
    comp = next(ln for ln in read_csv(out / "report.csv") if ln["row"] == "compress")
    assert comp["status"].startswith(f"not run: {why}")
    assert comp["ours"] == "" and comp["reproduced"] == "—"
    assert (
        "not run: its training row train has not finished ok (failed"
        in (out / "report.md").read_text()
    )
    again = run_reproduce([*args, "optimizer.lr=1e30", "dry_run=true"], tmp_path, fake_mnist)
    assert "row train: skipped: failed" in again.stdout
    assert f"row compress: skipped: not run: {why}" in again.stdout

    # no training run at all, and one killed mid-way (a checkpoint, no metrics.json)
    for name, make in (("missing", None), ("unfinished", "checkpoint only")):
        out = tmp_path / name
        if make:
            (out / "runs" / "train" / "checkpoints").mkdir(parents=True)
            (out / "runs" / "train" / "checkpoints" / "last.ckpt").write_bytes(b"half-trained")
        proc = run_reproduce(
            ["table=bbans", "budget=smoke", f"out_dir={out}", "rows=[compress]"],
            tmp_path,
            fake_mnist,
        )
        status = "unfinished" if make else "not run"
        why = f"its training row train has not finished ok ({status})"
        assert f"row compress: skipped: not run: {why}" in proc.stdout
        assert "--multirun" not in proc.stdout
        assert not (out / "runs" / "compress").exists()
        (line,) = read_csv(out / "report.csv")
        assert line["status"] == f"not run: {why}" and line["ours"] == ""


def test_checkpoint_of_row_listed_first_still_runs_after_its_training_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launch order comes from checkpoint_of, not from the rows' order (no real jobs run)."""
    import yaml

    doc = yaml.safe_load(rp.load_table("bbans").path.read_text())
    doc["rows"] = doc["rows"][::-1]  # compress, then train
    path = tmp_path / "reversed.yaml"
    path.write_text(yaml.safe_dump(doc))
    table = rp.load_table(str(path))
    out = tmp_path / "out"
    plan = rp.plan_table(table, table.budget("smoke"), table.rows, out, (), None)
    assert [st.row.id for st in plan.to_run] == ["compress", "train"]
    launched: list[str] = []

    def fake_call(cmd: list[str]) -> int:  # the training job finishes ok and leaves last.ckpt
        launched.append(cmd[2])
        if cmd[2] == "vaelab.train":
            (out / "runs" / "train" / "checkpoints").mkdir(parents=True)
            (out / "runs" / "train" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
            (out / "runs" / "train" / "metrics.json").write_text('{"status": "ok"}')
        return 0

    monkeypatch.setattr(rp.subprocess, "call", fake_call)
    assert rp.run_plan(plan, ()) == 0
    assert launched == ["vaelab.train", "vaelab.compression.cli"]
    row_cfg = (out / "conf" / rp.ROW_GROUP / "compress.yaml").read_text()
    assert (
        f"ckpt_path: {(out / 'runs' / 'train' / 'checkpoints' / 'last.ckpt').resolve()}" in row_cfg
    )


# -- seeds as a table dimension, and the full-data protocol -------------------------------------------
def test_seeds_cells_are_means_over_seeds_and_a_killed_table_reruns_only_unfinished_seeds(
    tmp_path: Path, fake_mnist: Path
) -> None:
    """seeds=2: each row runs two jobs (seed 0 and 1); killed mid-way, a re-run skips the finished
    seeds; every cell is the mean of its seeds' metrics.json and its s.e. their stdev/sqrt(n)."""
    import statistics

    path = write_table(tmp_path / "seeded.yaml", [vae_row("a", 1), vae_row("b", 12)])
    doc = __import__("yaml").safe_load(path.read_text())
    doc["checks"] = [{"type": "monotone", "metric": "test/nll", "order": "decreasing"}]
    path.write_text(__import__("yaml").safe_dump(doc))
    out = tmp_path / "out"
    args = [f"table={path}", "budget=smoke", f"out_dir={out}", "seeds=2"]
    proc = subprocess.Popen(
        [str(BIN / "vaelab-reproduce"), *args, f"paths.data_dir={fake_mnist}", *CPU],
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    runs = out / "runs"
    b0_ckpt = runs / "b" / "seed0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    try:
        while not b0_ckpt.is_file():
            assert proc.poll() is None, "the table finished before it could be killed"
            assert time.time() < deadline, "timed out waiting for row b seed 0 to checkpoint"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # seed by seed: row a's seed 0 has finished, row b's seed 0 is half-way, seed 1 not begun
    finished = runs / "a" / "seed0" / "metrics.json"
    before = (finished.read_bytes(), finished.stat().st_mtime_ns)
    assert not (runs / "b" / "seed0" / "metrics.json").exists()
    assert not (runs / "a" / "seed1" / "metrics.json").exists()

    rerun = run_reproduce(args, tmp_path, fake_mnist)
    assert "row a seed 0: skipped: finished" in rerun.stdout
    assert f"row b seed 0: resume from {b0_ckpt.resolve()}" in rerun.stdout
    assert "row a seed 1: start" in rerun.stdout and "row b seed 1: start" in rerun.stdout
    # one multirun of the unfinished jobs only, seed by seed
    assert "+reproduce_row=b__seed0,a__seed1,b__seed1 " in rerun.stdout
    assert (finished.read_bytes(), finished.stat().st_mtime_ns) == before

    lines = {ln["row"]: ln for ln in read_csv(out / "report.csv")}
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    for rid in ("a", "b"):
        ms = [json.loads((runs / rid / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert [m["status"] for m in ms] == ["ok", "ok"]
        cfgs = [(runs / rid / f"seed{s}" / ".hydra" / "config.yaml").read_text() for s in (0, 1)]
        assert "seed: 0\n" in cfgs[0] and "seed: 1\n" in cfgs[1]
        vals = [m["test/nll"] for m in ms]
        assert vals[0] != vals[1]  # two seeds, two models
        line = lines[rid]
        assert float(line["ours"]) == statistics.fmean(vals)
        assert float(line["se"]) == pytest.approx(statistics.stdev(vals) / 2**0.5, rel=1e-12)
        assert line["seeds"] == "2" and line["se_over"] == "seeds (ddof=1)"
        assert json.loads(line["per_seed"]) == {"0": vals[0], "1": vals[1]}
        image_se = statistics.fmean(m["test/nll_se"] for m in ms)
        assert float(line["image_se"]) == pytest.approx(image_se, rel=1e-12)
        cell = next(c for c in report["cells"] if c["row"] == rid)
        assert cell["per_seed"] == {"0": vals[0], "1": vals[1]} and cell["seeds"] == 2
        assert f"{statistics.fmean(vals):.2f} ± {float(line['se']):.2f}" in md
    assert report["seeds"] == 2 and "- Seeds: 2 a row" in md
    # the ordering check says whether each step clears 2 s.e. of the difference
    check = next(c for c in report["checks"] if "test/nll" in c)
    a, b = (float(lines[r]["ours"]) for r in ("a", "b"))
    se = (float(lines["a"]["se"]) ** 2 + float(lines["b"]["se"]) ** 2) ** 0.5
    word = "clears" if abs(b - a) > 2 * se else "within"
    assert f"a -> b {b - a:+.2f} ± {se:.2f} ({word} 2 s.e.)" in check
    # a third sitting has nothing to run; a fixed seed with seeds=2 is refused
    again = run_reproduce([*args, "dry_run=true"], tmp_path, fake_mnist)
    assert again.stdout.count("skipped: finished") == 4
    refused = run_reproduce([*args, "seed=3"], tmp_path, fake_mnist, check=False)
    assert refused.returncode == 2 and "seed=3 would give every one" in refused.stderr


def test_seed_standard_error_is_stdev_ddof1_over_sqrt_n() -> None:
    import statistics

    vals = [0.1951, 0.1948, 0.1957, 0.1949, 0.1950]
    assert rp.standard_error(vals) == pytest.approx(statistics.stdev(vals) / 5**0.5)
    assert rp.standard_error([1.0]) is None


def test_full_data_row_trains_on_every_image_and_never_validates(bbans_smoke) -> None:
    """table=bbans (data: full): no images held out, no validation at all (so never on the test
    set), the final epoch's checkpoint tested; the report's protocol line says so."""
    _, out, _, _ = bbans_smoke
    run = out / "runs" / "train"
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["data"]["val_size"] == 0
    assert cfg["callbacks"]["model_checkpoint"]["monitor"] is None
    m = json.loads((run / "metrics.json").read_text())
    assert not [k for k in m if k.startswith("val/")]
    with next(run.glob("csv/**/metrics.csv")).open() as f:
        assert not [c for c in csv.DictReader(f).fieldnames or [] if c.startswith("val/")]
    assert Path(m["best_checkpoint"]).name == f"best-epoch{m['epochs'] - 1:03d}.ckpt"
    assert "- Data: **full** (the paper's): every training image" in (out / "report.md").read_text()


def test_val_size_zero_keeps_every_training_image(fake_mnist: Path) -> None:
    from vaelab.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(fake_mnist), val_size=0, download=False, on_device=False)
    dm.setup()
    assert dm.splits["train"].shape[0] == 600 and dm.splits["val"].shape[0] == 0
    assert dm.val_dataloader() == []
    held = MNISTDataModule(data_dir=str(fake_mnist), val_size=50, download=False, on_device=False)
    held.setup()
    assert held.splits["train"].shape[0] == 550


def test_validation_asked_for_without_validation_data_is_an_error(
    tmp_path: Path, fake_mnist: Path
) -> None:
    from tests.conftest import compose_train
    from vaelab.data import MNISTDataModule
    from vaelab.train import check_validation_requests

    dm = MNISTDataModule(data_dir=str(fake_mnist), val_size=0, download=False)
    cfg = compose_train(["data.val_size=0"], tmp_path, fake_mnist)
    with pytest.raises(ValueError, match=r"callbacks.model_checkpoint.monitor=val/nll asks"):
        check_validation_requests(cfg, dm)
    ok = compose_train(["data.val_size=0", "callbacks.model_checkpoint.monitor=null"], tmp_path)
    check_validation_requests(ok, dm)  # nothing asks for validation
    interval = compose_train(
        [
            "data.val_size=0",
            "callbacks.model_checkpoint.monitor=null",
            "+trainer.val_check_interval=2",
        ],
        tmp_path,
    )
    with pytest.raises(ValueError, match=r"trainer.val_check_interval=2"):
        check_validation_requests(interval, dm)
    # a table cannot undo its row's full-data protocol
    path = tmp_path / "bad.yaml"
    write_table(path, [{**vae_row("r", 1, "data.val_size=10"), "data": "full"}])
    with pytest.raises(rp.ReproduceError, match=r"data.val_size=10 contradicts its data protocol"):
        rp.load_table(str(path))


def test_reproduced_over_seeds_allows_the_tolerance_plus_two_seed_standard_errors(
    tmp_path: Path,
) -> None:
    """At the paper's budget, a seeded cell is yes when |mean − published| ≤ tolerance + 2 s.e.
    over seeds, no beyond that, and — until every seed has finished (no jobs run here)."""
    import statistics

    from vaelab.reproduce.cells import reproduced_over_seeds

    table = rp.load_table("bbans")
    budget, row = table.budget("cpu"), next(r for r in table.rows if r.id == "compress")

    def result(values: list[float], status: str = "ok") -> rp.RowResult:
        states = []
        for seed, v in enumerate(values):
            m = {"status": status if seed == 0 else "ok", "epochs": 20, "compress/bpd": v}
            states.append(rp.RowState(row, tmp_path / str(seed), m, None, seed=seed))
        return rp.RowResult(row, states)

    def cell(values: list[float], status: str = "ok") -> str:
        res = result(values, status)
        return reproduced_over_seeds(table, budget, res, "compress/bpd", res.stats("compress/bpd"))

    inside = [0.1940, 0.1942, 0.1938]
    assert cell(inside).startswith("yes (distance to published 0.00400, tolerance + 2 s.e. ")
    edge = [0.1950, 0.1952, 0.1954]  # mean 0.1952: 0.0002 beyond 0.005, s.e. 0.000115
    se = statistics.stdev(edge) / 3**0.5
    assert 2 * se >= 0.0052 - 0.005
    assert cell(edge).startswith("yes")
    far = [0.1970, 0.1971, 0.1969]
    assert cell(far) == "no (distance to published 0.00700, tolerance + 2 s.e. 0.00512)"
    assert cell(inside, status="failed: x") == "—"
