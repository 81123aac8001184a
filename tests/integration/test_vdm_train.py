"""Every VDM config through ``vaelab.train.train`` (fast_dev_run on fake MNIST), and the data
kinds the model refuses through the same path. Tiny sizes; the LightningModule is the one every
model uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers.fake_data import write_fake_mnist
from vaelab.config import config_dir
from vaelab.models import VDM

VDM_MODELS = sorted(p.stem for p in (Path(config_dir()) / "model").glob("vdm*.yaml"))
TINY_NET = {
    "vdm": ["model.net.widths=[4,8]"],
    "vdm_linear": ["model.net.widths=[4,8]"],
    "vdm_mlp": ["model.net.widths=[16]"],
}


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def common(data_dir: Path, out: Path) -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out}",
        "data.download=false",
        "data.val_size=20",
        "data.batch_size=10",
        "data.eval_batch_size=20",
        "+trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "eval.num_samples=2",
        "eval.val_num_samples=1",
        "model.sample_steps=4",
        "callbacks.images.num_samples=4",
    ]


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("data"), n_train=60, n_test=20)


def test_every_vdm_model_config_is_covered() -> None:
    assert set(VDM_MODELS) == set(TINY_NET), "add the new vdm config to TINY_NET"


@pytest.mark.parametrize(
    "model,extra",
    [(m, []) for m in VDM_MODELS]
    + [
        ("vdm_mlp", ["model.timesteps=10"]),
        ("vdm_mlp", ["model.prediction=binary_posterior"]),
        ("vdm_mlp", ["data=mnist", "model.decoder=discretized", "model.timesteps=3"]),
    ],
)
def test_vdm_fast_dev_run(model: str, extra: list[str], fake_mnist: Path, tmp_path: Path) -> None:
    """Smoke test plus units: nll = -elbo's bound, bits/dim in pixel space, finite, named terms."""
    from vaelab.train import train

    cfg = compose_train(f"model={model}", *TINY_NET[model], *common(fake_mnist, tmp_path), *extra)
    metrics, objects = train(cfg)
    assert isinstance(objects["model"], VDM)
    for key in ("test/nll", "test/nll_se", "test/bpd", "test/prior", "test/reconstruction"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/diffusion"] > 0 and metrics["test/prior"] > 0
    terms = metrics["test/prior"] + metrics["test/reconstruction"] + metrics["test/diffusion"]
    d = 784
    if "data=mnist" in extra:  # dequantized: elbo bounds log p(y) = log P(k) + D ln 256
        assert metrics["test/elbo"] == pytest.approx(d * math.log(256) - terms, rel=1e-5)
        assert metrics["test/bpd"] == pytest.approx(
            (metrics["test/nll"] + d * math.log(256)) / (d * math.log(2)), rel=1e-5
        )
    else:
        assert metrics["test/elbo"] == pytest.approx(-terms, rel=1e-5)
        assert metrics["test/bpd"] == pytest.approx(
            metrics["test/nll"] / (d * math.log(2)), rel=1e-5
        )
    assert (tmp_path / "images" / "samples_final.png").exists()


def test_experiment_vdm_binarized_mnist_fast_dev_run(fake_mnist: Path, tmp_path: Path) -> None:
    from vaelab.train import train

    cfg = compose_train(
        "experiment=vdm_binarized_mnist", *TINY_NET["vdm_mlp"], *common(fake_mnist, tmp_path)
    )
    assert cfg.model.net._target_ == "vaelab.nn.NoiseMLP"
    metrics, _ = train(cfg)
    assert math.isfinite(metrics["test/nll"]) and metrics["test/nll_se"] > 0


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data=mnist"], "model.decoder=discretized with data=mnist"),
        (["model.decoder=discretized"], "model.decoder=binary with data=binarized_mnist"),
        (["data=mnist", "data.dequantize=false", "model.decoder=discretized"], "'unit'"),
    ],
)
def test_vdm_refuses_the_other_data_kinds(
    overrides: list[str], match: str, fake_mnist: Path, tmp_path: Path
) -> None:
    from vaelab.train import train

    cfg = compose_train(
        "model=vdm_mlp", *TINY_NET["vdm_mlp"], *common(fake_mnist, tmp_path), *overrides
    )
    with pytest.raises(ValueError, match=match):
        train(cfg)


def test_the_commands_of_docs_vdm_compose() -> None:
    """Every ``vaelab-train`` line of docs/vdm.md composes and builds a VDM (its overrides exist)."""
    import re
    import shlex

    from hydra.utils import instantiate

    from tests.conftest import REPO

    text = (REPO / "docs" / "vdm.md").read_text()
    lines = [
        ln.strip()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        for ln in block.splitlines()
        if ln.strip().startswith("vaelab-train")
    ]
    assert len(lines) == 3, lines
    for line in lines:
        cfg = compose_train(*shlex.split(line)[1:])
        model = instantiate(cfg.model)
        assert isinstance(model, VDM), line
        assert cfg.eval.num_samples <= 8, line  # never the IWAE protocol's 5000 network passes
