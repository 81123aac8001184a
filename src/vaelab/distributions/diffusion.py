"""The variational diffusion model's data decoder ``p(x | z_0)`` over a finite set of values.

``p(x | z_0)`` factorises over sub-pixels; each is a distribution over the candidate values
``c_k`` (in the model's scaled space, ``[-1, 1]``) with probabilities proportional to
``N(z_0; alpha_0 c_k, sigma_0^2)`` (equivalently ``N(z_0 / alpha_0; c_k, sigma_0^2 / alpha_0^2)``).

- ``binary`` data, ``x in {0, 1}``, ``c = 2x - 1``: two values, a Bernoulli with logit
  ``log N(z_0; alpha_0, sigma_0^2) - log N(z_0; -alpha_0, sigma_0^2) = 2 alpha_0 z_0 / sigma_0^2``.
- 8-bit data, ``k in {0, ..., 255}``, ``c_k = 2 (k + 1/2) / 256 - 1``: a categorical over 256 values.

Both are proper distributions over their values (probabilities sum to one), so ``-log p`` is a
code length in nats.

Reference:
    Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models, appendix (the
    discretized decoder ``p(x | z_0)``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent

from vaelab.distributions.likelihoods import at_least_float32

#: the decoders by name, and the data kind each one models (``vaelab.units``)
DECODER_KINDS = {"binary": "binary", "discretized": "dequantized"}


def candidate_values(decoder: str, device: torch.device | None = None) -> Tensor:
    """The values ``c_k`` in the model's scaled space ``[-1, 1]``: 2 (binary) or 256 entries."""
    if decoder == "binary":
        return torch.tensor([-1.0, 1.0], device=device)
    if decoder == "discretized":
        return 2.0 * (torch.arange(256, device=device, dtype=torch.float32) + 0.5) / 256.0 - 1.0
    raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODER_KINDS)}")


def z0_decoder(
    z0: Tensor, alpha0: Tensor, sigma0: Tensor, decoder: str, event_dims: int = 3
) -> Independent:
    """``p(x | z_0)``: ``Independent`` over the last ``event_dims`` dims of ``z0``.

    Args:
        z0: ``(B, C, H, W)`` latent at ``t = 0``.
        alpha0: ``alpha_0`` (a scalar tensor or broadcastable).
        sigma0: ``sigma_0``.
        decoder: ``binary`` (values are 0/1 pixels) or ``discretized`` (values are the 8-bit
            integers 0..255, as a long or float tensor).
        event_dims: dims of one example.

    Returns:
        A distribution whose ``log_prob(k)`` is ``(B,)`` nats, ``k`` the pixel values
        (``{0, 1}`` or ``{0..255}``).
    """
    z0 = at_least_float32(z0)
    if decoder == "binary":
        logits = 2.0 * alpha0 * z0 / sigma0**2  # (B, C, H, W); up to ~1e6 at sigma_0 ~ 1e-3
        # torch's Bernoulli.log_prob (binary_cross_entropy_with_logits) is exact at such logits;
        # IndependentBernoulli's evaluation path (x l - softplus(l), summed) cancels 1e8-sized
        # sums in float32 and gave negative -log p.
        return Independent(Bernoulli(logits=logits, validate_args=False), event_dims)
    c = candidate_values(decoder, z0.device).to(z0.dtype)  # (K,)
    logits = -0.5 * ((z0[..., None] - alpha0 * c) / sigma0) ** 2  # (B, C, H, W, K)
    return Independent(Categorical(logits=logits, validate_args=False), event_dims)


__all__ = ["DECODER_KINDS", "candidate_values", "z0_decoder"]
