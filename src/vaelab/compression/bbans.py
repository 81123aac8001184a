"""Bits-back coding with ANS (BB-ANS) and its Bit-Swap ordering, on constriction's ANS coder.

One image ``x`` with a one-layer model, on a stack (ANS) coder::

    encode: pop z ~ Q(z|x) (the bits back), push x with P(x|z), push z with P(z)
    decode: pop z with P(z), pop x with P(x|z), push z with Q(z|x)

so each image costs ``-log P(x|z) - log P(z) + log Q(z|x)`` bits, whose mean is the negative
ELBO of the discretised model. For the Markov chain ``x <- z_1 <- ... <- z_T`` there are two
orders (``CoderSettings.order``):

- ``"bbans"``: pop z_1, ..., z_T from the posteriors, then push x | z_1, z_1 | z_2, ..., z_T.
  Before its first push it pops every layer, so it needs initial bits for all layers at once.
- ``"bitswap"``: pop z_1 | x, push x | z_1, pop z_2 | z_1, push z_1 | z_2, ..., push z_T.
  Each pop is followed by a push, so the initial bits it needs are those of one layer.

With one layer the two orders are the same code.

**Blocks.** Images are coded in blocks of ``block_size``: a block is treated as one "image" whose
latents and pixels are coded together (the model factorises over images, so this is still exact
bits-back coding of the block). Blocks keep every network call batched on *both* sides: decoding
must push image i's bits back before it can pop image i-1's latents, so an image-at-a-time
decoder could only call the networks one image at a time.

**Why encoder and decoder see the same probabilities.** Every probability handed to the coder is
computed (1) in float64 by a float64 copy of the networks (``LatentChain``), (2) from inputs that
are bit-identical on both sides (the binary pixels, or bucket centres looked up from integer bucket
indices), (3) one block at a time, with the same block shapes and the same code on both sides, so
the same kernels run on the same operands in the same order; (4) then rounded to integer counts
(``discretize``) that constriction's 24-bit model reproduces exactly. Deterministic CPU kernels
therefore give identical counts. Across machines or library versions this is not guaranteed, so
the compressed file carries a sha256 of the images and the decoder checks it (and that the stack
returns exactly to its initial words): a mismatch is an error, never silently wrong images.

**Initial bits.** The stream starts from ``initial_words`` seeded pseudo-random 32-bit words (the
papers' "initial bits"), enough for the first block's pops. The words the coder never touched stay
a prefix of the final stack; they are regenerated from the seed on decoding instead of being
stored, so the file holds only what the coder wrote plus the initial bits it consumed.

References:
    Townsend, Bird & Barber (2019), Practical Lossless Compression with Latent Variables using
    Bits Back Coding (BB-ANS).
    Kingma, Abbeel & Ho (2019), Bit-Swap: Recursive Bits-Back Coding for Lossless Compression with
    Hierarchical Latent Variables.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaelab.compression._coder import constriction
from vaelab.compression.chain import LatentChain
from vaelab.compression.discretize import (
    Buckets,
    bernoulli_counts,
    check_precisions,
    coder_pmf,
    gaussian_counts,
    information_bits,
)

ORDERS = ("bbans", "bitswap")
BUCKETS = ("prior", "standard")


@dataclass(frozen=True)
class CoderSettings:
    """How the stream is coded; written into the file header and needed to decode it.

    Attributes:
        order: ``"bbans"`` or ``"bitswap"`` (the same code for one latent layer).
        prior_prec: ``2**prior_prec`` equal-mass buckets per latent dimension (papers: 8).
        latent_prec: precision in bits of the posterior and conditional-prior bucket masses
            (papers: 12-14).
        obs_prec: precision in bits of the Bernoulli pixel probabilities (papers: 14-16).
        block_size: images per coding block (see the module docstring); larger blocks batch the
            networks more and need more initial bits.
        seed: seed of the initial pseudo-random words.
        buckets: ``"standard"``: equal-mass buckets of N(0, 1) in every layer (Townsend et al.);
            ``"prior"``: the top layer's as before, and each lower layer's of equal mass under a
            per-dimension Gaussian fit to its prior marginal ``p(z_t)`` (see
            ``LatentChain.prior_marginals``). The same for a one-layer model.
    """

    order: str = "bitswap"
    prior_prec: int = 8
    latent_prec: int = 14
    obs_prec: int = 16
    block_size: int = 100
    seed: int = 0
    buckets: str = "prior"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        check_precisions(self.prior_prec, self.latent_prec, self.obs_prec)
        if self.buckets not in BUCKETS:
            raise ValueError(f"buckets must be one of {BUCKETS}, got {self.buckets!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Encoded:
    """A compressed stream and what was measured while making it (bits are exact counts).

    Attributes:
        payload: the uint32 words to store: the final stack minus its untouched initial prefix.
        stripped_words: length of that prefix (regenerated from the seed on decoding).
        initial_words: number of seeded initial words the stream started from.
        initial_bits_used: initial bits the coder consumed (initial stack size minus the smallest
            stack size reached), the papers' "initial bits".
        net_bits: growth of the stack, final minus initial size in bits: the code length with the
            initial bits excluded.
        push_bits / pop_bits: ``sum -log2 P`` of every pushed / popped symbol under the coder's
            quantised models; ``push_bits - pop_bits`` is the ideal ``net_bits``.
        layer_bits: the same per model term (``x``, ``z1``, ... pushed; ``q_z1``, ... popped).
    """

    payload: np.ndarray
    stripped_words: int
    initial_words: int
    num_images: int
    image_shape: tuple[int, ...]
    settings: CoderSettings
    initial_bits_used: float
    net_bits: float
    push_bits: float
    pop_bits: float
    seconds: float
    buckets_sha256: str = ""
    layer_bits: dict[str, float] = field(default_factory=dict)

    @property
    def payload_bits(self) -> int:
        return 32 * int(self.payload.size)


class _Stack:
    """constriction's AnsCoder with the three kinds of models used here, and bookkeeping."""

    def __init__(self, words: np.ndarray, settings: CoderSettings, buckets: list[Buckets]) -> None:
        c = constriction()
        self.coder = c.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        self.categorical = c.stream.model.Categorical(perfect=False)
        self.buckets = buckets  # one per latent layer, z_1 first
        self.top = c.stream.model.Uniform(buckets[-1].n)
        self.s = settings
        self.start_bits = self.coder.num_valid_bits()
        self.min_bits = self.start_bits
        self.min_words = self.coder.num_words()
        self.bits: dict[str, float] = {}

    def _count(self, name: str, bits: float) -> None:
        self.bits[name] = self.bits.get(name, 0.0) + bits

    def _after_pop(self) -> None:
        self.min_bits = min(self.min_bits, self.coder.num_valid_bits())
        self.min_words = min(self.min_words, self.coder.num_words())

    # Latents on the buckets (posteriors, conditional priors): counts at latent_prec bits.
    def pop_latent(self, t: int, mu: Tensor, sigma: Tensor, name: str) -> np.ndarray:
        counts = gaussian_counts(mu, sigma, self.buckets[t], self.s.latent_prec)
        idx = self.coder.decode(self.categorical, coder_pmf(counts))
        self._after_pop()
        self._count(name, -information_bits(counts, idx))
        return idx

    def push_latent(self, t: int, idx: np.ndarray, mu: Tensor, sigma: Tensor, name: str) -> None:
        counts = gaussian_counts(mu, sigma, self.buckets[t], self.s.latent_prec)
        self.coder.encode_reverse(idx, self.categorical, coder_pmf(counts))
        self._count(name, information_bits(counts, idx))

    def values(self, t: int, idx: np.ndarray) -> Tensor:
        """Bucket centres ``(b, d_t)`` of layer ``t``'s bucket indices."""
        return self.buckets[t].values(idx)

    # The top prior: uniform over the 2**prior_prec equal-mass buckets (exactly prior_prec bits).
    def pop_top(self, n: int, name: str) -> np.ndarray:
        idx = self.coder.decode(self.top, n)
        self._after_pop()
        self._count(name, -float(self.s.prior_prec * n))
        return idx

    def push_top(self, idx: np.ndarray, name: str) -> None:
        self.coder.encode_reverse(idx, self.top)
        self._count(name, float(self.s.prior_prec * idx.size))

    # Pixels: Bernoulli counts at obs_prec bits (a 2-symbol categorical, exact; see discretize).
    def push_pixels(self, x: np.ndarray, probs: Tensor) -> None:
        counts = bernoulli_counts(probs, self.s.obs_prec)
        self.coder.encode_reverse(x, self.categorical, coder_pmf(counts))
        self._count("x", information_bits(counts, x))

    def pop_pixels(self, probs: Tensor) -> np.ndarray:
        counts = bernoulli_counts(probs, self.s.obs_prec)
        x = self.coder.decode(self.categorical, coder_pmf(counts))
        self._after_pop()
        self._count("x", -information_bits(counts, x))
        return x


