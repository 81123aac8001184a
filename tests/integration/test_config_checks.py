"""Issue 26 cases 3 and 12: path-forming names stay inside their root; bad values are refused
before anything loads, in one short message naming the key, the value, what is allowed and a
command that works (the traceback only with ``HYDRA_FULL_ERROR=1``)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.conftest import compose_train
from tests.helpers.workflow import cli_env, run_cli, tiny
from vaelab.config_check import ConfigValueError, check_name, check_values


def _outside(tmp_path: Path) -> list[Path]:
    """Everything under tmp_path that is not under its logs/ (the root) or the CLI's own dirs."""
    keep = {"logs", "home", "wandb_cache", "wandb_config", "wandb_data", "data"}
    return [p for p in tmp_path.iterdir() if p.name not in keep]


# -- case 3: task_name ----------------------------------------------------------------------------
def test_task_name_never_writes_outside_the_log_folder(fake_mnist: Path, tmp_path: Path) -> None:
    # Before: task_name=../../x wrote its run folder two levels above paths.log_dir.
    work = tmp_path / "w"
    logs = work / "deep" / "logs"
    logs.mkdir(parents=True)
    env = cli_env(tmp_path)
    env.pop("HYDRA_FULL_ERROR")
    args = [*tiny(fake_mnist, logs), "task_name=../../x"]
    proc = run_cli("vaelab-train", args, env=env, cwd=work, check=False)
    assert proc.returncode == 1
    written = set(work.rglob("*"))
    assert written == {work / "deep", logs}, f"written outside {logs}: {sorted(written)}"
    err = proc.stderr.strip()
    assert err.startswith("vaelab-train: error: task_name='../../x' is not allowed"), err
    assert "paths.log_dir" in err and "Traceback" not in err and len(err.splitlines()) == 2


