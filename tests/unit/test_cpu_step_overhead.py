"""A CPU fit does not ask NVML how many GPUs there are on every optimizer step.

Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` at import; with a CUDA build of torch every
Adam step then answers ``torch.cuda.is_available()`` by loading NVML afresh (``vaelab.lit``,
``_NVML_CHECK``). The fit turns that off on the CPU and puts the variable back afterwards.
"""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

from tests.unit.test_active_units import make_vae
from vaelab.lit import GenerativeModule

pytestmark = pytest.mark.skipif(
    not torch.cuda._is_compiled(), reason="a CPU-only torch build never asks NVML"
)


def test_cpu_fit_does_not_query_nvml_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what importing Lightning does
    calls = []
    original = torch.cuda._device_count_nvml

    def counting() -> int:
        calls.append(1)
        return original()

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", counting)
    x = torch.bernoulli(torch.full((60, 6), 0.5), generator=torch.Generator().manual_seed(0))
    module = GenerativeModule(make_vae(torch.eye(8, 6)), data_kind="binary", val_num_samples=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(x, batch_size=10))
    assert trainer.global_step == 6
    assert len(calls) < 6, f"NVML was asked {len(calls)} times in 6 optimizer steps"
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"  # put back after the fit
