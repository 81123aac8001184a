"""Standard errors of the test figures: ``test/{name}_se == std / sqrt(n)`` computed directly.

The direct computation re-runs the model on the same test batches with the same evaluation noise
(each batch seeded by ``eval_seed + 1_000_003 * batch index``, as the LightningModule does) and takes
``torch.std`` of the per-image values. The DDP counterpart is in ``test_workflow_ddp.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from vaelab.train import train


def test_test_standard_errors_equal_std_over_sqrt_n(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train(["model=hvae", "callbacks=none", "logger=csv"], tmp_path, fake_mnist)
    metrics, objects = train(cfg)
    module, model, dm = objects["module"], objects["model"], objects["datamodule"]
    model.eval()
    values: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for b, x in enumerate(dm.test_dataloader()):
            torch.manual_seed(module.eval_seed + 1_000_003 * b)
            terms = model(x)
            nll = -model.log_likelihood(x, module.test_num_samples)
            for name, v in {**terms.items(), "nll": nll}.items():
                values.setdefault(name, []).append(v.double())
    n = 200  # fake MNIST test images
    checked = []
    for name in ("nll", "elbo", "rate", "distortion", "rate/z1", "rate/z2"):
        v = torch.cat(values[name])
        assert v.numel() == n
        assert metrics[f"test/{name}"] == pytest.approx(float(v.mean()), rel=1e-5)
        expected = float(v.std() / math.sqrt(n))
        assert expected > 0
        assert metrics[f"test/{name}_se"] == pytest.approx(expected, rel=1e-4), name
        checked.append(name)
    bpd = torch.cat(values["nll"]) / (784 * math.log(2))
    assert metrics["test/bpd_se"] == pytest.approx(float(bpd.std() / math.sqrt(n)), rel=1e-4)
    assert "test/loss_se" not in metrics  # the loss is a batch mean, not a per-image value
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/nll_se"] == pytest.approx(metrics["test/nll_se"])
    assert len(checked) == 6
