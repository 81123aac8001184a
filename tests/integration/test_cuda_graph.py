"""module.cuda_graph=true, as far as a CPU can check it.

The capture itself needs a GPU (``benchmarks/gpu_checks.sh`` runs it there). Here the module's
graph path runs with ``vaelab.graphs.EagerStand``, which runs the recorded step at every "replay":
the warm-up steps, the static input buffer, the step and the learning rate reaching the replays as
tensors, the rows read back once a block, the on-device skip of a non-finite step and the
checkpoint's learning rate are the code a GPU run goes through. With a learning rate that float32
holds exactly, the graph path equals the eager one bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import compose_train
from tests.helpers.training import assert_same_checkpoints, extra_callbacks
from tests.integration.test_steps_per_batch import BASE, PoisonAt, _assert_same, _run
from vaelab.checkpoints import read_checkpoint
from vaelab.lit import GenerativeModule, NonFiniteError
from vaelab.train import train

# A per-step schedule whose rates float32 holds exactly (2^-10 halved every 4 steps), and the beta
# warm-up (a per-step value the captured forward reads from a tensor).
EXACT = [
    "trainer.max_epochs=2",
    "optimizer.lr=0.0009765625",
    "scheduler=null",
    "+scheduler._target_=torch.optim.lr_scheduler.StepLR",
    "+scheduler._partial_=true",
    "+scheduler.step_size=4",
    "+scheduler.gamma=0.5",
    "module.scheduler_interval=step",
    "model.objective.warmup_steps=12",
]


@pytest.fixture
def stand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GenerativeModule, "_graph_backend", "eager")


def test_cuda_graph_on_a_cpu_is_refused_naming_the_fix(fake_mnist: Path, tmp_path: Path) -> None:
    cfg = compose_train([*BASE, "module.cuda_graph=true"], tmp_path, fake_mnist)
    with pytest.raises(ValueError, match=r"needs a CUDA device; this run trains on cpu.*false"):
        train(cfg)


def test_graphed_steps_equal_eager_steps_bitwise(
    stand: None, fake_mnist: Path, tmp_path: Path
) -> None:
    eager = _run(tmp_path, fake_mnist, "eager", EXACT)
    graphed = _run(
        tmp_path,
        fake_mnist,
        "graphed",
        [*EXACT, "module.cuda_graph=true", "module.steps_per_batch=3"],
    )
    assert eager[2]["global_step"] == 20 and len(eager[1]) == 20
    assert eager[2]["lr"] == [0.0009765625 * 0.5**5]
    # 3 warm-up steps, 17 replayed
    assert graphed[2]["graph"] == {"captured": True, "eager_steps": 3, "replays": 17}
    assert all(type(v) is float for v in graphed[2]["lr"])  # a tensor while training only
    assert graphed[2]["opt"]["param_groups"][0]["capturable"] is False  # given back after the fit
    _assert_same(eager, graphed)
    # The checkpoint holds numbers, as one written without a graph: it resumes anywhere.
    ckpt = read_checkpoint(tmp_path / "graphed" / "run" / "checkpoints" / "last.ckpt")
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert type(group["lr"]) is float and group["capturable"] is False
    assert all(type(v) is float for v in ckpt["lr_schedulers"][0]["_last_lr"])


def test_graphed_hvae_iwae_steps_equal_eager_steps_bitwise(
    stand: None, fake_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two stochastic layers and the importance-weighted bound (k = 2): more terms in each row.
    vae_keys = ("model.encoder", "model.latent_dim")
    monkeypatch.setattr(
        "tests.integration.test_steps_per_batch.BASE",
        [o for o in BASE if not o.startswith(vae_keys)],
    )
    hvae = [
        *EXACT[:-1],  # no beta warm-up: the bound L_k has none
        "model=hvae",
        "model.layers=[{latent_dim:6,hidden:[16]},{latent_dim:3,hidden:[8]}]",
        "model.objective.iwae_samples=2",
    ]
    eager = _run(tmp_path, fake_mnist, "eager", hvae)
    graphed = _run(tmp_path, fake_mnist, "graphed", [*hvae, "module.cuda_graph=true"])
    assert graphed[2]["graph"] == {"captured": True, "eager_steps": 3, "replays": 17}
    assert any("iwae_bound_k2" in k for k in eager[1][0])
    _assert_same(eager, graphed)


@pytest.mark.slow  # two fits, each compiling the forward and backward (~10-30 s here)
def test_a_compiled_forward_in_the_graph_path_compiles_once_and_equals_compiled_eager(
    stand: None, fake_mnist: Path, tmp_path: Path
) -> None:
    # On a GPU the compiled forward runs inside the capture: a recompile there (a guard on the
    # capture flag, say) would compile inside a CUDA graph. One graph for warm-up and replays.
    from torch._dynamo.utils import counters

    extra = [*EXACT, "module.compile=true"]
    torch._dynamo.reset()
    eager = _run(tmp_path, fake_mnist, "eager", extra)
    torch._dynamo.reset()
    counters.clear()
    graphed = _run(tmp_path, fake_mnist, "graphed", [*extra, "module.cuda_graph=true"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert eager[2]["compiled"] and graphed[2]["compiled"]
    assert graphed[2]["graph"] == {"captured": True, "eager_steps": 3, "replays": 17}
    _assert_same(eager, graphed)


def test_graphed_steps_with_a_float64_schedule_equal_eager_up_to_float32_rounding(
    stand: None, fake_mnist: Path, tmp_path: Path
) -> None:
    # The IWAE schedule's rates (1e-3 * 10^(-i/7)) are rounded to float32 on the device.
    extra = [
        "trainer.max_epochs=2",
        "scheduler=null",
        "+scheduler._target_=vaelab.optim.iwae_schedule",
        "+scheduler._partial_=true",
    ]
    eager = _run(tmp_path, fake_mnist, "eager", extra)
    graphed = _run(tmp_path, fake_mnist, "graphed", [*extra, "module.cuda_graph=true"])
    assert graphed[2]["graph"]["replays"] == 17
    for k, v in eager[0].items():
        torch.testing.assert_close(graphed[0][k], v, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in eager[1]] == [r["step"] for r in graphed[1]]
    for a, b in zip(eager[1], graphed[1], strict=True):
        assert float(a["train/loss"]) == pytest.approx(float(b["train/loss"]), rel=1e-5)


class NaNInputAt(Callback):
    """Makes the minibatch of optimizer step ``step`` NaN (once: later steps are finite again)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.module = module
        model = module.model
        real = model.forward

        def forward(x: torch.Tensor, *args, **kwargs):
            if trainer.global_step == self.step and torch.is_grad_enabled():
                x = x * float("nan")
            return real(x, *args, **kwargs)

        model.forward = forward


