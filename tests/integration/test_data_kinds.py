"""Data kinds: refused combinations name a fix, and the fix they name runs.

Each case composes the refused run, checks the error, takes the override the message suggests
(literally, from the message) and runs that instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import compose_train
from vaelab.lit import GenerativeModule
from vaelab.models import VAE
from vaelab.train import train

CASES = [
    # (refused overrides, error pattern, the suggestion to take from the message)
    (["model=vae_gaussian", "data=binarized_mnist"], r"cannot model 'binary'", r"model=vae\b"),
    (["model=vae", "data=mnist"], r"cannot model 'dequantized'", r"model=vae_gaussian"),
    (
        ["model=hvae", "model.likelihood=gaussian", "data=binarized_mnist"],
        r"cannot model 'binary'",
        r"model\.likelihood=bernoulli",
    ),
    (["model=realnvp_mlp", "data=binarized_mnist"], r"needs dequantized", r"data=mnist"),
    # The quick experiment, not data=mnist with the default model=realnvp (6M parameters).
    (
        ["model=realnvp", "data=binarized_mnist"],
        r"needs dequantized",
        r"experiment=realnvp_mnist",
    ),
    (
        ["model=realnvp_mlp", "data=mnist", "data.dequantize=false"],
        r"got 'unit'",
        r"data\.dequantize=true",
    ),
]


@pytest.mark.parametrize(("refused", "error", "fix"), CASES, ids=lambda v: str(v)[:40])
def test_refused_combination_names_a_fix_that_runs(
    refused: list[str], error: str, fix: str, fake_mnist: Path, tmp_path: Path
) -> None:
    run = ["+trainer.fast_dev_run=true", "callbacks=none", "logger=csv"]
    with pytest.raises(ValueError, match=error) as err:
        train(compose_train([*refused, *run], tmp_path / "refused", fake_mnist))
    suggestion = re.search(fix, str(err.value))
    assert suggestion, str(err.value)
    key = suggestion.group(0).split("=")[0]
    fixed = [o for o in refused if o.lstrip("+").split("=")[0] != key] + [suggestion.group(0)]
    if key == "experiment":  # an experiment is the whole run: `vaelab-train experiment=...`
        fixed = [suggestion.group(0)]
    metrics, _ = train(compose_train([*fixed, *run], tmp_path / "fixed", fake_mnist))
    assert torch.isfinite(torch.tensor(metrics["test/nll"]))


def test_bits_per_dim_only_where_defined(fake_mnist: Path, tmp_path: Path) -> None:
    run = ["+trainer.fast_dev_run=true", "callbacks=none", "logger=csv", "model=vae_gaussian"]
    unit, _ = train(
        compose_train([*run, "data=mnist", "data.dequantize=false"], tmp_path / "u", fake_mnist)
    )
    assert "test/nll" in unit and "test/bpd" not in unit and "train/bpd" not in unit
    deq, _ = train(compose_train([*run, "data=mnist"], tmp_path / "d", fake_mnist))
    assert deq["test/bpd"] == pytest.approx(
        (deq["test/nll"] / 784 + 8 * 0.6931471805599453) / 0.6931471805599453, rel=1e-5
    )


@pytest.mark.parametrize("kind", [None, "pixels", "Binary"])
def test_unknown_or_missing_kind_is_an_error(kind: str | None) -> None:
    from tests.unit.test_active_units import make_vae

    model: VAE = make_vae(torch.eye(2))
    module = GenerativeModule(model, data_kind=kind, test_num_samples=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    loader = torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2)
    with pytest.raises(ValueError, match=r"data kind|data_kind"):
        trainer.test(module, dataloaders=loader, verbose=False)
