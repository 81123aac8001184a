"""Resume from a checkpoint written inside an epoch under DDP (2 processes, gloo) is exact.

Each rank trains on its own stride of the shuffled training set and draws its own binarization
noise; a step-based ``last.ckpt`` (rank 0 writes it) holds the loader's position, which every rank
restores (``IndexBatchLoader.state_dict``), and the global RNG state, which is the same on every
rank (all are seeded alike and draw alike). So 2 epochs straight and the same run stopped at step 3
of epoch 0 (5 steps an epoch) and resumed from its step-based checkpoint end with the same weights.
On the code before the stateful loader (484b13b) the resumed weights differed (first encoder
weight -0.0078 against -0.0066; without a stateful loader Lightning restarts the epoch's loader at its
first minibatch, as the single-process tests in test_resume_mid_epoch.py show).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.workflow import cli_env, run_cli, run_dirs, tiny

DDP = "trainer=ddp trainer.accelerator=cpu trainer.devices=2"


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["global_step"]


def test_ddp_resume_from_inside_an_epoch_equals_the_uninterrupted_run(
    fake_mnist: Path, tmp_path: Path
) -> None:
    # 2 ranks x 250 training images, batch 50: 5 optimizer steps an epoch.
    common = [
        "callbacks=[model_checkpoint]",
        "test=false",
        "callbacks.model_checkpoint.monitor=null",
    ]
    env = cli_env(tmp_path)

    def train(name: str, extra: list[str]) -> Path:
        logs = tmp_path / name
        run_cli(
            f"vaelab-train {DDP}",
            [*tiny(fake_mnist, logs, epochs=2, batches=5), *common, *extra],
            env=env,
            cwd=tmp_path,
        )
        (run_dir,) = run_dirs(logs)
        return run_dir

    whole = train("whole", [])
    first = train(
        "first", ["+trainer.max_steps=3", "+callbacks.last_checkpoint.every_n_train_steps=2"]
    )
    step_ckpt = first / "checkpoints" / "last.ckpt"
    _, at = _weights(first)
    assert 0 < at < 5  # inside epoch 0
    resumed = train("resumed", [f"ckpt_path={step_ckpt}"])
    ws, steps_whole = _weights(whole)
    wr, steps_resumed = _weights(resumed)
    assert steps_whole == steps_resumed == 10
    for k in ws:
        assert torch.equal(ws[k], wr[k]), k
