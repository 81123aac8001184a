"""The Markovian hierarchical VAE (MHVAE): a chain of T diagonal-Gaussian latent layers.

Generative model (top-down), with ``z_0 = x``::

    p(x, z_1:T) = p(z_T) p(x | z_1) prod_{t=2..T} p(z_{t-1} | z_t),     p(z_T) = N(0, I)

Inference model (bottom-up, Markov)::

    q(z_1:T | x) = q(z_1 | x) prod_{t=2..T} q(z_t | z_{t-1})

Every Gaussian conditional (``q(z_t | .)`` and ``p(z_{t-1} | z_t)``) is a ``GaussianEncoder``;
``p(x|z_1)`` is one of the spine's likelihoods. ``T = 1`` is exactly ``vaelab.models.VAE``
(a test checks it).
The IWAE paper's two-layer model (784-200-200-[z1=100]-100-100-[z2=50], decoder mirrored) is
``layers=[{latent_dim: 100, hidden: [200, 200]}, {latent_dim: 50, hidden: [100, 100]}]``.

Reference:
    Luo (2022), Understanding Diffusion Models: A Unified Perspective (the MHVAE, eq. 23-25).
    Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders (2-layer architecture,
    active units).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.distributions import (
    BernoulliLikelihood,
    GaussianEncoder,
    GaussianLikelihood,
    Likelihood,
    StandardNormalPrior,
)
from vaelab.models.base import LatentVariableModel, Terms
from vaelab.nn import MLP, init_weights
from vaelab.objectives import ELBOObjective, iwae_bound, kl_or_estimate

LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
}
_SPEC_KEYS = ("latent_dim", "hidden", "input_dim")


class LayerSpec(NamedTuple):
    """One stochastic layer: the size of ``z_t`` and the hidden widths of ``q(z_t | z_{t-1})``.

    ``p(z_{t-1} | z_t)`` (or ``p(x | z_1)`` for ``t = 1``) uses the same widths reversed.
    """

    latent_dim: int
    hidden: tuple[int, ...]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_layers(layers: Sequence[Mapping[str, Any]], data_dim: int) -> list[LayerSpec]:
    """Check a layer list from config and return it as ``LayerSpec``s, bottom (z_1) first.

    Each entry is a mapping with ``latent_dim`` (positive int), ``hidden`` (non-empty list of
    positive ints) and optionally ``input_dim``, the size the layer's inference network reads:
    ``prod(data_shape)`` for ``layers[0]``, the previous layer's ``latent_dim`` otherwise. Writing
    ``input_dim`` is never required; when it is written it must chain.

    Raises:
        ValueError: naming the offending layer, e.g. ``layers[1]: latent_dim must be a positive
            int, got 0``.
    """
    if isinstance(layers, str | bytes | Mapping) or not isinstance(layers, Sequence):
        raise ValueError(
            f"layers must be a list of layer specs like [{{latent_dim: 50, hidden: [200, 200]}}], "
            f"got {type(layers).__name__}"
        )
    if len(layers) == 0:
        raise ValueError("layers: need at least one stochastic layer (T >= 1), got an empty list")
    specs: list[LayerSpec] = []
    prev_dim, prev_name = int(data_dim), "the data (prod(data_shape))"
    for i, spec in enumerate(layers):
        where = f"layers[{i}]"
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"{where}: expected a mapping with keys latent_dim and hidden, got {spec!r}"
            )
        unknown = sorted(str(k) for k in spec if k not in _SPEC_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(_SPEC_KEYS)}")
        if "latent_dim" not in spec:
            raise ValueError(f"{where}: latent_dim is missing")
        d = spec["latent_dim"]
        if not _is_int(d) or d <= 0:
            raise ValueError(f"{where}: latent_dim must be a positive int, got {d!r}")
        hidden = spec.get("hidden")
        if (
            hidden is None
            or isinstance(hidden, str | bytes)
            or not isinstance(hidden, Sequence)
            or len(hidden) == 0
            or not all(_is_int(h) and h > 0 for h in hidden)
        ):
            raise ValueError(
                f"{where}: hidden must be a non-empty list of positive ints, got {hidden!r}"
            )
        if spec.get("input_dim") is not None and spec["input_dim"] != prev_dim:
            raise ValueError(
                f"{where}: input_dim={spec['input_dim']!r} does not chain: this layer reads "
                f"{prev_name}, of size {prev_dim}"
            )
        specs.append(LayerSpec(int(d), tuple(int(h) for h in hidden)))
        prev_dim, prev_name = int(d), f"z{i + 1} (layers[{i}].latent_dim)"
    return specs


def _make_likelihood_factory(
    likelihood: str | Callable[..., Likelihood],
) -> Callable[..., Likelihood]:
    if isinstance(likelihood, str):
        try:
            return LIKELIHOODS[likelihood.lower()]
        except KeyError:
            raise ValueError(
                f"likelihood must be one of {sorted(LIKELIHOODS)} or a factory "
                f"(net, data_shape) -> Likelihood, got {likelihood!r}"
            ) from None
    if isinstance(likelihood, nn.Module) or not callable(likelihood):
        raise TypeError(
            "likelihood must be a name ('bernoulli', 'gaussian') or a factory called as "
            "likelihood(net=..., data_shape=...), e.g. a Hydra node with _partial_: true; "
            f"got {type(likelihood).__name__}"
        )
    return likelihood


class HierarchicalVAE(LatentVariableModel):
    """Markov chain of ``T >= 1`` Gaussian latent layers; ELBO (beta / warm-up / capacity) or L_k.

    ``forward`` returns the terms ``distortion = -log p(x|z_1)``, ``rate/z1 ... rate/zT``, their
    sum ``rate``, and ``elbo = -(distortion + rate)``, all per example in nats, from one sample of
    the whole chain ``z_1 ~ q(z_1|x), z_t ~ q(z_t|z_{t-1})``:

    - ``rate/zt`` for ``t < T`` is the single-sample estimate
      ``log q(z_t | z_{t-1}) - log p(z_t | z_{t+1})``. It is *not* an analytic KL:
      ``p(z_t|z_{t+1})`` is evaluated at a ``z_{t+1}`` drawn given this very ``z_t``, so
      integrating ``z_t`` out analytically would be biased.
    - ``rate/zT`` is the analytic ``KL(q(z_T | z_{T-1}) || N(0, I))`` at the sampled ``z_{T-1}``
      (``kl_or_estimate``), a lower-variance, still unbiased estimate of its expectation.

    The sum is an unbiased estimate of ``E_q[log q(z_1:T|x) - log p(z_1:T)]`` (the rate of Alemi
    et al.), so ``-elbo`` estimates the negative ELBO. beta, warm-up and capacity act on the total
    rate through the shared ``ELBOObjective``. With ``objective.iwae_samples = k > 1`` the loss is
    ``-L_k`` with one importance weight per sample of the whole chain, and the terms above are
    averaged over the k chains (the term ``iwae_bound_k{k}`` holds L_k).

    Args:
        data_shape: shape of one example, e.g. ``[1, 28, 28]``.
        layers: layer specs bottom-up, each ``{latent_dim: int, hidden: [int, ...]}`` (see
            ``parse_layers``). ``q(z_t|z_{t-1})`` is an MLP with ``hidden`` widths;
            ``p(z_{t-1}|z_t)`` and ``p(x|z_1)`` use the same layer's widths reversed.
        likelihood: ``"bernoulli"`` or ``"gaussian"`` (``GaussianLikelihood`` with its defaults),
            or a factory called as ``likelihood(net=..., data_shape=...)`` (a Hydra node with
            ``_partial_: true``, e.g. to set ``std``).
        activation: activation of every MLP (``tanh`` in Burda et al.).
        init: ``default``, ``glorot`` or ``normal``; applied to every Linear (Gaussian
            heads included).
        objective: ``ELBOObjective``; plain ELBO if None.
        scale_fn: ``exp`` or ``softplus`` for every Gaussian's standard deviation.
        eval_chunk_rows: bound on ``num_samples * batch`` rows per chunk in ``log_likelihood``
            (memory and speed knob; does not change the result). ``None``: 4096 on the CPU,
            32768 on a GPU (see ``vaelab.evaluation.chunk_rows``).

    Raises:
        ValueError: if ``layers`` is empty or a layer spec is malformed or does not chain; the
            message names the layer (``layers[i]``).

    Reference: Luo (2022), eq. 23-25; Burda et al. (2015), section 5 and appendix.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        layers: Sequence[Mapping[str, Any]],
        likelihood: str | Callable[..., Likelihood] = "bernoulli",
        activation: str = "tanh",
        init: str = "default",
        objective: ELBOObjective | None = None,
        scale_fn: str = "exp",
        eval_chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        if not self.data_shape or any(s <= 0 for s in self.data_shape):
            raise ValueError(
                f"data_shape must be a non-empty list of positive ints, got {data_shape}"
            )
        self.specs = parse_layers(layers, self.num_dims)
        self.latent_dims = tuple(s.latent_dim for s in self.specs)
        self.latent_dim = self.latent_dims[0]  # the layer encode() / decode_mean() work in
        self.layer_names = tuple(f"z{t + 1}" for t in range(len(self.specs)))
        self.objective = objective if objective is not None else ELBOObjective()
        self.eval_chunk_rows = eval_chunk_rows

        # encoders[t]: q(z_{t+1} | z_t), with z_0 = x.
        self.encoders = nn.ModuleList()
        in_shape: tuple[int, ...] = self.data_shape
        for spec in self.specs:
            net = MLP(in_shape, spec.hidden, None, activation)
            self.encoders.append(GaussianEncoder(net, spec.latent_dim, scale_fn=scale_fn))
            in_shape = (spec.latent_dim,)
        # conditional_priors[t]: p(z_{t+1} | z_{t+2}), t = 0..T-2 (0-based lists, 1-based names).
        self.conditional_priors = nn.ModuleList(
            GaussianEncoder(
                MLP((upper.latent_dim,), upper.hidden[::-1], None, activation),
                lower.latent_dim,
                scale_fn=scale_fn,
            )
            for lower, upper in zip(self.specs[:-1], self.specs[1:])
        )
        self.prior = StandardNormalPrior(self.latent_dims[-1])  # p(z_T)
        net = MLP((self.latent_dim,), self.specs[0].hidden[::-1], self.data_shape, activation)
        self.decoder = _make_likelihood_factory(likelihood)(net=net, data_shape=self.data_shape)
        if not isinstance(self.decoder, Likelihood):
            raise TypeError(
                f"likelihood factory returned {type(self.decoder).__name__}, not a Likelihood"
            )
        init_weights(self, init)

    @property
    def num_layers(self) -> int:
        """T, the number of stochastic layers."""
        return len(self.specs)

    # -- protocol -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Terms:
        """Terms for a batch ``x`` of shape ``(B, *data_shape)``; see the class docstring."""
        self._check_values(x)
        k = self.objective.iwae_samples
        if k == 1:
            s = self.objective.elbo_samples  # > 1: the ELBO averaged over s chains (not IW)
            qs, zs = self._infer(x, () if s == 1 else (s,))  # each z_t (B, d_t) or (s, B, d_t)
            distortion = -self.decoder(zs[0]).log_prob(x)  # (B,) or (s, B)
            rates = self._layer_rates(qs, zs, analytic_top=True)  # each (B,) or (s, B)
            if s > 1:
                distortion = distortion.mean(0)
                rates = {n: r.expand(s, x.shape[0]).mean(0) for n, r in rates.items()}
            rate = torch.stack(list(rates.values())).sum(0)
            loss = self.objective(distortion, rate)
            return Terms(
                loss=loss, elbo=-(distortion + rate), terms=self._terms(distortion, rates, rate)
            )
        qs, zs = self._infer(x, (k,))  # each z_t (k, B, d_t)
        log_px = self.decoder(zs[0]).log_prob(x)  # (k, B)
        sampled = self._layer_rates(qs, zs, analytic_top=False)  # each (k, B)
        log_w = log_px - torch.stack(list(sampled.values())).sum(0)  # (k, B)
        bound = iwae_bound(log_w, dim=0)  # (B,)
        # Diagnostics: single-chain estimates averaged over the k chains; top layer analytic.
        rates = {name: r.mean(0) for name, r in sampled.items()}
        top = self.layer_names[-1]
        kl_top = kl_or_estimate(qs[-1], self.prior(qs[-1].batch_shape), zs[-1])  # (B,) or (k, B)
        rates[top] = kl_top.reshape(-1, x.shape[0]).mean(0)
        distortion = -log_px.mean(0)
        rate = torch.stack(list(rates.values())).sum(0)
        terms = self._terms(distortion, rates, rate)
        terms[f"iwae_bound_k{k}"] = bound
        return Terms(loss=-bound.mean(), elbo=-(distortion + rate), terms=terms)

    def log_weights(
        self, x: Tensor, num_samples: int, posterior: Distribution | None = None
    ) -> Tensor:
        """``(k, B)`` log importance weights, one per sample of the whole chain:
        ``log p(x|z_1) + sum_t log p(z_t|z_{t+1}) + log p(z_T) - log q(z_1:T|x)``.

        ``posterior`` is ``q(z_1 | x)`` (``encode(x)``) when the caller already has it.
        ``log_likelihood`` (``L_k``, chunked) is inherited from ``LatentVariableModel``.

        Reference: Burda et al. (2015), eq. 8.
        """
        qs, zs = self._infer(x, (num_samples,), q1=posterior)
        log_px = self.decoder(zs[0]).log_prob(x)  # (k, B)
        rates = self._layer_rates(qs, zs, analytic_top=False)
        return log_px - torch.stack(list(rates.values())).sum(0)

    def sample(self, n: int, use_mean: bool = False) -> Tensor:
        """Ancestral sampling: ``z_T ~ N(0, I)``, ``z_{t-1} ~ p(z_{t-1}|z_t)``, ``x ~ p(x|z_1)``.

        ``use_mean=True`` returns the mean of ``p(x|z_1)`` at the sampled chain (for image grids);
        the latents are sampled either way.
        """
        z = self.prior((n,)).sample()  # (n, d_T)
        for p in reversed(self.conditional_priors):
            z = p(z).sample()  # (n, d_{t-1})
        px = self.decoder(z)
        return px.mean if use_mean else px.sample()

    # -- helpers used by callbacks and evaluation -----------------------------------------------
    def encode(self, x: Tensor) -> Distribution:
        """``q(z_1 | x)``, the layer next to the data (the one ``decode_mean`` reads)."""
        return self.encoders[0](x)

    def posterior_means(self, x: Tensor, num_samples: int = 1) -> dict[str, Tensor]:
        """Per-layer posterior means ``{"z1": (B, d_1), ..., "zT": (B, d_T)}`` for active units.

        ``z1``: the exact ``E_q[z_1 | x]``. Higher layers: the mean of ``q(z_t | z_{t-1})`` at
        ``z_{t-1}`` sampled down the chain, averaged over ``num_samples`` chains (a
        Rao-Blackwellised estimate of ``E_q[z_t | x]``). ``num_samples=1`` is what Burda et al.'s
        code does (``get_units_variances``); its sampling noise adds ``Var/num_samples`` to each
        unit's variance across ``x``, so it can only over-count active units of higher layers.

        Reference: Burda et al. (2015), section 5.2 (active units).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        q = self.encoders[0](x)
        means = {self.layer_names[0]: q.mean}  # (B, d_1)
        shape = torch.Size(() if num_samples == 1 else (num_samples,))
        z = q.sample(shape)  # (S?, B, d_1)
        for name, enc in zip(self.layer_names[1:], self.encoders[1:]):
            q = enc(z)
            means[name] = q.mean if num_samples == 1 else q.mean.mean(0)
            z = q.sample()
        return means

    # -- internals ------------------------------------------------------------------------------
    def _infer(
        self, x: Tensor, sample_shape: tuple[int, ...] = (), q1: Distribution | None = None
    ) -> tuple[list[Distribution], list[Tensor]]:
        """Sample the chain bottom-up: ``q(z_t | z_{t-1})`` and ``z_t``, each ``(*S, B, d_t)``."""
        q = self.encoders[0](x) if q1 is None else q1  # batch (B,)
        z = q.rsample(torch.Size(sample_shape))  # (*S, B, d_1)
        qs, zs = [q], [z]
        for enc in self.encoders[1:]:
            q = enc(z)  # batch (*S, B)
            z = q.rsample()  # (*S, B, d_t)
            qs.append(q)
            zs.append(z)
        return qs, zs

    def _layer_rates(
        self, qs: list[Distribution], zs: list[Tensor], analytic_top: bool
    ) -> dict[str, Tensor]:
        """Per-layer ``log q(z_t|.) - log p(z_t|.)`` at the sampled chain; top: KL if analytic."""
        rates: dict[str, Tensor] = {}
        last = len(qs) - 1
        for t, (name, q, z) in enumerate(zip(self.layer_names, qs, zs)):
            if t < last:
                p = self.conditional_priors[t](zs[t + 1])  # p(z_t | z_{t+1}), batch (*S, B)
                rates[name] = q.log_prob(z) - p.log_prob(z)
            elif analytic_top:
                rates[name] = kl_or_estimate(q, self.prior(q.batch_shape), z)
            else:
                rates[name] = q.log_prob(z) - self.prior.log_prob(z)
        return rates

    @staticmethod
    def _terms(distortion: Tensor, rates: dict[str, Tensor], rate: Tensor) -> dict[str, Tensor]:
        return {
            "distortion": distortion,
            **{f"rate/{n}": r for n, r in rates.items()},
            "rate": rate,
        }
