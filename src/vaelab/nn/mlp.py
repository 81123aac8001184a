"""Feature networks: MLPs and a small conv encoder/decoder pair. No probability code here."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``tanh``, ``relu``, ``elu``, ``gelu``, ``silu``, ...)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


def init_weights(module: nn.Module, scheme: str) -> None:
    """Initialise every Linear/Conv weight: ``default`` (PyTorch's), ``glorot``, or ``normal``.

    ``glorot`` is Xavier-uniform with zero biases (Burda et al. 2015); ``normal`` is N(0, 0.01^2)
    (Kingma & Welling 2013).
    """
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            if scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                raise ValueError(f"unknown init {scheme!r}; choose default, glorot or normal")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _prod(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


class MLP(nn.Module):
    """Flatten the trailing ``in_shape`` dims, apply Linear+activation layers, optionally reshape.

    Leading dims are kept, so ``(S, B, *in_shape) -> (S, B, *out_shape)`` works for sample stacks.

    Args:
        in_shape: trailing input shape, e.g. ``[1, 28, 28]`` or ``[50]``.
        hidden: widths of the hidden layers (each followed by the activation).
        out_shape: if given, a final Linear to ``prod(out_shape)`` (no activation) reshaped to it;
            if ``None`` the output is the last hidden layer (``out_features`` wide).
        activation: name of the activation.
        init: ``default``, ``glorot`` or ``normal`` (see ``init_weights``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int] = (200, 200),
        out_shape: Sequence[int] | None = None,
        activation: str = "tanh",
        init: str = "default",
    ) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = None if out_shape is None else tuple(int(s) for s in out_shape)
        layers: list[nn.Module] = []
        width = _prod(self.in_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), make_activation(activation)]
            width = int(h)
        if self.out_shape is not None:
            layers.append(nn.Linear(width, _prod(self.out_shape)))
            width = _prod(self.out_shape)
        if not layers:
            raise ValueError("MLP needs at least one hidden layer or an out_shape")
        self.net = nn.Sequential(*layers)
        self.out_features = width
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.in_shape)]
        h = self.net(x.reshape(*lead, -1))
        if self.out_shape is not None:
            h = h.reshape(*lead, *self.out_shape)
        return h


class ConvEncoderNet(nn.Module):
    """Strided conv feature extractor: ``(…, C, H, W) -> (…, out_features)``.

    Each block halves H and W (``H`` and ``W`` must be divisible by ``2 ** len(channels)``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        out_features: int = 256,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in in_shape)
        self.in_shape = (c, h, w)
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(
                f"ConvEncoderNet: input {h}x{w} is not divisible by 2**{len(channels)}={factor}; "
                "use fewer conv blocks or another image size"
            )
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, int(ch), 4, stride=2, padding=1), make_activation(activation)]
            c = int(ch)
        layers += [nn.Flatten(), nn.Linear(c * (h // factor) * (w // factor), out_features)]
        layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        self.out_features = int(out_features)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *self.in_shape)).reshape(*lead, self.out_features)


class ConvDecoderNet(nn.Module):
    """Mirror of ``ConvEncoderNet``: ``(…, in_features) -> (…, *out_shape)`` via transposed convs."""

    def __init__(
        self,
        in_features: int,
        out_shape: Sequence[int],
        channels: Sequence[int] = (64, 32),
        hidden: int = 256,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        c_out, h, w = (int(s) for s in out_shape)
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(
                f"ConvDecoderNet: output {h}x{w} is not divisible by 2**{len(channels)}={factor}"
            )
        self.in_features = int(in_features)
        self.out_shape = (c_out, h, w)
        self._start = (int(channels[0]), h // factor, w // factor)
        layers: list[nn.Module] = [
            nn.Linear(self.in_features, hidden),
            make_activation(activation),
            nn.Linear(hidden, math.prod(self._start)),
            make_activation(activation),
            nn.Unflatten(1, self._start),
        ]
        chans = [int(c) for c in channels] + [c_out]
        for i in range(len(channels)):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        return self.net(z.reshape(-1, self.in_features)).reshape(*lead, *self.out_shape)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "MLP",
    "ConvDecoderNet",
    "ConvEncoderNet",
    "init_weights",
    "make_activation",
    "num_parameters",
]
