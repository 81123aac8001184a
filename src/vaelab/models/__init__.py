"""GenerativeModel implementations."""

from vaelab.models.base import GenerativeModel, Terms
from vaelab.models.hvae import HierarchicalVAE
from vaelab.models.vae import VAE

__all__ = ["VAE", "GenerativeModel", "HierarchicalVAE", "Terms"]

from vaelab.models.realnvp import FlowModel, RealNVP, RealNVPMLP

__all__ += ["FlowModel", "RealNVP", "RealNVPMLP"]

from vaelab.models.vdm import VDM

__all__ += ["VDM"]