@pytest.mark.parametrize("task_name", ["../escaped", "a/../../b", "/ABS", "~/x", ".", ""])
def test_the_run_folder_refuses_a_task_name_that_escapes(
    task_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Hydra resolves for the run (and sweep) folder, before it makes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vaelab.config import config_dir, register_resolvers

    register_resolvers()
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # raise, do not print and exit
    name = task_name.replace("/ABS", str(tmp_path / "abs"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", [f"task_name='{name}'"], return_hydra_config=True)
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        with pytest.raises(Exception, match=r"task_name=.* is not allowed"):
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)


def test_an_absolute_task_name_with_last_does_not_search_another_root(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # Before: the run was written under <log_dir>//abs/... while ckpt_path=last searched /abs (and
    # resumed an unrelated run there; here it trips over the unreadable file it finds there).
    from vaelab.train import train

    unrelated = tmp_path / "abs" / "runs" / "r" / "checkpoints" / "last.ckpt"
    unrelated.parent.mkdir(parents=True)
    unrelated.write_bytes(b"not this run's")
    cfg = compose_train([f"task_name={tmp_path / 'abs'}", "ckpt_path=last"], tmp_path, fake_mnist)
    with pytest.raises(ConfigValueError, match=r"task_name=.*absolute path"):
        train(cfg)
    status = json.loads((tmp_path / "run" / "metrics.json").read_text())["status"]
    assert "ConfigValueError" in status and str(unrelated) not in status


@pytest.mark.parametrize("good", ["train", "my_run", "sweeps/lr=0.1", "a.b-c_d"])
def test_plain_task_names_are_fine(good: str) -> None:
    assert check_name("task_name", good) == good


# -- case 12: types and ranges, before anything loads ---------------------------------------------
CASES = {
    # override -> (key named, allowed)
    "trainer.max_epochs=abc": ("trainer.max_epochs='abc'", "an integer >= -1"),
    "model.latent_dim=-3": ("model.latent_dim=-3", "an integer >= 1"),
    "data.batch_size=0": ("data.batch_size=0", "an integer >= 1"),
    "optimizer.lr=nan": ("optimizer.lr=nan", "a finite number >= 0"),
    "optimizer.lr=-1": ("optimizer.lr=-1", "a finite number >= 0"),
    "eval.num_samples=0": ("eval.num_samples=0", "an integer >= 1"),
    "data.eval_batch_size=2.5": ("data.eval_batch_size=2.5", "an integer >= 1"),
    "model.objective.beta=inf": ("model.objective.beta=inf", "a finite number >= 0"),
    "trainer.gradient_clip_val=-1": ("trainer.gradient_clip_val=-1", "a finite number >= 0"),
    "module.steps_per_batch=0": ("module.steps_per_batch=0", "(or 'auto')"),
    "model.encoder.net.hidden=[200,0]": ("model.encoder.net.hidden[1]=0", "an integer >= 1"),
}


@pytest.mark.parametrize("override", sorted(CASES))
def test_a_bad_value_is_refused_before_anything_loads(
    override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: trainer.max_epochs=abc -> bare AssertionError from the fit loop after the data loaded;
    # model.latent_dim=-3 -> "negative dimension -6"; batch_size=0 and lr=nan named no key.
    from vaelab.train import train

    empty = tmp_path / "no_data"  # nothing to load: the check must come first
    cfg = compose_train([override, "data.download=false"], tmp_path, empty)
    key, allowed = CASES[override]
    with pytest.raises(ConfigValueError) as err:
        train(cfg)
    msg = str(err.value)
    assert key in msg and allowed in msg and "A command that works: vaelab-train" in msg
    # the suggested command composes and passes the check
    suggested = shlex.split(msg.split("A command that works: ", 1)[1])[1:]
    fixed = compose_train([override, *suggested], tmp_path / "b", empty)
    check_values(fixed, "train")
    assert (
        "ConfigValueError" in json.loads((tmp_path / "run" / "metrics.json").read_text())["status"]
    )


def test_hierarchical_layers_are_checked_per_item(tmp_path: Path) -> None:
    cfg = compose_train(["model=hvae", "model.layers.1.latent_dim=0"], tmp_path)
    with pytest.raises(
        ConfigValueError, match=r"model\.layers\[1\]\.latent_dim=0.*model\.layers\.1\.latent_dim=50"
    ):
        check_values(cfg, "train")


def test_every_shipped_config_passes(tmp_path: Path) -> None:
    from vaelab.config import config_dir

    for exp in sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml")):
        check_values(compose_train([f"experiment={exp}"], tmp_path, tiny=False), "train")
    for model in sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml")):
        check_values(compose_train([f"model={model}"], tmp_path, tiny=False), "train")


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize(
    ("entry", "override", "named"),
    [("eval", "eval.num_samples=-1", "eval.num_samples=-1"),
     ("eval", "eval.split=train", "eval.split='train'"),
     ("compress", "num_images=0", "num_images=0"),
     ("compress", "coder.obs_prec=abc", "coder.obs_prec='abc'"),
     ("compress", "mode=zip", "mode='zip'")],
)  # fmt: skip
def test_eval_and_compress_check_their_keys_first(
    entry: str, override: str, named: str, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.ckpt"  # the check comes before the checkpoint is read
    cfg = _compose(entry, [f"ckpt_path={missing}", f"paths.output_dir={tmp_path}", override])
    if entry == "eval":
        from vaelab.eval import evaluate as run
    else:
        pytest.importorskip("constriction")
        from vaelab.compression.cli import run
    with pytest.raises(ConfigValueError) as err:
        run(cfg)
    assert f"{named} is not allowed" in str(err.value)
    assert f"A command that works: vaelab-{entry}" in str(err.value)


def test_the_cli_prints_one_short_message(fake_mnist: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    env.pop("HYDRA_FULL_ERROR")
    args = [*tiny(fake_mnist, tmp_path / "logs"), "trainer.max_epochs=abc"]
    proc = run_cli("vaelab-train", args, env=env, check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 1
    assert err.startswith("vaelab-train: error: trainer.max_epochs='abc' is not allowed"), err
    assert "Traceback" not in err and len(err.splitlines()) == 2, err


def test_the_traceback_comes_with_hydra_full_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vaelab.tasks import short_errors

    @short_errors("vaelab-x")
    def task() -> None:
        raise ConfigValueError("k=1 is not allowed")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as code:
        task()
    assert code.value.code == 1
    assert capsys.readouterr().err.startswith("vaelab-x: error: k=1 is not allowed")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigValueError):
        task()


# -- case 12: a file of the wrong kind is named ---------------------------------------------------
@pytest.mark.parametrize("split", ["train", "t10k"])
def test_a_labels_file_in_the_images_place_is_named(split: str, tmp_path: Path) -> None:
    # Before: torchvision's "x should have 3 dimension", no file named.
    from tests.helpers.fake_data import write_fake_mnist
    from vaelab.data import MNISTDataModule
    from vaelab.data.mnist import DatasetCorruptError

    root = write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    raw = root / "MNIST" / "raw"
    images = raw / f"{split}-images-idx3-ubyte"
    images.write_bytes((raw / f"{split}-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DatasetCorruptError, match=rf"{images} holds \d+ values \(a labels file\).*N x 28 x 28.*images"):  # fmt: skip
        dm = MNISTDataModule(str(root), download=False, val_size=50)
        dm.setup()
        dm.labels("test")


# -- case 3: vaelab-reproduce's folders ------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "named"),
    [(["table=../../conf/reproduce/bbans"], "table='../../conf/reproduce/bbans'"),
     (["table=UP/t.yaml"], "outside"), (["table=small", "budget=../../b"], "budget='../../b'")],
)  # fmt: skip
def test_reproduce_folders_stay_inside_logs_reproduce(
    args: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: table=../../conf/reproduce/bbans (a real file, reached from conf/reproduce/) put the
    # table's runs and report under ./conf/reproduce/bbans/cpu, outside logs/reproduce.
    from vaelab.reproduce import reproduce

    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("VAELAB_ROOT", raising=False)
    table = tmp_path / "t.yaml"
    table.write_text(
        "name: small\nmetric: test/nll\nbudgets: {cpu: {}, ../../b: {}}\n"
        "rows: [{id: r, published: 1.0}]\n"
    )
    if "table=small" in args:
        args = [f"table={table}", *args[1:], "out_dir=out"]
    args = [a.replace("UP/t.yaml", "../t.yaml") for a in args]
    with pytest.raises(ConfigValueError, match="outside" if named == "outside" else named):
        reproduce([*args, "dry_run=true"])
    assert list(work.iterdir()) == []
