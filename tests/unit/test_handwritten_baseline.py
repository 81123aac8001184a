"""The benchmark's hand-written baseline (benchmarks/handwritten.py) is honest: it imports nothing
from vaelab and computes the same objective as vaelab's models (so the speed ratios compare like
with like)."""

from __future__ import annotations

import ast
import sys

import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import handwritten

from vaelab.distributions import BernoulliLikelihood, GaussianEncoder
from vaelab.models import VAE, HierarchicalVAE
from vaelab.nn import MLP


def test_handwritten_arm_imports_no_vaelab_code() -> None:
    tree = ast.parse((REPO / "benchmarks" / "handwritten.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [m for m in names if m.split(".")[0] == "vaelab"], names


def _linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _copy(src: list[torch.nn.Linear], dst: list[torch.nn.Linear]) -> None:
    assert len(src) == len(dst)
    with torch.no_grad():
        for s, d in zip(src, dst, strict=True):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)


def test_handwritten_vae_loss_equals_vaelab_negative_elbo() -> None:
    torch.manual_seed(0)
    model = VAE(
        GaussianEncoder(MLP([1, 4, 4], [8, 8]), 3),
        BernoulliLikelihood(MLP([3], [8, 8], [1, 4, 4]), [1, 4, 4]),
        [1, 4, 4],
        3,
    )
    hand = handwritten.HandWrittenVAE(16, [(3, (8, 8))])
    _copy(_linears(model.encoder), _linears(hand.enc))
    _copy(_linears(model.decoder), _linears(hand.dec))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    torch.manual_seed(1)
    ours = model(x).loss
    torch.manual_seed(1)
    theirs = hand(x.reshape(5, -1))
    # vaelab adds 1e-5 to sigma (min_scale): equal to float32 noise plus that.
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_handwritten_two_layer_loss_equals_vaelab_hvae() -> None:
    torch.manual_seed(0)
    layers = [{"latent_dim": 4, "hidden": [8, 8]}, {"latent_dim": 2, "hidden": [6, 6]}]
    model = HierarchicalVAE([1, 4, 4], layers)
    hand = handwritten.HandWrittenVAE(16, [(4, (8, 8)), (2, (6, 6))])
    for t in range(2):
        _copy(_linears(model.encoders[t]), _linears(hand.enc[t]))
    _copy(_linears(model.conditional_priors[0]), _linears(hand.pri[0]))
    _copy(_linears(model.decoder), _linears(hand.dec))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    torch.manual_seed(1)
    ours = model(x).loss
    torch.manual_seed(1)
    theirs = hand(x.reshape(5, -1))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


# -- the VDM benchmark's hand-written arm (benchmarks/handwritten_vdm.py) --------------------------
def test_handwritten_vdm_imports_no_vaelab_code_and_computes_vaelabs_loss() -> None:
    import handwritten_vdm

    from vaelab.models import VDM
    from vaelab.models.schedules import LearnedSchedule
    from vaelab.nn import NoiseMLP

    tree = ast.parse((REPO / "benchmarks" / "handwritten_vdm.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [m for m in names if m.split(".")[0] == "vaelab"], names

    torch.manual_seed(0)
    schedule = LearnedSchedule(-6.0, 6.0, hidden=1024)
    with torch.no_grad():  # a nonlinear interior, so the derivative paths matter
        schedule.l2.weight.mul_(20.0)
        schedule.l3.weight.mul_(50.0)
        schedule.gamma_0.add_(0.3)
    model = VDM(
        NoiseMLP((1, 28, 28), [32, 32]), (1, 28, 28), schedule, prediction="binary_posterior"
    )
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the output layer starts at zero
    hand = handwritten_vdm.HandVDM([32, 32], 32, -6.0, 6.0)
    hand.net.load_state_dict(model.net.net.state_dict())
    with torch.no_grad():
        hand.gamma0.copy_(schedule.gamma_0)
        hand.raw.copy_(schedule.raw_width)
        hand.w1.copy_(schedule.l1.weight)
        hand.b1.copy_(schedule.l1.bias)
        hand.l2.load_state_dict(schedule.l2.state_dict())
        hand.w3.copy_(schedule.l3.weight)
    k = (torch.rand(16, 784, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    torch.manual_seed(5)
    ours = model(k.view(16, 1, 28, 28)).loss
    torch.manual_seed(5)
    theirs = hand.loss(k)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-4)