@pytest.mark.parametrize("poison", [PoisonAt, NaNInputAt])
def test_a_non_finite_replayed_step_changes_no_weight_and_stops_naming_it(
    poison: type, stand: None, fake_mnist: Path, tmp_path: Path
) -> None:
    # Step 7 is the second of the block 6-8, replayed: the fused Adam skips it and step 8 on the
    # device (NaNInputAt: step 8 itself is finite), and the run stops naming step 7, with the
    # weights and Adam state the eager run has when it stops before step 7's backward.
    results = {}
    for name, extra in [("eager", []), ("graphed", ["module.cuda_graph=true"])]:
        cfg = compose_train(
            [*BASE, "trainer.max_epochs=2", "module.steps_per_batch=3", EXACT[1], *extra],
            tmp_path / name,
            fake_mnist,
        )
        callback = poison(step=7)
        with (
            extra_callbacks(callback),
            pytest.raises(NonFiniteError, match=r"training loss is nan at global step 7 \("),
        ):
            train(cfg)
        module = callback.module
        opt = module.trainer.optimizers[0]
        results[name] = (
            {k: v.clone() for k, v in module.state_dict().items()},
            {k: v.clone() for s in opt.state.values() for k, v in s.items()},
        )
    for a, b in zip(results["eager"], results["graphed"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.fused=false", "needs fused Adam or AdamW"),
        ("trainer.gradient_clip_val=1.0", "keeps Lightning's automatic optimization"),
        ("module.check_grads=true", None),  # allowed: the norm is checked on the device
    ],
)
def test_what_cuda_graph_cannot_replay_is_refused(
    stand: None, override: str, message: str | None, fake_mnist: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [*BASE, "trainer.max_epochs=1", "module.cuda_graph=true", override], tmp_path, fake_mnist
    )
    if message is None:
        _, objects = train(cfg)
        assert objects["module"]._graph is None  # dropped at teardown
        assert objects["module"].graph_summary["replays"] == 7
        return
    with pytest.raises(ValueError, match=rf"module.cuda_graph=true .*{message}.*false"):
        train(cfg)


