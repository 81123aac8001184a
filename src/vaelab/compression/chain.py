"""A trained latent-variable model seen as the Markov chain that bits-back coding walks.

``x <- z_1 <- z_2 <- ... <- z_T``: ``p(z_T) = N(0, I)``, Gaussian conditional priors
``p(z_t | z_{t+1})``, a Bernoulli likelihood ``p(x | z_1)``; inference ``q(z_1 | x)``,
``q(z_t | z_{t-1})``, all diagonal Gaussians. The VAE is the chain with ``T = 1``; the Markov
hierarchical VAE is the chain as it stands. Anything else (a Gaussian likelihood, a flow) is
refused with an error that names the problem.

The chain runs a float64 copy of the model's networks (see ``LatentChain``), so the probabilities
the coder sees are computed the same way on both sides (see ``vaelab.compression.bbans``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vaelab.distributions import BernoulliLikelihood, GaussianEncoder, StandardNormalPrior


class NotCompressibleError(ValueError):
    """The model cannot be used for bits-back coding of binary images."""


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of the model's weights and buffers: names, dtypes, shapes and bytes.

    Written into every compressed file and checked on decompression, so decoding with different
    weights fails loudly instead of producing wrong images.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LatentChain(nn.Module):
    """The pieces of a VAE / Markov HVAE that bits-back coding needs, in float64.

    Args:
        model: a ``vaelab.models.VAE`` or ``vaelab.models.HierarchicalVAE`` (or any model with the
            same modules: ``encoder``/``encoders``, ``conditional_priors``, ``decoder``, ``prior``).

    Raises:
        NotCompressibleError: the model has no latent chain (a flow), its likelihood is not
            Bernoulli, or its inference / prior networks are not diagonal Gaussians.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        kind = type(model).__name__
        decoder = getattr(model, "decoder", None)
        if hasattr(model, "encoders"):
            encoders: Sequence[nn.Module] = list(model.encoders)
            priors: Sequence[nn.Module] = list(getattr(model, "conditional_priors", []))
        elif hasattr(model, "encoder"):
            encoders, priors = [model.encoder], []
        else:
            encoders = []
        if decoder is None or not encoders:
            raise NotCompressibleError(
                f"{kind} has no latent variables (no encoder and decoder): bits-back coding needs "
                "a latent-variable model with a Bernoulli likelihood, such as model=vae or "
                "model=hvae trained on data=binarized_mnist. A flow's exact log p(x) would need a "
                "discretised flow coder, which vaelab does not have."
            )
        if not isinstance(decoder, BernoulliLikelihood):
            raise NotCompressibleError(
                f"{kind} has a {type(decoder).__name__} likelihood; vaelab-compress codes binary "
                "images with a Bernoulli likelihood p(x|z) only. Train with the Bernoulli decoder "
                "(model=vae or model=hvae with likelihood=bernoulli) on data=binarized_mnist."
            )
        for i, enc in enumerate([*encoders, *priors]):
            if not isinstance(enc, GaussianEncoder):
                raise NotCompressibleError(
                    f"{kind}: latent network {i} is a {type(enc).__name__}, not a GaussianEncoder; "
                    "bits-back coding here discretises diagonal-Gaussian latents only"
                )
        if len(priors) != len(encoders) - 1:
            raise NotCompressibleError(
                f"{kind}: {len(encoders)} latent layers need {len(encoders) - 1} conditional "
                f"priors p(z_t|z_(t+1)), found {len(priors)}"
            )
        prior = getattr(model, "prior", None)
        if not isinstance(prior, StandardNormalPrior):
            raise NotCompressibleError(
                f"{kind}: the top prior is {type(prior).__name__}, not N(0, I); the buckets are "
                "equal-mass buckets of the standard normal"
            )
        self.model_name = kind
        self.data_shape = tuple(int(s) for s in model.data_shape)
        self.fingerprint = model_fingerprint(model)
        # A float64 copy, in eval mode: the model's own weights stay untouched.
        self.encoders = nn.ModuleList(copy.deepcopy(e) for e in encoders).double().eval()
        self.conditional_priors = nn.ModuleList(copy.deepcopy(p) for p in priors).double().eval()
        self.decoder = copy.deepcopy(decoder).double().eval()
        self.latent_dims = tuple(int(e.latent_dim) for e in self.encoders)

    @property
    def num_layers(self) -> int:
        return len(self.encoders)

    @property
    def num_dims(self) -> int:
        n = 1
        for s in self.data_shape:
            n *= s
        return n

    @torch.no_grad()
    def posterior(self, t: int, below: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of ``q(z_{t+1} | z_t)`` (0-based ``t``; ``below`` is x for ``t = 0``)."""
        return self.encoders[t].params(below)

    @torch.no_grad()
    def conditional_prior(self, t: int, above: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of ``p(z_{t+1} | z_{t+2})`` (0-based ``t < T - 1``)."""
        return self.conditional_priors[t].params(above)

    @torch.no_grad()
    def prior_marginals(
        self, num_samples: int = 4096, seed: int = 0
    ) -> list[tuple[Tensor, Tensor]]:
        """Per-dimension ``(mean, std)`` of the prior marginals ``p(z_t)``, ``t = 1..T-1``.

        By ancestral sampling from ``p(z_T) = N(0, I)`` through the conditional priors, with
        numpy's seeded PCG64 normals (the same numbers on every platform) and one batch of
        ``num_samples`` per layer: ``mean = E[mu]``, ``std^2 = E[sigma^2] + Var[mu]``. The lower
        layers' buckets are equal-mass buckets of ``N(mean, std^2)``: equal-mass N(0, 1) buckets
        are far too wide where ``p(z_1 | z_2)`` puts its mass away from 0 (on the 2-layer IWAE
        model the pixel term rose from 132 to 153 bits/image with them).
        """
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB0C]))
        z = torch.from_numpy(rng.standard_normal((num_samples, self.latent_dims[-1])))
        fits = []
        for t in reversed(range(self.num_layers - 1)):
            mu, sigma = self.conditional_prior(t, z)  # (S, d_t)
            loc = mu.mean(0)
            scale = torch.sqrt((sigma**2).mean(0) + mu.var(0, unbiased=False))
            fits.append((loc, scale))
            z = mu + sigma * torch.from_numpy(rng.standard_normal(tuple(mu.shape)))
        return fits[::-1]

    @torch.no_grad()
    def likelihood_probs(self, z1: Tensor) -> Tensor:
        """``(B, *data_shape)`` float64 Bernoulli means of ``p(x | z_1)``."""
        return self.decoder(z1).base_dist.probs
