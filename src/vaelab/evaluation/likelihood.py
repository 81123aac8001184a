"""The per-image figures of an evaluation batch: the model's terms, ``nll`` and ``bpd``.

``nll`` is the exact ``-log p(x)`` for a flow (from ``forward``), ``-L_k`` for a latent-variable
model (``model.log_likelihood``, i.e. ``vaelab.objectives.importance_weighted_bound``, chunked).

Precision: every reported figure is computed with autocast switched off (``full_precision``), so
log-likelihoods, KL terms, log weights and their log-sum-exp are float32 (float64 for a float64
model) whatever ``trainer.precision`` says. Training keeps its mixed precision.
"""

from __future__ import annotations

from torch import Tensor

from vaelab.models.base import GenerativeModel, Terms
from vaelab.objectives import full_precision
from vaelab.units import bits_per_dim, has_bits_per_dim


def term_figures(
    terms: Terms, nll: Tensor | None, num_dims: int, data_kind: str
) -> dict[str, Tensor]:
    """The named per-image figures of one batch, ``{name: (B,)}`` in float32: the model's terms
    (``elbo``, ``rate``, ``distortion``, ``rate/z1``, ...) and, when ``nll`` (``-log p(x)`` or a
    bound on it, nats) is given, ``nll`` and ``bpd`` where the data kind has bits/dim. Training
    rows (batch means, ``vaelab.lit``) and evaluation (:func:`batch_figures`) both come from here.
    """
    out = {name: v.detach().float() for name, v in terms.items().items()}
    if nll is not None:
        out["nll"] = nll
        if has_bits_per_dim(data_kind):  # not defined for "unit" (x / 255) data
            out["bpd"] = bits_per_dim(nll, num_dims, data_kind)
    return out


def batch_figures(
    model: GenerativeModel, x: Tensor, num_samples: int, data_kind: str
) -> dict[str, Tensor]:
    """Every per-image figure of one evaluation batch: ``{name: (B,)}``, at least float32.

    :func:`term_figures` of the model's terms, ``loss`` (the batch's loss, repeated), and
    ``nll`` / ``bpd``: the exact ``-log p(x)`` for a model with ``exact_likelihood`` (from the
    same forward pass), ``-L_k`` with ``k = num_samples`` for a latent-variable model (none when
    ``num_samples`` is 0).
    """
    with full_precision(x.device):
        terms = model(x)
        nll = None
        if model.exact_likelihood:
            nll = -terms.elbo.detach().float()  # a flow's forward computed the exact log p(x)
        elif num_samples > 0:
            nll = -model.log_likelihood(x, num_samples).detach().float()
        out = term_figures(terms, nll, model.num_dims, data_kind)
        out["loss"] = terms.loss.detach().float().expand(x.shape[0])
    return out


__all__ = ["batch_figures", "term_figures"]
