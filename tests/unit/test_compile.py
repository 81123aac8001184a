"""module.compile=true: the compiled training forward gives eager's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from vaelab.distributions import BernoulliLikelihood, GaussianEncoder
from vaelab.lit import GenerativeModule
from vaelab.models import VAE
from vaelab.nn import MLP


@pytest.mark.slow  # inductor compiles C++ for the forward and the backward: ~30-90 s on 2 cores
def test_compiled_loss_and_gradients_equal_eager(request: pytest.FixtureRequest) -> None:
    import torch._inductor.config as inductor_config

    # Inductor draws its own random numbers by default (a correct but different stream); with
    # torch's generator instead, eager and compiled see the same reparameterisation noise.
    # Inductor's own patch(), not monkeypatch: undoing a monkeypatch of its config module left
    # the option missing for the next test ("fallback_random does not exist").
    patch = inductor_config.patch(fallback_random=True)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    torch._dynamo.reset()
    model = VAE(
        GaussianEncoder(MLP([1, 4, 4], [8, 8]), 3),
        BernoulliLikelihood(MLP([3], [8, 8], [1, 4, 4]), [1, 4, 4]),
        [1, 4, 4],
        3,
    )
    module = GenerativeModule(model, compile=True)
    assert module.train_forward is not model and module.train_forward is module.train_forward
    assert set(module.state_dict()) == set(GenerativeModule(model).state_dict())  # no 2nd copy
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    params = list(model.parameters())
    for _ in range(2):  # the second call runs the cached compiled graph
        torch.manual_seed(3)
        eager = model(x)
        g_eager = torch.autograd.grad(eager.loss, params)
        torch.manual_seed(3)
        compiled = module.train_forward(x)
        g_comp = torch.autograd.grad(compiled.loss, params)
        # Inductor fuses and reorders float32 arithmetic: equal up to rounding, not bitwise.
        torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled.elbo, eager.elbo, rtol=1e-5, atol=1e-5)
        for a, b in zip(g_comp, g_eager, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # one compile of forward and backward: ~30-90 s on 2 cores
def test_the_first_compiled_call_has_no_graph_break_and_no_recompile() -> None:
    """Priming the compiled forward with one eager forward: traced on the first batch, the
    model's once-only data check, torch's first KL dispatch and the prior's cache each broke the
    graph (3 graphs instead of 1)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = VAE(
        GaussianEncoder(MLP([1, 4, 4], [8, 8]), 3),
        BernoulliLikelihood(MLP([3], [8, 8], [1, 4, 4]), [1, 4, 4]),
        [1, 4, 4],
        3,
    )
    module = GenerativeModule(model, compile=True)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    for _ in range(3):
        module.train_forward(x).loss.backward()
    assert model._values_checked
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    with pytest.raises(ValueError, match="binary data"):
        GenerativeModule(
            VAE(
                GaussianEncoder(MLP([1, 4, 4], [8, 8]), 3),
                BernoulliLikelihood(MLP([3], [8, 8], [1, 4, 4]), [1, 4, 4]),
                [1, 4, 4],
                3,
            ),
            compile=True,
        ).train_forward(torch.full((6, 1, 4, 4), 0.5))


def _tiny_vae() -> VAE:
    return VAE(
        GaussianEncoder(MLP([1, 4, 4], [8, 8]), 3),
        BernoulliLikelihood(MLP([3], [8, 8], [1, 4, 4]), [1, 4, 4]),
        [1, 4, 4],
        3,
    )


def test_compile_cpu_compiles_on_a_cpu_only() -> None:
    """``compile: cpu`` (the IWAE experiments' default): compiled where it was measured faster."""
    model = _tiny_vae()
    assert GenerativeModule(model, compile="cpu").train_forward is not model  # built, not run
    assert GenerativeModule(model, compile=False).train_forward is model
    on_gpu = GenerativeModule(model, compile="cpu")
    on_gpu._device = torch.device("cuda", 0)  # what .to("cuda") records; nothing runs here
    assert on_gpu.train_forward is model
    with pytest.raises(ValueError, match=r"compile must be true, false or cpu .*got 'gpu'"):
        GenerativeModule(model, compile="gpu")


def test_without_a_cpp_compiler_compile_cpu_trains_eager_and_compile_true_is_refused() -> None:
    """``compile: cpu`` is the IWAE experiments' default: on a machine without g++ it must not
    fail with inductor's error at the first step, and ``compile: true`` says what to install."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "no-such-c++-compiler")}):
        model = _tiny_vae()
        with pytest.warns(UserWarning, match=r"no C\+\+ compiler .*no-such-c\+\+-compiler.*eager"):
            assert GenerativeModule(model, compile="cpu").train_forward is model
        with pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler.*apt install g\+\+"):
            GenerativeModule(model, compile=True).train_forward


def test_the_iwae_experiments_compile_on_a_cpu_with_k20(tmp_path) -> None:
    from tests.conftest import compose_train

    for exp in ("iwae_vae_1layer", "iwae_vae_2layer"):
        cfg = compose_train([f"experiment={exp}"], tmp_path, tiny=False)
        assert cfg.module.compile == "cpu" and cfg.module.steps_per_batch == 20, exp


@pytest.mark.parametrize(
    "objective",
    [
        {"beta": 4.0, "warmup_steps": 100},
        {"capacity_max": 25.0, "capacity_gamma": 10.0, "capacity_steps": 100},
    ],
    ids=["beta-warmup", "capacity"],
)
def test_an_annealed_objective_compiles_once_for_every_step(objective: dict) -> None:
    """The warm-up's beta_t and the capacity C_t change every optimizer step; read as Python
    numbers inside the compiled forward they were guarded constants, so every step recompiled
    (dynamo's limit of 8, 4-5 s each on this CPU with inductor, then eager for the rest)."""
    from torch._dynamo.utils import counters

    from vaelab.objectives import ELBOObjective

    torch._dynamo.reset()
    counters.clear()
    model = _tiny_vae()
    model.objective = ELBOObjective(**objective)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # dynamo's guards, no C++
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))
    model(x)  # the once-only data check, as GenerativeModule's priming forward does
    for step in (0, 1, 2, 50, 99, 100, 1000):
        model.set_training_step(step)
        torch.manual_seed(step)
        eager = model(x).loss
        torch.manual_seed(step)
        assert torch.equal(compiled(x).loss, eager), step  # no inductor: the same arithmetic
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not set(model.objective.state_dict())  # checkpoints unchanged
    assert not list(ELBOObjective().buffers())  # a plain objective has none (DDP broadcasts them)