def layer_buckets(chain: LatentChain, settings: CoderSettings) -> list[Buckets]:
    """The buckets of every latent layer (z_1 first) for ``settings.buckets``."""
    pp, dims = settings.prior_prec, chain.latent_dims
    if settings.buckets == "standard" or chain.num_layers == 1:
        return [Buckets(pp, d) for d in dims]
    fits = chain.prior_marginals()
    return [Buckets(pp, d, loc, scale) for d, (loc, scale) in zip(dims[:-1], fits)] + [
        Buckets(pp, dims[-1])
    ]


def buckets_digest(buckets: list[Buckets]) -> str:
    """sha256 (hex) of every layer's bucket centres: the decoder checks it before decoding."""
    h = hashlib.sha256()
    for b in buckets:
        h.update(b.centres.contiguous().numpy().tobytes())
    return h.hexdigest()


def initial_stack(seed: int, num_words: int) -> np.ndarray:
    """``num_words`` seeded pseudo-random uint32 words in [1, 2**32): the initial bits."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBB]))
    return rng.integers(1, 1 << 32, size=int(num_words), dtype=np.uint32)


def default_initial_words(chain: LatentChain, settings: CoderSettings) -> int:
    """Enough words for one block's pops before any push (each popped latent costs <= latent_prec)."""
    bits = settings.block_size * sum(chain.latent_dims) * settings.latent_prec
    return math.ceil(bits / 32) + 4


