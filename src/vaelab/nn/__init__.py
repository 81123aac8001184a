"""Feature networks only (MLP, conv, ResNet blocks); no probability code."""

from vaelab.nn.mlp import (
    MLP,
    ConvDecoderNet,
    ConvEncoderNet,
    init_weights,
    make_activation,
    num_parameters,
)
from vaelab.nn.unet import NoiseMLP, UNet, timestep_embedding

__all__ = [
    "MLP",
    "ConvDecoderNet",
    "ConvEncoderNet",
    "NoiseMLP",
    "UNet",
    "init_weights",
    "make_activation",
    "num_parameters",
    "timestep_embedding",
]
