"""GenerativeModel implementations."""

from vaelab.models.base import GenerativeModel, Terms
from vaelab.models.hvae import HierarchicalVAE
from vaelab.models.realnvp import FlowModel, RealNVP, RealNVPMLP
from vaelab.models.vae import VAE
from vaelab.models.vdm import VDM

__all__ = [
    "VAE",
    "VDM",
    "FlowModel",
    "GenerativeModel",
    "HierarchicalVAE",
    "RealNVP",
    "RealNVPMLP",
    "Terms",
]