def test_a_captured_forward_reads_per_step_values_from_tensors() -> None:
    # A graph replays what it recorded: a Python number read while capturing would stay frozen.
    # (The stand re-runs the step, so this is checked here, on the objective and the prior.)
    from vaelab import graphs
    from vaelab.distributions.priors import StandardNormalPrior
    from vaelab.objectives import ELBOObjective

    distortion, rate = torch.ones(2), torch.ones(2)
    for objective, tensor in [
        (ELBOObjective(warmup_steps=10), "_beta_t"),
        (ELBOObjective(capacity_max=5.0, capacity_steps=10), "_capacity_t"),
    ]:
        objective.step = 3
        eager = objective(distortion, rate)
        getattr(objective, tensor).fill_(0.9)  # what a replay reads (the host fills it)
        with graphs._captured():
            assert graphs.tracing()
            captured = objective(distortion, rate)
        assert objective(distortion, rate) == eager != captured
    prior = StandardNormalPrior(4)
    assert prior((2,)) is prior((2,))  # eager: built once, reused
    with graphs._captured():
        assert prior((2,)) is not prior((2,))  # captured: built inside the graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gpu_checks.sh)")
def test_captured_steps_on_cuda_equal_eager_steps(fake_mnist: Path, tmp_path: Path) -> None:
    # The real capture: torch.cuda.CUDAGraph replays. The CUDA random stream of a replay is the
    # eager one (the graph advances the generator's offset by what it draws), so the runs agree
    # up to the GPU's float rounding.
    gpu = ["trainer.accelerator=gpu", "trainer.devices=1"]
    eager = _run(tmp_path, fake_mnist, "eager", [*EXACT, *gpu])
    graphed = _run(
        tmp_path,
        fake_mnist,
        "graphed",
        [*EXACT, *gpu, "module.cuda_graph=true", "module.steps_per_batch=3"],
    )
    assert graphed[2]["graph"] == {"captured": True, "eager_steps": 3, "replays": 17}
    worst = max((graphed[0][k].float() - v.float()).abs().max().item() for k, v in eager[0].items())
    print(f"largest parameter difference, graphed - eager on CUDA: {worst:.3g}")
    for k, v in eager[0].items():
        torch.testing.assert_close(graphed[0][k], v, rtol=1e-4, atol=1e-5)
    assert [r["step"] for r in eager[1]] == [r["step"] for r in graphed[1]]


def test_a_graphed_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(
    stand: None, fake_mnist: Path, tmp_path: Path
) -> None:
    # The checkpoint holds the learning rate as a number; the resumed fit warms up and captures
    # anew, and carries on bit for bit (10 steps an epoch in blocks of 3).
    from tests.integration.test_resume_exact import run

    g = [
        "~trainer.limit_train_batches",
        EXACT[1],
        "module.cuda_graph=true",
        "module.steps_per_batch=3",
    ]
    straight, _ = run([*g, "trainer.max_epochs=2"], tmp_path, fake_mnist, "straight")
    run([*g, "trainer.max_epochs=1"], tmp_path / "a", fake_mnist, "first")
    assert straight["module"].graph_summary["replays"] == 17
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    # With the graph (3 warm-up steps and 7 replays in the resumed epoch), and without it
    # (module.cuda_graph is free to change on resume): the same weights and Adam state.
    for name, overrides, replays in [
        ("second", g, 7),
        ("third", [o for o in g if o != "module.cuda_graph=true"], None),
    ]:
        resumed, _ = run(
            [*overrides, "trainer.max_epochs=2", "ckpt_path=last"],
            tmp_path / "a",
            fake_mnist,
            name,
            log_dir=tmp_path / "a" / "first",
        )
        summary = resumed["module"].graph_summary
        assert (summary and summary["replays"]) == replays, name
        assert resumed["trainer"].global_step == 20
        b = read_checkpoint(tmp_path / "a" / name / "checkpoints" / "last.ckpt")
        assert_same_checkpoints(a, b, ("exp_avg", "exp_avg_sq", "step"))
