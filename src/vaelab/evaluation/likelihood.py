"""The importance-weighted bound ``L_k``, chunked, and the per-image figures of an evaluation batch.

Written once for every latent-variable model: a model exposes ``encode(x) -> q(z|x)`` and its log
importance weights ``log_weights(x, k, posterior) -> (k, B)`` (``log p(x, z_i) - log q(z_i | x)``
with ``z_i ~ q``); this module draws them chunk by chunk so ``k = 5000`` fits in memory and combines
them with one log-sum-exp over all ``k`` (never a mean of per-chunk bounds, which is smaller).
Flows report their exact ``log p(x)`` from ``forward``.

Precision: every reported figure is computed with autocast switched off (``full_precision``), so
log-likelihoods, KL terms, log weights and their log-sum-exp are float32 (float64 for a float64
model) whatever ``trainer.precision`` says. Training keeps its mixed precision.

Reference: Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, eq. 8.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vaelab.evaluation.stop import check_stop
from vaelab.evaluation.units import bits_per_dim, has_bits_per_dim
from vaelab.objectives import iwae_bound

if TYPE_CHECKING:  # pragma: no cover
    from vaelab.models.base import GenerativeModel, LatentVariableModel

# Decoder rows per L_k chunk. On the CPU a chunk's (rows x 784) float32 temporaries must stay under
# glibc's largest mmap threshold (32 MiB), or each chunk maps fresh pages and page-faults on every
# touch: 4096 rows made L_5000 23 % faster than 32768 on this project's machine (7.5 million page
# faults fewer per 200 images). A GPU wants large chunks.
CPU_CHUNK_ROWS = 1 << 12
CUDA_CHUNK_ROWS = 1 << 15


# Log importance weights kept at once before L_k is streamed: k * B <= 2**22 (16 MiB of float32;
# k = 5000 at batch 100 is 500,000) takes one log-sum-exp over all of them, as before; beyond it a
# running log-sum-exp (float64) keeps one chunk at a time.
LOG_WEIGHTS_KEPT = 1 << 22


def chunk_rows(configured: int | None, device: torch.device) -> int:
    """``configured``, or the default for ``device`` when it is ``None``."""
    if configured is not None:
        return int(configured)
    return CPU_CHUNK_ROWS if device.type == "cpu" else CUDA_CHUNK_ROWS


def sample_chunks(num_samples: int, batch_size: int, chunk_rows: int) -> list[int]:
    """Split ``num_samples`` importance samples into chunks of at most ``chunk_rows`` rows in total.

    A chunk of ``c`` samples costs ``c * batch_size`` decoder rows; this bounds peak memory.
    """
    per = max(1, chunk_rows // max(1, batch_size))
    return [min(per, num_samples - i) for i in range(0, num_samples, per)]


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Switch autocast off on ``device`` (reported figures are never computed in bf16/fp16)."""
    with torch.autocast(device.type, enabled=False):
        yield


def importance_weighted_bound(
    model: LatentVariableModel, x: Tensor, num_samples: int, rows: int | None = None
) -> Tensor:
    """``L_k`` with ``k = num_samples``: a ``(B,)`` lower bound on ``log p(x)`` in nats.

    ``q(z|x)`` is computed once; the ``k`` samples are drawn in chunks of at most ``rows`` decoder
    rows (``chunk_rows``: 4096 on the CPU, 32768 on a GPU by default), and the log-sum-exp runs
    over all ``k`` log weights at once, so the result does not depend on the chunking. Beyond
    ``k * B = LOG_WEIGHTS_KEPT`` the log-sum-exp is a running one (float64), so memory stays that
    of one chunk whatever ``k`` is. A SIGTERM stops it at the next chunk
    (:mod:`vaelab.evaluation.stop`).

    Reference: Burda et al. (2015), eq. 8.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    per = max(1, chunk_rows(rows, x.device) // max(1, x.shape[0]))  # as sample_chunks, lazily
    sizes = (min(per, num_samples - i) for i in range(0, num_samples, per))
    with full_precision(x.device):
        posterior = model.encode(x)
        if num_samples * x.shape[0] <= LOG_WEIGHTS_KEPT:
            chunks = []
            for c in sizes:
                check_stop()  # SIGTERM (vaelab.evaluation.stop)
                chunks.append(model.log_weights(x, c, posterior))  # (c, B)
            return iwae_bound(torch.cat(chunks, dim=0), dim=0)
        # Streamed: a running log-sum-exp in float64, one chunk alive at a time, so memory is
        # bounded by the chunk whatever k is (k = 1e8 grew to 17 GB when all were kept).
        acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        total = torch.full((x.shape[0],), -math.inf, dtype=acc, device=x.device)
        dtype = torch.float32
        for c in sizes:
            check_stop()
            log_w = model.log_weights(x, c, posterior)
            dtype = torch.promote_types(log_w.dtype, torch.float32)  # as iwae_bound reports it
            total = torch.logaddexp(total, torch.logsumexp(log_w.to(acc), dim=0))
            del log_w
        return (total - math.log(num_samples)).to(dtype)


def batch_figures(
    model: GenerativeModel, x: Tensor, num_samples: int, data_kind: str
) -> dict[str, Tensor]:
    """Every per-image figure of one evaluation batch: ``{name: (B,)}``, at least float32.

    The model's named terms (``elbo``, ``rate``, ``distortion``, ``rate/z1``, ...), ``loss`` (the
    batch's loss, repeated), and ``nll`` / ``bpd``: the exact ``-log p(x)`` for a model with
    ``exact_likelihood`` (from the same forward pass), ``-L_k`` with ``k = num_samples`` for a
    latent-variable model (none when ``num_samples`` is 0); ``bpd`` where the data kind has one.
    """
    with full_precision(x.device):
        terms = model(x)
        out = {name: v.detach().float() for name, v in terms.items().items()}
        out["loss"] = terms.loss.detach().float().expand(x.shape[0])
        nll = None
        if model.exact_likelihood:
            nll = -terms.elbo.detach().float()  # a flow's forward computed the exact log p(x)
        elif num_samples > 0:
            nll = -model.log_likelihood(x, num_samples).detach().float()
        if nll is not None:
            out["nll"] = nll
            if has_bits_per_dim(data_kind):  # not defined for "unit" (x / 255) data
                out["bpd"] = bits_per_dim(nll, model.num_dims, data_kind)
    return out


__all__ = [
    "CPU_CHUNK_ROWS",
    "CUDA_CHUNK_ROWS",
    "LOG_WEIGHTS_KEPT",
    "batch_figures",
    "chunk_rows",
    "full_precision",
    "importance_weighted_bound",
    "sample_chunks",
]
