"""Feature networks only (MLP, conv, ResNet blocks); no probability code."""

from vaelab.nn.mlp import (
    MLP,
    ConvDecoderNet,
    ConvEncoderNet,
    init_weights,
    make_activation,
    num_parameters,
)

__all__ = [
    "MLP",
    "ConvDecoderNet",
    "ConvEncoderNet",
    "init_weights",
    "make_activation",
    "num_parameters",
]
