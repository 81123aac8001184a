"""Conditional Gaussians q(z | x) (and, reused, p(z_{t-1} | z_t) in the hierarchical VAE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal


class GaussianEncoder(nn.Module):
    """Diagonal Gaussian ``N(mu(h), diag(sigma(h)^2))`` with ``h = net(x)``.

    Args:
        net: feature network with an ``out_features`` attribute (e.g. ``vaelab.nn.MLP``).
        latent_dim: size of z.
        scale_fn: ``exp`` (sigma = exp(s), as in Burda et al. 2015) or ``softplus``.
        min_scale: floor added to sigma for numerical safety.

    ``forward(x)`` returns ``Independent(Normal(mu, sigma), 1)`` with batch shape ``x``'s leading dims.
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        scale_fn: str = "exp",
        min_scale: float = 1e-5,
    ) -> None:
        super().__init__()
        if scale_fn not in ("exp", "softplus"):
            raise ValueError(f"scale_fn must be 'exp' or 'softplus', got {scale_fn!r}")
        self.net = net
        self.latent_dim = int(latent_dim)
        self.scale_fn = scale_fn
        self.min_scale = float(min_scale)
        self.head = nn.Linear(int(net.out_features), 2 * self.latent_dim)

    def params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, each ``(…, latent_dim)``, float32 even under bf16/fp16 autocast."""
        h = self.head(self.net(x))  # (…, 2 * latent_dim)
        if h.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(h.device.type):
            h = h.float()  # mixed precision: build the Gaussian (log-probs, KL) in float32
        mu, s = h.chunk(2, dim=-1)
        sigma = torch.exp(s.clamp(max=20.0)) if self.scale_fn == "exp" else F.softplus(s)
        return mu, sigma + self.min_scale

    def forward(self, x: Tensor) -> Independent:
        mu, sigma = self.params(x)
        return Independent(Normal(mu, sigma, validate_args=False), 1, validate_args=False)
