"""Optional integrations name their ``pip install`` when missing (vaelab.extras)."""

from __future__ import annotations

import pytest

from vaelab import extras


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extras, "_installed", lambda module: False)


@pytest.mark.parametrize(
    ("arg", "package"),
    [
        ("hparams_search=vae_optuna", "hydra-optuna-sweeper"),
        ("hydra/sweeper=optuna", "hydra-optuna-sweeper"),
        ("hydra/launcher=parallel", "hydra-joblib-launcher"),
        ("hydra/launcher=slurm", "hydra-submitit-launcher"),
    ],
)
def test_a_missing_plugin_is_named_with_its_pip_install(
    arg: str, package: str, nothing_installed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        extras.check_command_line(["-m", arg, "seed=0,1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{arg} needs {package}" in err and "pip install 'vaelab[sweeps]'" in err


def test_plain_commands_need_no_extra(nothing_installed: None) -> None:
    extras.check_command_line(["model=beta_vae", "hydra/launcher=basic", "logger=csv"])


def test_wandb_logger_without_wandb_names_the_extra(nothing_installed: None) -> None:
    from vaelab.loggers import WandbLogger

    with pytest.raises(extras.MissingExtraError, match=r"pip install 'vaelab\[wandb\]'"):
        WandbLogger(save_dir="unused")


def test_installed_plugins_pass() -> None:
    # make install puts every extra in .venv: nothing is reported missing there.
    for module in extras.PACKAGES:
        assert extras._installed(module), module
