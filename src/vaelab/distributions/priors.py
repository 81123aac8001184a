"""Priors p(z)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal


class StandardNormalPrior(nn.Module):
    """``N(0, I)`` over ``latent_dim`` dims; its parameters are buffers, so it follows ``.to(device)``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)

    def forward(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> Independent:
        loc = self.loc.expand(*batch_shape, self.latent_dim)
        scale = self.scale.expand(*batch_shape, self.latent_dim)
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)`` for ``z`` of any leading shape."""
        return self(z.shape[:-1]).log_prob(z)
