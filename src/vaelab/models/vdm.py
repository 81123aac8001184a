"""The variational diffusion model (VDM): the Markov hierarchical VAE's continuous-time limit.

Forward (inference) process, variance preserving, with a noise schedule ``gamma(t)`` increasing
on ``[0, 1]``::

    q(z_t | x) = N(alpha_t x, sigma_t^2 I),  alpha_t^2 = sigmoid(-gamma(t)),
    sigma_t^2 = sigmoid(gamma(t)),  SNR(t) = alpha_t^2 / sigma_t^2 = exp(-gamma(t)).

``x`` is the data in the model's scaled space ``[-1, 1]`` (binary pixels ``2x - 1``; 8-bit
pixels ``2 (k + 1/2) / 256 - 1``). Generative model: ``p(z_1) = N(0, I)``, ancestral steps
``p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t; t))`` with the noise-prediction network's
``x_hat = (z_t - sigma_t eps_hat(z_t; t)) / alpha_t``, and ``p(x | z_0)``
(``vaelab.distributions.diffusion.z0_decoder``) over the data's values.

The negative ELBO, in nats per example, is three named terms (``Terms.terms``):

- ``prior``: ``KL(q(z_1 | x) || N(0, I))``, analytic (``torch.distributions.kl_divergence``);
- ``reconstruction``: ``-E_{q(z_0 | x)} log p(x | z_0)``, one draw of ``z_0``;
- ``diffusion``: with ``timesteps=None`` (``T = infinity``) the continuous-time loss
  ``(1/2) E_{t ~ U(0, 1), eps} [gamma'(t) ||eps - eps_hat(z_t; t)||^2]`` (the same as
  ``-(1/2) E[SNR'(t) ||x - x_hat||^2]``); with ``timesteps=T`` the discrete-time loss
  ``(T/2) E_{i ~ U{1..T}, eps} [expm1(gamma(t_i) - gamma(s_i)) ||eps - eps_hat||^2]``,
  ``s_i = (i-1)/T``, ``t_i = i/T`` (the same as ``(T/2) E[(SNR(s) - SNR(t)) ||x - x_hat||^2]``).
  Either way one ``t`` per example, drawn with the low-discrepancy sampler
  ``t_b = (u + b / B) mod 1`` (one ``u ~ U[0, 1)`` per batch): unbiased for every example.

Units follow ``vaelab.models.base``: on binary data ``elbo`` bounds ``log p(x)`` in nats per
image. On dequantized 8-bit data (``(k + u) / 256``) the decoder gives a probability of the
integers ``k``; its piecewise-constant density on the dequantized ``y`` is ``256^D P(k)``, so
``elbo = -(prior + reconstruction + diffusion) + D ln 256`` bounds ``log p(y)`` and the
evaluator's bits/dim, ``(nll + D ln 256) / (D ln 2)``, is exactly ``-ELBO(k) / (D ln 2)``.

The network is conditioned on ``gamma(t)`` rescaled by the schedule's initial endpoints (not on
``t``), so for fixed endpoints the continuous-time ELBO does not depend on the schedule's
interior (Kingma et al., section 5.1; a test checks it).

Reference:
    Kingma, Salimans, Poole & Ho (2021), Variational Diffusion Models (eq. 13 discrete-time loss,
    eq. 17 continuous-time loss, appendix: learned monotone schedule, low-discrepancy sampler).
    Luo (2022), Understanding Diffusion Models: A Unified Perspective (diffusion as an MHVAE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.distributions.diffusion import DECODER_KINDS, z0_decoder
from vaelab.models.base import GenerativeModel, Terms
from vaelab.models.schedules import LearnedSchedule, NoiseSchedule
from vaelab.units import check_kind


def _floating(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


class VDM(GenerativeModel):
    """Variational diffusion model ``p(x) = int p(x | z_0) p(z_0:1) dz``, trained on its ELBO.

    Args:
        net: noise-prediction network ``eps_hat(z, t_in)``: ``(B, C, H, W), (B,) -> (B, C, H, W)``
            (``vaelab.nn.UNet`` or ``vaelab.nn.NoiseMLP``), ``t_in`` the rescaled ``gamma(t)``.
        data_shape: ``(C, H, W)``.
        schedule: a ``NoiseSchedule`` (``LearnedSchedule`` or ``LinearSchedule``).
        decoder: ``binary`` (data kind ``binary``: values {0, 1}) or ``discretized`` (data kind
            ``dequantized``: 8-bit images as ``(k + u) / 256``, a distribution over 256 values).
        timesteps: ``None`` (or 0) for the continuous-time model (``T = infinity``), else the
            number of steps ``T`` of the discrete-time model.
        sample_steps: ancestral sampling steps of the continuous-time model (the discrete-time
            model samples with its own ``T`` steps).
        prediction: ``eps`` (the network predicts the noise, the paper's) or
            ``binary_posterior`` (binary data: the network corrects the independent-pixel
            posterior mean; see ``eps_hat``).
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: Sequence[int],
        schedule: NoiseSchedule | None = None,
        decoder: str = "binary",
        timesteps: int | None = None,
        sample_steps: int = 200,
        prediction: str = "eps",
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if decoder not in DECODER_KINDS:
            raise ValueError(
                f"model.decoder={decoder!r}; choose binary (data=binarized_mnist) or "
                "discretized (8-bit data: data=mnist or data=cifar10)"
            )
        if timesteps is not None and (
            isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 0
        ):
            raise ValueError(
                f"model.timesteps={timesteps!r}; use a positive int T for the discrete-time "
                "model or null (or 0) for continuous time, e.g. model.timesteps=1000"
            )
        if prediction not in ("eps", "binary_posterior") or (
            prediction == "binary_posterior" and decoder != "binary"
        ):
            raise ValueError(
                f"model.prediction={prediction!r}; choose eps, or binary_posterior with "
                "model.decoder=binary"
            )
        self.prediction = prediction
        if int(sample_steps) < 1:
            raise ValueError(f"model.sample_steps must be >= 1, got {sample_steps}")
        self.net = net
        self.schedule = schedule if schedule is not None else LearnedSchedule()
        self.decoder = decoder
        self.timesteps = int(timesteps) if timesteps else None
        self.sample_steps = int(sample_steps)
        self._values_checked = False

    # -- data <-> model space ----------------------------------------------------------------
    def check_data(self, data_kind: str) -> None:
        want = DECODER_KINDS[self.decoder]
        kind = check_kind(data_kind)
        if kind != want:
            fix = {
                "binary": "for binary data use model.decoder=binary with data=binarized_mnist",
                "dequantized": "for 8-bit data use model.decoder=discretized with data=mnist "
                "(or data=cifar10)",
                "unit": "'unit' data (x / 255) has no discrete likelihood here: use "
                "data.dequantize=true with model.decoder=discretized",
            }[kind]
            raise ValueError(
                f"VDM with decoder={self.decoder!r} models {want!r} data, not {kind!r}: {fix}"
            )

    def to_values(self, x: Tensor) -> Tensor:
        """The data's discrete values: ``{0, 1}`` (binary) or the 8-bit ``k = floor(256 y)``."""
        if self.decoder == "binary":
            if not self._values_checked:
                bad = (x != 0) & (x != 1)
                if bool(bad.any()):
                    raise ValueError(
                        "VDM decoder=binary needs binary data in {0, 1}, got values such as "
                        f"{x[bad].flatten()[:3].tolist()}; use data=binarized_mnist, or "
                        "model.decoder=discretized with data=mnist"
                    )
                self._values_checked = True
            return x
        return torch.floor(_floating(x) * 256.0).clamp(0, 255)

    def scale(self, k: Tensor) -> Tensor:
        """Values to the model's space ``[-1, 1]``."""
        if self.decoder == "binary":
            return 2.0 * _floating(k) - 1.0
        return 2.0 * (_floating(k) + 0.5) / 256.0 - 1.0

    def unscale(self, x: Tensor) -> Tensor:
        """Model space back to data units (``[0, 1]``), for pictures."""
        return (x + 1.0) / 2.0

    def _log_jacobian(self) -> float:
        """``D ln 256`` for dequantized data (see the module docstring), else 0."""
        return self.num_dims * math.log(256.0) if self.decoder == "discretized" else 0.0

    # -- schedule ------------------------------------------------------------------------------
    @staticmethod
    def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)`` of the variance-preserving process at ``gamma``."""
        return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()

    def snr(self, t: Tensor) -> Tensor:
        """``SNR(t) = exp(-gamma(t))``."""
        return torch.exp(-self.schedule(t))

    def net_input(self, gamma: Tensor) -> Tensor:
        """The network's conditioning: ``gamma`` rescaled by the initial endpoints to ~[0, 1]."""
        s = self.schedule
        return (gamma - s.gamma_min) / (s.gamma_max - s.gamma_min)

    def eps_hat(self, z: Tensor, gamma: Tensor) -> Tensor:
        """``(B, C, H, W)`` predicted noise at ``z_t`` with ``gamma(t)`` of shape ``(B,)``.

        ``prediction=eps``: the network's output. ``prediction=binary_posterior`` (binary data):
        ``x_hat = tanh(alpha z / sigma^2 + f)``, ``f`` the network's output, and
        ``eps_hat = (z - alpha x_hat) / sigma``: at ``f = 0`` ``x_hat`` is ``E[x | z_t]`` for
        independent pixels equally likely +-1, so the network learns only what the pixels say
        about each other (the same loss and bound; a parametrisation of ``eps_hat``).
        """
        out = self.net(z, self.net_input(gamma))
        if self.prediction == "eps":
            return out
        view = (-1,) + (1,) * len(self.data_shape)
        a, s = self.alpha_sigma(gamma.view(view))
        x_hat = torch.tanh(a * z / s**2 + out)
        return (z - a * x_hat) / s

    # -- the three terms (nats per example) ------------------------------------------------------
    def prior_loss(self, x: Tensor) -> Tensor:
        """``KL(q(z_1 | x) || N(0, I))``: ``(B,)``; ``x`` in model space."""
        _, g1 = self.schedule.endpoints()
        a1, s1 = self.alpha_sigma(g1)
        q = Independent(Normal(a1 * x, s1.expand_as(x)), len(self.data_shape))
        p = Independent(Normal(torch.zeros_like(x), torch.ones_like(x)), len(self.data_shape))
        return kl_divergence(q, p)

    def reconstruction_loss(self, k: Tensor, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """``-log p(k | z_0)``, ``z_0 = alpha_0 x + sigma_0 eps``: ``(B,)``, one draw."""
        g0, _ = self.schedule.endpoints()
        a0, s0 = self.alpha_sigma(g0)
        eps = torch.randn_like(x) if eps is None else eps
        z0 = a0 * x + s0 * eps
        px = z0_decoder(z0, a0, s0, self.decoder, len(self.data_shape))
        return -px.log_prob(k if self.decoder == "binary" else k.long())

    def diffusion_loss(self, x: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        """The diffusion term at times ``t`` (``(B,)``, one per example), noise ``eps``: ``(B,)``.

        Its mean over ``t ~ U[0, 1)`` and ``eps ~ N(0, I)`` is the term of the ELBO (continuous
        or with ``self.timesteps`` steps, where ``t`` is mapped to step ``i = floor(t T) + 1``).
        """
        eps = torch.randn_like(x) if eps is None else eps
        if self.timesteps is None:
            gamma, dgamma = self.schedule.with_derivative(t)  # (B,), (B,)
            weight = 0.5 * dgamma
        else:
            T = self.timesteps
            i = torch.floor(t * T).clamp(0, T - 1) + 1  # (B,) in {1..T}
            ts = torch.stack([(i - 1) / T, i / T])  # (2, B): s, t
            gs = self.schedule(ts)
            gamma = gs[1]
            weight = 0.5 * T * torch.expm1(gs[1] - gs[0])
        a, s = self.alpha_sigma(gamma)
        view = (-1,) + (1,) * len(self.data_shape)
        z = a.view(view) * x + s.view(view) * eps  # (B, C, H, W)
        err = (eps - self.eps_hat(z, gamma)).float().pow(2).flatten(1).sum(1)  # (B,)
        return weight * err

    def low_discrepancy_times(
        self, n: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``t_b = (u + b / n) mod 1``, ``u ~ U[0, 1)``: ``(n,)``, each marginally uniform."""
        u = torch.rand((), device=device, dtype=dtype)
        return torch.remainder(u + torch.arange(n, device=device, dtype=dtype) / n, 1.0)

    def elbo_terms(self, x_data: Tensor, t: Tensor | None = None) -> dict[str, Tensor]:
        """``{prior, reconstruction, diffusion}``: ``(B,)`` nats each (the negative ELBO's parts)."""
        k = self.to_values(x_data)
        x = self.scale(k)  # (B, C, H, W) in [-1, 1]
        if t is None:
            t = self.low_discrepancy_times(x.shape[0], x.device, x.dtype)
        return {
            "prior": self.prior_loss(x),
            "reconstruction": self.reconstruction_loss(k, x),
            "diffusion": self.diffusion_loss(x, t),
        }

    # -- protocol ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Terms:
        """Terms for a batch ``x`` (B, C, H, W) in data units; ``loss`` is the mean negative ELBO."""
        terms = self.elbo_terms(x)
        neg = terms["prior"] + terms["reconstruction"] + terms["diffusion"]  # (B,)
        return Terms(loss=neg.mean(), elbo=self._log_jacobian() - neg, terms=terms)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int = 1) -> Tensor:
        """The ELBO (a lower bound on ``log p(x)``, not ``L_k``) averaged over ``num_samples``.

        Each of the ``k = num_samples`` draws takes its own noise and a time ``t_j = (u + j / k)
        mod 1`` (``u ~ U[0, 1)`` per example: stratified, so each draw is unbiased and their mean
        has less variance than ``k`` independent ones). Returns ``(B,)`` nats, in the units of
        ``forward``'s ``elbo``; the evaluator's ``nll`` is its negative, with the usual standard
        error over test images (which includes this Monte-Carlo noise).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        k = self.to_values(x)
        xs = self.scale(k)
        u = torch.rand(x.shape[0], device=x.device, dtype=xs.dtype)
        total = self.prior_loss(xs)
        rest = torch.zeros_like(total)
        for j in range(num_samples):
            t = torch.remainder(u + j / num_samples, 1.0)
            rest += self.reconstruction_loss(k, xs) + self.diffusion_loss(xs, t)
        return self._log_jacobian() - (total + rest / num_samples)

    @torch.no_grad()
    def sample(self, n: int, use_mean: bool = False, steps: int | None = None) -> Tensor:
        """``n`` ancestral samples in data units (``steps``: default ``T`` or ``sample_steps``).

        ``use_mean``: the mean of ``p(x | z_0)`` instead of a draw (probabilities for binary
        data, ``E[k + 1/2] / 256`` for 8-bit data), for image grids.
        """
        z = self.sample_latents(n, steps)
        return self._decode(z, use_mean)

    def sample_latents(
        self, n: int, steps: int | None = None, frames: int = 0
    ) -> Tensor | tuple[Tensor, list[tuple[float, Tensor, Tensor]]]:
        """``z_0`` of ``n`` ancestral chains; with ``frames > 0`` also ``[(t, z_t, x_hat)]``.

        ``p(z_s | z_t) = N(alpha_s / alpha_t (z_t - c sigma_t eps_hat), sigma_s^2 c)``,
        ``c = -expm1(gamma_s - gamma_t)``: ``q(z_s | z_t, x = x_hat)``.
        """
        steps = int(steps or self.timesteps or self.sample_steps)
        dev, dtype = self.device, self.schedule.gamma_0.dtype
        z = torch.randn(n, *self.data_shape, device=dev, dtype=dtype)
        keep = set()
        if frames > 0:
            keep = {round(i) for i in torch.linspace(steps, 1, frames).tolist()}
        trajectory = []
        for i in range(steps, 0, -1):
            ts = torch.tensor([(i - 1) / steps, i / steps], device=dev, dtype=dtype)
            g_s, g_t = self.schedule(ts).unbind()
            a_s, s_s = self.alpha_sigma(g_s)
            a_t, s_t = self.alpha_sigma(g_t)
            eps = self.eps_hat(z, g_t.expand(n))
            if i in keep:
                trajectory.append((i / steps, z.clone(), (z - s_t * eps) / a_t))
            c = -torch.expm1(g_s - g_t)
            z = a_s / a_t * (z - c * s_t * eps) + s_s * c.sqrt() * torch.randn_like(z)
        return (z, trajectory) if frames > 0 else z

    def _decode(self, z0: Tensor, use_mean: bool) -> Tensor:
        g0, _ = self.schedule.endpoints()
        a0, s0 = self.alpha_sigma(g0)
        px = z0_decoder(z0, a0, s0, self.decoder, len(self.data_shape))
        if self.decoder == "binary":
            return px.mean if use_mean else px.sample()
        probs = px.base_dist.probs  # (n, C, H, W, 256)
        if use_mean:
            values = torch.arange(256, device=z0.device, dtype=probs.dtype) + 0.5
            return (probs * values).sum(-1) / 256.0
        return (px.sample().float() + 0.5) / 256.0

    @torch.no_grad()
    def denoise(self, x_data: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_t, x_hat(z_t))`` for data ``x_data`` at times ``t`` (``(B,)``), in data units."""
        x = self.scale(self.to_values(x_data))
        gamma = self.schedule(t)
        a, s = self.alpha_sigma(gamma)
        view = (-1,) + (1,) * len(self.data_shape)
        z = a.view(view) * x + s.view(view) * torch.randn_like(x)
        x_hat = (z - s.view(view) * self.eps_hat(z, gamma)) / a.view(view)
        return self.unscale(z), self.unscale(x_hat)


__all__ = ["VDM"]
