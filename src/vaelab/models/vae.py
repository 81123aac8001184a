"""The variational autoencoder, with beta / warm-up / capacity and the IWAE bound as options.

References:
    Kingma & Welling (2013), Auto-Encoding Variational Bayes.
    Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.distributions import Distribution

from vaelab.distributions import (
    GaussianEncoder,
    Likelihood,
    StandardNormalPrior,
)
from vaelab.models.base import LatentVariableModel, Terms
from vaelab.nn import init_weights
from vaelab.objectives import ELBOObjective, iwae_bound, kl_or_estimate

__all__ = ["VAE"]


class VAE(LatentVariableModel):
    """``p(x, z) = p(z) p(x|z)``, ``q(z|x)`` Gaussian; trained on the ELBO (or L_k, or beta/capacity).

    Args:
        encoder: ``q(z|x)``, e.g. ``GaussianEncoder``.
        decoder: ``p(x|z)``, a ``Likelihood``.
        data_shape: (C, H, W) of one example.
        latent_dim: size of z (the prior is N(0, I) of this size unless ``prior`` is given).
        objective: ``ELBOObjective`` (beta, warm-up, capacity, ``iwae_samples``); plain ELBO if None.
        prior: ``p(z)``; defaults to ``StandardNormalPrior(latent_dim)``.
        init: ``default``, ``glorot`` or ``normal`` (``vaelab.nn.init_weights``), applied to every
            Linear and convolution of the model: encoder and decoder networks and the encoder's
            Gaussian head alike (set ``model.init``; the networks' own ``init`` follows it).
        eval_chunk_rows: bound on ``num_samples * batch`` decoder rows per chunk in
            ``log_likelihood`` (memory and speed knob; does not change the result). ``None``:
            4096 on the CPU, 32768 on a GPU.
    """

    def __init__(
        self,
        encoder: GaussianEncoder,
        decoder: Likelihood,
        data_shape: Sequence[int],
        latent_dim: int,
        objective: ELBOObjective | None = None,
        prior: StandardNormalPrior | None = None,
        eval_chunk_rows: int | None = None,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = int(latent_dim)
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior if prior is not None else StandardNormalPrior(self.latent_dim)
        self.objective = objective if objective is not None else ELBOObjective()
        self.eval_chunk_rows = eval_chunk_rows
        if getattr(encoder, "latent_dim", self.latent_dim) != self.latent_dim:
            raise ValueError(
                f"encoder.latent_dim={encoder.latent_dim} does not match latent_dim={self.latent_dim}"
            )
        if tuple(decoder.data_shape) != self.data_shape:
            raise ValueError(
                f"decoder.data_shape={decoder.data_shape} does not match data_shape={self.data_shape}"
            )
        init_weights(self, init)  # heads included (the networks' own init cannot reach them)

    # -- protocol -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Terms:
        """Terms for a batch ``x`` of shape (B, C, H, W)."""
        self._check_values(x)
        qz = self.encoder(x)  # batch (B,), event (D_z,)
        k = self.objective.iwae_samples
        if k == 1:
            s = self.objective.elbo_samples  # > 1: the ELBO averaged over s samples (not IW)
            z = qz.rsample() if s == 1 else qz.rsample((s,))  # (B, D_z) or (s, B, D_z)
            distortion = -self.decoder(z).log_prob(x)  # (B,) or (s, B)
            rate = kl_or_estimate(qz, self.prior(qz.batch_shape), z)  # (B,) or (s, B)
            if s > 1:
                distortion, rate = distortion.mean(0), rate.expand_as(distortion).mean(0)
            loss = self.objective(distortion, rate)
            return Terms(
                loss=loss, elbo=-(distortion + rate), terms={"distortion": distortion, "rate": rate}
            )
        log_w, log_px = self._log_weights(x, qz, k)  # (k, B) each
        bound = iwae_bound(log_w, dim=0)  # (B,)
        distortion = -log_px.mean(0)
        rate = kl_or_estimate(qz, self.prior(qz.batch_shape))
        return Terms(
            loss=-bound.mean(),
            elbo=-(distortion + rate),
            terms={"distortion": distortion, "rate": rate, f"iwae_bound_k{k}": bound},
        )

    def sample(self, n: int, use_mean: bool = False) -> Tensor:
        """``n`` draws from p(x) (or the decoder means, ``use_mean=True``, for image grids)."""
        z = self.prior((n,)).sample()
        px = self.decoder(z)
        return px.mean if use_mean else px.sample()

    # -- what evaluation reads (vaelab.models.base.LatentVariableModel) ------------------------
    def encode(self, x: Tensor) -> Distribution:
        """``q(z | x)``, batch shape ``(B,)``."""
        return self.encoder(x)

    def log_weights(
        self, x: Tensor, num_samples: int, posterior: Distribution | None = None
    ) -> Tensor:
        """``(k, B)`` log importance weights ``log p(x, z_i) + log p(z_i) - log q(z_i | x)``."""
        qz = self.encoder(x) if posterior is None else posterior
        return self._log_weights(x, qz, num_samples)[0]

    def posterior_means(self, x: Tensor) -> dict[str, Tensor]:
        """``{"z": E_q[z | x]}``, shape (B, latent_dim): what active-unit counting reads.

        Reference: Burda et al. (2015), section 5.2 (active units).
        """
        return {"z": self.encoder(x).mean}

    def _log_weights(self, x: Tensor, qz: Distribution, k: int) -> tuple[Tensor, Tensor]:
        """``log p(x, z_i) - log q(z_i | x)`` and ``log p(x | z_i)`` for k samples: each (k, B)."""
        z = qz.rsample((k,))  # (k, B, D_z)
        log_px = self.decoder(z).log_prob(x)  # (k, B): x (B, …) broadcasts against (k, B, …)
        log_w = log_px + self.prior.log_prob(z) - qz.log_prob(z)
        return log_w, log_px
