"""The discrete-time variational diffusion model as the Markov chain that Bit-Swap codes.

A VDM with ``T`` steps (``model.timesteps=T``, binary decoder) is a Markov hierarchical VAE
with ``T + 1`` latent layers ``x <- z_0 <- z_{1/T} <- ... <- z_1``, each the size of the image:

- inference: ``q(z_0 | x) = N(alpha_0 (2x - 1), sigma_0^2)``, then
  ``q(z_t | z_s) = N(alpha_t / alpha_s z_s, -sigma_t^2 expm1(gamma_s - gamma_t))``, ``s = t - 1/T``;
- generative: ``p(z_1) = N(0, I)``, ``p(z_s | z_t)`` the model's ancestral step, and
  ``p(x | z_0)`` the Bernoulli with logit ``2 alpha_0 z_0 / sigma_0^2``.

``DiffusionChain`` presents these with ``LatentChain``'s interface (``posterior``,
``conditional_prior``, ``likelihood_probs``, ``prior_marginals``, ``latent_dims``), in float64,
so ``vaelab.compression.encode`` / ``decode`` code it unchanged. Every layer is coded on
``2^prior_prec`` buckets, so the rate is the discretised model's -ELBO plus discretisation costs,
which grow with the number of layers (the VDM paper's bits-back demonstration used its own
finer discretisation).

Reference:
    Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models (section 6, bits-back).
    Kingma, Abbeel & Ho (2019), Bit-Swap.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from vaelab.compression.chain import LatentChain, NotCompressibleError, model_fingerprint


class DiffusionChain(nn.Module):
    """A float64 copy of a discrete-time binary ``VDM`` with ``LatentChain``'s interface.

    Layer ``j`` (0-based, as in ``LatentChain``) is ``z`` at time ``j / T``; layer ``T`` is ``z_1``.

    Raises:
        NotCompressibleError: not a VDM, continuous time, or not the binary decoder.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        kind = type(model).__name__
        if not callable(getattr(model, "sample_latents", None)) or not hasattr(model, "schedule"):
            raise NotCompressibleError(f"{kind} is not a diffusion model (vaelab.models.VDM)")
        if model.timesteps is None:
            raise NotCompressibleError(
                "a continuous-time VDM has infinitely many latent layers: code a discrete-time "
                "one (trained with model.timesteps=T)"
            )
        if model.decoder != "binary":
            raise NotCompressibleError(
                "the chain coder codes binary images: train the VDM with model.decoder=binary "
                "on data=binarized_mnist"
            )
        self.data_shape = tuple(int(s) for s in model.data_shape)
        self.fingerprint = model_fingerprint(model)
        self.model = copy.deepcopy(model).double().eval()
        self.T = int(model.timesteps)
        d = 1
        for s in self.data_shape:
            d *= s
        self.latent_dims = (d,) * (self.T + 1)
        with torch.no_grad():
            times = torch.arange(self.T + 1, dtype=torch.float64) / self.T
            self.gammas = self.model.schedule(times)  # (T + 1,)

    @property
    def num_layers(self) -> int:
        return self.T + 1

    @property
    def num_dims(self) -> int:
        return self.latent_dims[0]

    def _as(self, g: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.alpha_sigma(g)

    @torch.no_grad()
    def posterior(self, t: int, below: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of layer ``t`` given the one below (``x`` for ``t = 0``): ``(b, D)``."""
        below = below.reshape(below.shape[0], -1).double()
        if t == 0:
            a0, s0 = self._as(self.gammas[0])
            return a0 * (2 * below - 1), s0.expand_as(below)
        g_s, g_t = self.gammas[t - 1], self.gammas[t]
        (a_s, _), (a_t, s_t) = self._as(g_s), self._as(g_t)
        sigma = s_t * torch.sqrt(-torch.expm1(g_s - g_t))
        return a_t / a_s * below, sigma.expand_as(below)

    @torch.no_grad()
    def conditional_prior(self, t: int, above: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of ``p(layer t | layer t + 1)``: the model's ancestral step."""
        z = above.reshape(above.shape[0], *self.data_shape).double()
        g_s, g_t = self.gammas[t], self.gammas[t + 1]
        (a_s, s_s), (a_t, s_t) = self._as(g_s), self._as(g_t)
        eps = self.model.eps_hat(z, g_t.expand(z.shape[0]))
        c = -torch.expm1(g_s - g_t)
        mu = a_s / a_t * (z - c * s_t * eps)
        return mu.reshape(z.shape[0], -1), (s_s * c.sqrt()).expand(z.shape[0], self.num_dims)

    @torch.no_grad()
    def likelihood_probs(self, z0: Tensor) -> Tensor:
        """``(b, *data_shape)`` float64 Bernoulli means of ``p(x | z_0)``."""
        a0, s0 = self._as(self.gammas[0])
        z0 = z0.reshape(z0.shape[0], *self.data_shape).double()
        return torch.sigmoid(2 * a0 * z0 / s0**2)

    # The same ancestral fit as the VAE chains' (equal-mass buckets of a Gaussian per dimension).
    prior_marginals = LatentChain.prior_marginals


__all__ = ["DiffusionChain"]
