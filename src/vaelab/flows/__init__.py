"""Invertible transforms with log-dets (``forward``: data -> noise), preprocessing and s/t networks.

See ``vaelab.flows.base`` for the protocol; ``vaelab.models.realnvp`` builds RealNVP from these parts.
"""

from vaelab.flows.base import (
    CompositeTransform,
    IdentityTransform,
    NonFiniteLogDetError,
    Transform,
    raise_nonfinite,
    sum_except_batch,
)
from vaelab.flows.coupling import AffineCoupling, channel_mask, checkerboard_mask
from vaelab.flows.nets import MLPCouplingNet, ResNetCouplingNet, weight_norm_gains
from vaelab.flows.normalization import ActNorm, InvertibleBatchNorm
from vaelab.flows.preprocess import LogitTransform
from vaelab.flows.reshape import Flatten, MultiScale, Squeeze

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "CompositeTransform",
    "Flatten",
    "IdentityTransform",
    "InvertibleBatchNorm",
    "LogitTransform",
    "MLPCouplingNet",
    "MultiScale",
    "NonFiniteLogDetError",
    "ResNetCouplingNet",
    "Squeeze",
    "Transform",
    "channel_mask",
    "checkerboard_mask",
    "raise_nonfinite",
    "sum_except_batch",
    "weight_norm_gains",
]