def check_binary(images: Tensor | np.ndarray, data_shape: tuple[int, ...]) -> np.ndarray:
    """``images`` as a uint8 ``(N, *data_shape)`` array of 0/1; ``ValueError`` naming the problem."""
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim != 1 + len(data_shape) or tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(
            f"images must have shape (N, {', '.join(map(str, data_shape))}) for this model, got "
            f"{tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("no images to compress (N = 0)")
    bad = (x != 0) & (x != 1)
    if bad.any():
        raise ValueError(
            "bits-back coding with a Bernoulli likelihood needs binary images in {0, 1}, but the "
            f"images hold values such as {np.unique(x[bad])[:3].tolist()}; binarize them first "
            "(data=binarized_mnist)"
        )
    return x.astype(np.uint8)


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _encode_block(st: _Stack, chain: LatentChain, xb: np.ndarray, order: str) -> None:
    x = torch.from_numpy(xb).to(torch.float64)  # (b, C, H, W)
    x_sym = xb.reshape(-1).astype(np.int32)
    T = chain.num_layers
    if order == "bbans":
        idx, zs, below = [], [], x
        for t in range(T):  # pop z_1 | x, z_2 | z_1, ..., z_T | z_(T-1)
            i = st.pop_latent(t, *chain.posterior(t, below), name=f"q_z{t + 1}")
            idx.append(i)
            zs.append(st.values(t, i))
            below = zs[-1]
        st.push_pixels(x_sym, chain.likelihood_probs(zs[0]))
        for t in range(T - 1):  # push z_t | z_(t+1)
            st.push_latent(t, idx[t], *chain.conditional_prior(t, zs[t + 1]), name=f"z{t + 1}")
        st.push_top(idx[-1], name=f"z{T}")
        return
    below, below_idx = x, None
    for t in range(T):  # pop z_t | below, push below | z_t
        i = st.pop_latent(t, *chain.posterior(t, below), name=f"q_z{t + 1}")
        z = st.values(t, i)
        if t == 0:
            st.push_pixels(x_sym, chain.likelihood_probs(z))
        else:
            st.push_latent(t - 1, below_idx, *chain.conditional_prior(t - 1, z), name=f"z{t}")
        below, below_idx = z, i
    st.push_top(below_idx, name=f"z{T}")


def _decode_block(st: _Stack, chain: LatentChain, b: int, order: str) -> np.ndarray:
    shape = (b, *chain.data_shape)
    T = chain.num_layers
    dims = chain.latent_dims
    if order == "bbans":
        idx: list[Any] = [None] * T
        zs: list[Any] = [None] * T
        idx[-1] = st.pop_top(b * dims[-1], name=f"z{T}")
        zs[-1] = st.values(T - 1, idx[-1])
        for t in reversed(range(T - 1)):
            idx[t] = st.pop_latent(t, *chain.conditional_prior(t, zs[t + 1]), name=f"z{t + 1}")
            zs[t] = st.values(t, idx[t])
        x_sym = st.pop_pixels(chain.likelihood_probs(zs[0]))
        x = torch.from_numpy(x_sym.astype(np.uint8).reshape(shape)).to(torch.float64)
        for t in reversed(range(T)):  # push the bits back, last popped first
            below = x if t == 0 else zs[t - 1]
            st.push_latent(t, idx[t], *chain.posterior(t, below), name=f"q_z{t + 1}")
        return x_sym.astype(np.uint8).reshape(shape)
    cur_idx = st.pop_top(b * dims[-1], name=f"z{T}")
    cur = st.values(T - 1, cur_idx)
    for t in reversed(range(T)):  # pop below | z_t, push z_t | below
        if t == 0:
            x_sym = st.pop_pixels(chain.likelihood_probs(cur))
            below = torch.from_numpy(x_sym.astype(np.uint8).reshape(shape)).to(torch.float64)
            below_idx = None
        else:
            below_idx = st.pop_latent(t - 1, *chain.conditional_prior(t - 1, cur), name=f"z{t}")
            below = st.values(t - 1, below_idx)
        st.push_latent(t, cur_idx, *chain.posterior(t, below), name=f"q_z{t + 1}")
        cur, cur_idx = below, below_idx
    return x_sym.astype(np.uint8).reshape(shape)


def encode(
    chain: LatentChain,
    images: Tensor | np.ndarray,
    settings: CoderSettings | None = None,
    initial_words: int | None = None,
) -> Encoded:
    """Compress binary ``images`` ``(N, *data_shape)`` into one ANS stream.

    The initial stack holds ``initial_words`` seeded words (default: enough for the first block's
    pops). If a later pop ever gets within one word of the bottom of the stack, encoding starts
    again with twice as many, so the coder never pops from an exhausted stack.
    """
    s = settings or CoderSettings()
    x = check_binary(images, chain.data_shape)
    words = int(initial_words or default_initial_words(chain, s))
    t0 = time.perf_counter()
    buckets = layer_buckets(chain, s)
    while True:
        init = initial_stack(s.seed, words)
        st = _Stack(init, s, buckets)
        for sl in _blocks(x.shape[0], s.block_size):
            _encode_block(st, chain, x[sl], s.order)
        if st.min_words >= 3:  # the bulk below the 64-bit head was never emptied
            break
        words *= 2
    final = st.coder.get_compressed()
    m = min(final.size, init.size)
    same = final[:m] == init[:m]
    k = int(m if same.all() else np.argmin(same))
    pushed = {n: v for n, v in st.bits.items() if not n.startswith("q_")}
    popped = {n: -v for n, v in st.bits.items() if n.startswith("q_")}
    return Encoded(
        payload=final[k:].copy(),
        stripped_words=k,
        initial_words=words,
        num_images=int(x.shape[0]),
        image_shape=tuple(chain.data_shape),
        settings=s,
        initial_bits_used=float(st.start_bits - st.min_bits),
        net_bits=float(st.coder.num_valid_bits() - st.start_bits),
        push_bits=float(sum(pushed.values())),
        pop_bits=float(sum(popped.values())),
        seconds=time.perf_counter() - t0,
        buckets_sha256=buckets_digest(buckets),
        layer_bits={**pushed, **popped},
    )


class DecodeError(ValueError):
    """A stream did not decode back to where it started: corrupt, or the wrong model/numerics."""


def decode(
    chain: LatentChain,
    payload: np.ndarray,
    num_images: int,
    settings: CoderSettings,
    initial_words: int,
    stripped_words: int,
    buckets_sha256: str | None = None,
) -> np.ndarray:
    """Decompress a stream written by ``encode``: uint8 images ``(N, *data_shape)``.

    Raises:
        DecodeError: the buckets differ from the encoder's (``buckets_sha256``, when given), or
            the stack did not end exactly at its initial words (a corrupt stream, a
            different model, or different numerics than the encoder's).
    """
    s = settings
    init = initial_stack(s.seed, initial_words)
    if not 0 <= stripped_words <= initial_words:
        raise DecodeError(f"stripped_words={stripped_words} is outside [0, {initial_words}]")
    words = np.concatenate([init[:stripped_words], np.asarray(payload, dtype=np.uint32)])
    buckets = layer_buckets(chain, s)
    if buckets_sha256 is not None and buckets_digest(buckets) != buckets_sha256:
        raise DecodeError(
            "the latent buckets computed from the model differ from the encoder's (sha256 "
            "mismatch): a different model, or different numerics (torch build, machine) than "
            "the ones that encoded the stream"
        )
    st = _Stack(words, s, buckets)
    out = np.empty((num_images, *chain.data_shape), dtype=np.uint8)
    for sl in reversed(_blocks(num_images, s.block_size)):
        out[sl] = _decode_block(st, chain, sl.stop - sl.start, s.order)
    rest = st.coder.get_compressed()
    if rest.size != init.size or not np.array_equal(rest, init):
        raise DecodeError(
            "the stream did not return to its initial words after decoding every image: the file "
            "is corrupt, or it is decoded with a different model or different numerics (torch "
            "build, thread count) than the ones that encoded it"
        )
    return out
