"""The s/t networks of coupling layers: a weight-normalised ResNet (images) and MLP (flat vectors).

Both map ``in_channels -> out_channels`` (channels of an image or features of a vector) and
initialise their last layer's weight-norm gain and bias to zero, so every coupling starts as the
identity. Weight normalization is ``torch.nn.utils.parametrizations.weight_norm``; its gains
(``...parametrizations.weight.original0``) are what the paper's L2 penalty acts on
(``weight_norm_gains``).

Reference: Dinh, Sohl-Dickstein & Bengio (2016), Density estimation using Real NVP, sec. 4.1;
Salimans & Kingma (2016), Weight Normalization.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

GAIN_SUFFIX = "parametrizations.weight.original0"


def _wn(layer: nn.Module) -> nn.Module:
    return weight_norm(layer, name="weight", dim=0)


def _zero_last(layer: nn.Module) -> None:
    layer.parametrizations.weight.original0.data.zero_()
    if layer.bias is not None:
        layer.bias.data.zero_()


def weight_norm_gains(module: nn.Module) -> list[nn.Parameter]:
    """The weight-norm gain ``g`` of every weight-normalised layer in ``module``."""
    return [p for n, p in module.named_parameters() if n.endswith(GAIN_SUFFIX)]


class ResidualBlock(nn.Module):
    """Pre-activation block ``h + conv(relu(bn(conv(relu(bn(h))))))`` with weight-normed 3x3 convs."""

    def __init__(self, channels: int, batch_norm: bool = True) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

        self.body = nn.Sequential(
            norm(),
            nn.ReLU(),
            _wn(nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)),
            norm(),
            nn.ReLU(),
            _wn(nn.Conv2d(channels, channels, 3, padding=1)),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class ResNetCouplingNet(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H, W)``: 3x3 conv, ``num_blocks`` residual blocks,
    BN-ReLU, 3x3 conv (zero-initialised). All convs are weight-normalised.

    Args:
        in_channels: input channels.
        out_channels: output channels (``2 x`` the transformed channels: ``s_raw`` and ``t``).
        hidden_channels: feature maps (64 for CIFAR-10 in the paper).
        num_blocks: residual blocks (8 for CIFAR-10 in the paper).
        batch_norm: batch normalization inside the blocks (as in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 8,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.inp = _wn(nn.Conv2d(in_channels, hidden_channels, 3, padding=1))
        self.blocks = nn.Sequential(
            *[ResidualBlock(hidden_channels, batch_norm) for _ in range(num_blocks)]
        )
        self.out_norm = nn.BatchNorm2d(hidden_channels) if batch_norm else nn.Identity()
        self.out = _wn(nn.Conv2d(hidden_channels, out_channels, 3, padding=1))
        _zero_last(self.out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.inp(x))  # (B, hidden, H, W)
        return self.out(nn.functional.relu(self.out_norm(h)))


class MLPCouplingNet(nn.Module):
    """``(B, in_features) -> (B, out_features)``: ``num_layers`` weight-normed Linear+ReLU layers of
    width ``hidden``, then a zero-initialised weight-normed Linear.

    Args:
        in_features: input width.
        out_features: output width (``2 x`` the transformed features).
        hidden: hidden width.
        num_layers: hidden layers (>= 1).
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 1024, num_layers: int = 2
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers += [_wn(nn.Linear(width, hidden)), nn.ReLU()]
            width = hidden
        last = _wn(nn.Linear(width, out_features))
        _zero_last(last)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


__all__ = ["MLPCouplingNet", "ResNetCouplingNet", "ResidualBlock", "weight_norm_gains"]
