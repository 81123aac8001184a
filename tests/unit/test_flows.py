"""Invertible transforms: round trips, log-dets against autograd Jacobians (float64), error paths."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from vaelab.flows import (
    ActNorm,
    AffineCoupling,
    CompositeTransform,
    Flatten,
    IdentityTransform,
    InvertibleBatchNorm,
    LogitTransform,
    MLPCouplingNet,
    MultiScale,
    NonFiniteLogDetError,
    ResNetCouplingNet,
    Squeeze,
    Transform,
    channel_mask,
    checkerboard_mask,
    raise_nonfinite,
    weight_norm_gains,
)

RTOL, ATOL = 1e-9, 1e-9


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall when other jobs share the CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Move every parameter and running statistic off its (often identity) initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return module


def resnet(c_in: int, c_out: int) -> nn.Module:
    return ResNetCouplingNet(c_in, c_out, hidden_channels=4, num_blocks=1)


def mlp(d_in: int, d_out: int) -> nn.Module:
    return MLPCouplingNet(d_in, d_out, hidden=8, num_layers=1)


def initialized_actnorm(c: int) -> ActNorm:
    t = ActNorm(c).double()
    t(torch.randn(16, c, 3, 3, dtype=torch.float64) * 2 + 1)  # data-dependent init (train mode)
    return t


def small_multiscale() -> MultiScale:
    lvl0 = CompositeTransform(
        [
            AffineCoupling((2, 4, 4), checkerboard_mask((2, 4, 4), 0), resnet),
            InvertibleBatchNorm(2),
            Squeeze(),
            AffineCoupling((8, 2, 2), channel_mask((8, 2, 2), 1), resnet),
            ActNorm(8),
        ]
    )
    lvl1 = CompositeTransform([AffineCoupling((4, 2, 2), checkerboard_mask((4, 2, 2), 1), resnet)])
    return MultiScale([lvl0, lvl1], (2, 4, 4))


# (name, factory, event shape, input sampler)
CASES = {
    "coupling_checkerboard": (
        lambda: AffineCoupling((2, 4, 4), checkerboard_mask((2, 4, 4), 0), resnet),
        (2, 4, 4),
    ),
    "coupling_checkerboard_odd": (
        lambda: AffineCoupling((1, 3, 3), checkerboard_mask((1, 3, 3), 1), resnet),
        (1, 3, 3),
    ),
    "coupling_channel": (
        lambda: AffineCoupling((4, 2, 2), channel_mask((4, 2, 2), 0), resnet),
        (4, 2, 2),
    ),
    "coupling_channel_parity1_odd_c": (
        lambda: AffineCoupling((3, 2, 2), channel_mask((3, 2, 2), 1), resnet),
        (3, 2, 2),
    ),
    "coupling_flat": (lambda: AffineCoupling((6,), checkerboard_mask((6,), 1), mlp), (6,)),
    "squeeze": (Squeeze, (2, 4, 4)),
    "flatten": (lambda: Flatten((2, 2, 3)), (2, 2, 3)),
    "batchnorm_eval": (lambda: InvertibleBatchNorm(3), (3, 2, 2)),
    "batchnorm_flat_eval": (lambda: InvertibleBatchNorm(5), (5,)),
    "actnorm": (lambda: initialized_actnorm(3), (3, 2, 2)),
    "identity": (IdentityTransform, (2, 3)),
    "multiscale": (small_multiscale, (2, 4, 4)),
    "composite": (
        lambda: CompositeTransform(
            [
                AffineCoupling((2, 4, 4), checkerboard_mask((2, 4, 4), 1), resnet),
                InvertibleBatchNorm(2),
                Squeeze(),
                AffineCoupling((8, 2, 2), channel_mask((8, 2, 2), 0), resnet),
                Flatten((8, 2, 2)),
                AffineCoupling((32,), checkerboard_mask((32,), 0), mlp),
            ]
        ),
        (2, 4, 4),
    ),
}
LOGIT_CASES = {
    "logit_paper": (lambda: LogitTransform(0.05), (2, 3, 2)),
    "logit_symmetric": (lambda: LogitTransform(0.05, symmetric=True), (2, 3, 2)),
    "logit_alpha0": (lambda: LogitTransform(0.0), (6,)),
}
ALL = {**CASES, **LOGIT_CASES}


def build(name: str) -> tuple[Transform, tuple[int, ...], torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = ALL[name]
    t = factory().double()
    randomize(t, seed=1)
    t.eval()
    if name in LOGIT_CASES:
        x = torch.rand(5, *shape, dtype=torch.float64) * 0.98 + 0.01  # in (0, 1)
    else:
        x = torch.randn(5, *shape, dtype=torch.float64)
    return t, shape, x


@pytest.mark.parametrize("name", sorted(ALL))
def test_inverse_of_forward_and_logdets_cancel(name: str) -> None:
    t, _, x = build(name)
    y, ld_f = t(x)
    x_back, ld_i = t.inverse(y)
    assert ld_f.shape == (x.shape[0],) and ld_f.dtype == torch.float64
    torch.testing.assert_close(x_back, x, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ld_f + ld_i, torch.zeros_like(ld_f), rtol=0, atol=1e-9)
    # and the other way round: forward(inverse(y)) = y
    y2, _ = t(t.inverse(y)[0])
    torch.testing.assert_close(y2, y, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_logdet_matches_autograd_jacobian(name: str) -> None:
    t, shape, x = build(name)
    _, ld = t(x)
    for i in range(2):
        xi = x[i : i + 1]

        def f(v: torch.Tensor, t: Transform = t) -> torch.Tensor:
            return t(v.reshape(1, *shape))[0].reshape(-1)

        jac = jacobian(f, xi.reshape(-1))
        d = math.prod(shape)
        assert jac.shape == (d, d)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(ld[i], logabsdet, rtol=1e-8, atol=1e-8)


def test_coupling_is_not_trivial_after_randomize() -> None:
    """Guard against vacuous Jacobian tests: the randomized couplings really change the input."""
    t, _, x = build("coupling_checkerboard")
    y, ld = t(x)
    assert (y - x).abs().max() > 1e-2
    assert ld.abs().min() > 1e-3
    keep = checkerboard_mask((2, 4, 4), 0).bool()
    torch.testing.assert_close(y[:, keep], x[:, keep], rtol=0, atol=0)  # pass-through is exact


def test_fresh_coupling_starts_as_identity() -> None:
    c = AffineCoupling((2, 4, 4), checkerboard_mask((2, 4, 4), 0), resnet)
    x = torch.randn(3, 2, 4, 4)
    y, ld = c(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ld, torch.zeros(3))


def test_masks() -> None:
    m = checkerboard_mask((2, 3, 3), 0)
    assert m[0, 0, 0] == 1 and m[0, 0, 1] == 0 and m[1, 1, 1] == 1
    torch.testing.assert_close(checkerboard_mask((2, 3, 3), 1), 1 - m)
    cm = channel_mask((4, 2, 2), 0)
    assert cm[:2].eq(1).all() and cm[2:].eq(0).all()
    torch.testing.assert_close(channel_mask((4, 2, 2), 1), 1 - cm)
    assert checkerboard_mask((4,), 0).tolist() == [1, 0, 1, 0]
    c = AffineCoupling((4, 2, 2), cm, resnet)
    assert c.split and c.net.inp.in_channels == 2 and c.net.out.out_channels == 4
    c = AffineCoupling((2, 2, 2), checkerboard_mask((2, 2, 2)), resnet)
    assert not c.split and c.net.inp.in_channels == 2 and c.net.out.out_channels == 4


def test_squeeze_layout() -> None:
    x = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 8, 2, 2)
    # channel (2i + j) * C + c holds sub-pixel (i, j) of input channel c
    torch.testing.assert_close(y[0, 0], x[0, 0, 0::2, 0::2])
    torch.testing.assert_close(y[0, 1], x[0, 1, 0::2, 0::2])
    torch.testing.assert_close(y[0, 2], x[0, 0, 0::2, 1::2])
    torch.testing.assert_close(y[0, 7], x[0, 1, 1::2, 1::2])
    assert Squeeze().output_shape((3, 32, 32)) == (12, 16, 16)


def test_logit_matches_closed_form() -> None:
    a = 0.05
    y = torch.tensor([[0.0, 0.25, 0.5, 0.999]], dtype=torch.float64)
    z, ld = LogitTransform(a)(y)
    p = a + (1 - a) * y
    torch.testing.assert_close(z, torch.log(p / (1 - p)))
    expected = (math.log(1 - a) - torch.log(p) - torch.log1p(-p)).sum()
    torch.testing.assert_close(ld[0], expected)
    zs, _ = LogitTransform(a, symmetric=True)(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(
        zs, torch.tensor([[math.log(a / (1 - a)), math.log((1 - a) / a)]]).double()
    )


def test_batchnorm_train_mode_normalizes_and_tracks_running_stats() -> None:
    torch.manual_seed(0)
    bn = InvertibleBatchNorm(3, momentum=0.5)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5.0
    y, ld = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-3, rtol=0)
    var = x.var(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(ld, (-0.5 * torch.log(var + bn.eps)).sum().expand(64) * 16)
    torch.testing.assert_close(bn.running_mean, 0.5 * x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * var)
    bn.eval()
    before = bn.running_mean.clone()
    bn(x)
    torch.testing.assert_close(bn.running_mean, before)  # eval mode does not update


def test_actnorm_initializes_from_first_batch_only() -> None:
    torch.manual_seed(0)
    an = ActNorm(2)
    x = torch.randn(128, 2, 3, 3) * 4 + 2
    y, _ = an(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), correction=0), torch.ones(2), atol=1e-4, rtol=0)
    assert bool(an.initialized)
    bias = an.bias.detach().clone()
    an(x * 10)
    torch.testing.assert_close(an.bias.detach(), bias)
    an2 = ActNorm(2)
    an2.load_state_dict(an.state_dict())
    an2(x * 10)  # already initialized via the checkpoint: must not re-initialize
    torch.testing.assert_close(an2.bias.detach(), bias)


def test_weight_norm_and_zero_init_of_nets() -> None:
    net = ResNetCouplingNet(3, 6, hidden_channels=8, num_blocks=2)
    gains = weight_norm_gains(net)
    assert len(gains) == 1 + 2 * 2 + 1
    assert net(torch.randn(2, 3, 4, 4)).abs().max() == 0
    assert len(weight_norm_gains(MLPCouplingNet(4, 8, hidden=16, num_layers=2))) == 3


def test_multiscale_shapes() -> None:
    ms = small_multiscale()
    assert ms.out_shapes == [(4, 2, 2), (4, 2, 2)]
    assert ms.output_shape((2, 4, 4)) == (32,)
    z, _ = ms(torch.randn(3, 2, 4, 4))
    assert z.shape == (3, 32)


# -- bad input -------------------------------------------------------------------------------


def test_mask_that_does_not_fit_fails_at_construction() -> None:
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4, 4\) does not fit inputs of shape"):
        AffineCoupling((3, 4, 4), checkerboard_mask((2, 4, 4)), resnet)
    with pytest.raises(ValueError, match="all ones"):
        AffineCoupling((2, 2, 2), torch.ones(2, 2, 2), resnet)
    with pytest.raises(ValueError, match="only 0 and 1"):
        AffineCoupling((2, 2, 2), torch.full((2, 2, 2), 0.5), resnet)
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_mask((1, 4, 4))


def test_wrong_input_shapes_are_refused() -> None:
    c = AffineCoupling((2, 4, 4), checkerboard_mask((2, 4, 4)), resnet)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 2, 4, 4\)"):
        c(torch.randn(1, 2, 4, 6))
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match="even"):
        Squeeze().output_shape((1, 5, 4))
    with pytest.raises(ValueError, match="expected input"):
        InvertibleBatchNorm(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        MultiScale([IdentityTransform(), IdentityTransform()], (1, 4, 4))
    with pytest.raises(TypeError, match="not a Transform"):
        CompositeTransform([nn.Linear(2, 2)])  # type: ignore[list-item]


def test_nonfinite_logdet_names_the_transform() -> None:
    flow = CompositeTransform(
        [
            LogitTransform(0.05),
            AffineCoupling((1, 2, 2), checkerboard_mask((1, 2, 2)), resnet),
            Squeeze(),
            AffineCoupling((4, 1, 1), channel_mask((4, 1, 1)), resnet),
        ]
    )
    with torch.no_grad():
        flow[3].scale.fill_(float("nan"))
    x = torch.rand(2, 1, 2, 2) * 0.9
    _, ld = flow(x)
    assert not torch.isfinite(ld).all()
    with pytest.raises(NonFiniteLogDetError, match=r"first in transforms\.3: AffineCoupling\("):
        raise_nonfinite(flow, x)
    # a NaN input makes the logit non-finite: the first culprit is the logit
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLogDetError, match=r"transforms\.0: LogitTransform\(alpha=0.05"):
        raise_nonfinite(flow, x)


def test_bf16_autocast_keeps_logdets_float32() -> None:
    torch.manual_seed(0)
    c = AffineCoupling(
        (2, 4, 4),
        checkerboard_mask((2, 4, 4)),
        partial(ResNetCouplingNet, hidden_channels=8, num_blocks=1),
    )
    randomize(c)
    x = torch.randn(4, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ld = c(x)
    assert ld.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.isfinite(ld).all()
