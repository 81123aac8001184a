"""Bits-back coding (vaelab.compression): bit-exact round trips, code lengths, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("constriction")

from vaelab.compression import (
    CoderSettings,
    DecodeError,
    LatentChain,
    NotCompressibleError,
    decode,
    encode,
    fileformat,
)
from vaelab.compression.discretize import (
    Buckets,
    bernoulli_counts,
    coder_pmf,
    gaussian_counts,
)
from vaelab.distributions import BernoulliLikelihood, GaussianEncoder, GaussianLikelihood
from vaelab.models import VAE, HierarchicalVAE
from vaelab.nn import MLP

SHAPE = (1, 8, 8)


def tiny_vae(likelihood: type = BernoulliLikelihood, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    enc = GaussianEncoder(MLP(SHAPE, [32], None, "relu"), 4)
    dec = likelihood(MLP((4,), [32], SHAPE, "relu"), SHAPE)
    return VAE(enc, dec, SHAPE, 4).eval()


def tiny_hvae(seed: int = 0) -> HierarchicalVAE:
    torch.manual_seed(seed)
    layers = [{"latent_dim": 6, "hidden": [16]}, {"latent_dim": 3, "hidden": [8]}]
    return HierarchicalVAE(SHAPE, layers).eval()


def binary_images(n: int = 300, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(1, *SHAPE, generator=g) * 0.8 + 0.1  # a per-pixel mean, so there is structure
    return torch.bernoulli(p.expand(n, *SHAPE), generator=g).to(torch.uint8).numpy()


def roundtrip(model, x, **kw):
    # The decoder's output bias at the data's log-odds (as training starts), so p(x|z) models
    # the pixel marginals and the stream is shorter than the raw bits.
    model.init_from_data(torch.from_numpy(x).float().mean(0))
    chain = LatentChain(model)
    s = CoderSettings(**kw)
    enc = encode(chain, x, s)
    y = decode(chain, enc.payload, enc.num_images, s, enc.initial_words, enc.stripped_words)
    return enc, y


@pytest.mark.parametrize(
    ("make", "order", "buckets"),
    [
        (tiny_vae, "bbans", "prior"),
        (tiny_hvae, "bbans", "prior"),
        (tiny_hvae, "bitswap", "prior"),
        (tiny_hvae, "bitswap", "standard"),
    ],
    ids=["vae", "hvae-bbans", "hvae-bitswap", "hvae-bitswap-standard-buckets"],
)
def test_round_trip_is_bit_exact(make, order, buckets) -> None:
    x = binary_images(300)
    # 5 blocks, the last one short
    enc, y = roundtrip(make(), x, order=order, block_size=64, buckets=buckets)
    assert y.dtype == np.uint8 and y.shape == x.shape
    assert np.array_equal(y, x)
    # The stored words are what the coder wrote plus the initial bits it consumed (the untouched
    # initial words are not stored), to within 3 words: the coder's 64-bit head sits above the
    # untouched words, and bits are rounded to words at both ends.
    assert abs(enc.payload_bits - (enc.net_bits + enc.initial_bits_used)) <= 96
    assert enc.stripped_words > 0


def test_vae_stream_is_shorter_than_the_raw_bits() -> None:
    x = binary_images(300)
    enc, _ = roundtrip(tiny_vae(), x, block_size=64)
    assert enc.net_bits < 0.95 * x.size


@pytest.mark.parametrize("order", ["bbans", "bitswap"])
def test_code_length_is_the_information_content_under_the_quantised_models(order) -> None:
    """Stack growth = sum -log2 P(pushed) - sum -log2 Q(popped), under the coder's exact
    fixed-point models; ANS adds at most a few bits in all (its 64-bit state)."""
    x = binary_images(200)
    enc, _ = roundtrip(tiny_hvae(), x, order=order, block_size=50)
    ideal = enc.push_bits - enc.pop_bits
    assert enc.net_bits > 0.5 * ideal  # guards against a vacuous comparison
    assert abs(enc.net_bits - ideal) < 64, (enc.net_bits, ideal)
    # And each term is what the quantised models say: the top prior costs prior_prec bits a dim.
    assert enc.layer_bits["z2"] == pytest.approx(8 * 3 * 200)


def _ans_push(state: int, left: int, prob: int) -> int:
    """rANS at 24-bit precision without renormalisation: x -> (x // p) * 2**24 + left + x % p."""
    return ((state // prob) << 24) + left + state % prob


def test_coder_models_are_exactly_our_counts() -> None:
    """constriction's ANS state after one push is what the exact rANS update with our counts
    gives, for every symbol of a table with tiny counts, and for the uniform top prior; handing
    constriction the plain probabilities counts / 2**prec would not be exact (checked too)."""
    import constriction

    models = constriction.stream.model
    counts = np.array([[1, 3 << 12, (1 << 24) - (5 << 12) - 1, 2 << 12]], dtype=np.int64)  # 2**24
    naive_exact = []
    for s in range(4):
        left, prob = int(counts[0, :s].sum()), int(counts[0, s])
        for table, exact in ((coder_pmf(counts), True), (counts / float(1 << 24), False)):
            coder = constriction.stream.stack.AnsCoder(np.array([12345, 7], dtype=np.uint32))
            _, x = coder.pos()
            sym = np.array([s], dtype=np.int32)
            coder.encode_reverse(sym, models.Categorical(perfect=False), table)
            pos, x2 = coder.pos()
            assert pos == 0  # no renormalisation, so the update formula applies as it stands
            if exact:
                assert x2 == _ans_push(x, left, prob), s
            else:
                naive_exact.append(x2 == _ans_push(x, left, prob))
    assert not all(naive_exact)
    coder = constriction.stream.stack.AnsCoder(np.array([12345, 7], dtype=np.uint32))
    _, x = coder.pos()
    coder.encode_reverse(np.array([77], dtype=np.int32), models.Uniform(256))
    assert coder.pos()[1] == _ans_push(x, 77 << 16, 1 << 16)


def test_gaussian_counts_sum_to_the_precision_and_keep_every_bucket() -> None:
    b = Buckets(8, dim=3)
    mu = torch.tensor([[0.0, 3.0, -1.5]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.01, 0.3]], dtype=torch.float64)
    c = gaussian_counts(mu, sigma, b, 14)
    assert c.shape == (3, 256)
    assert (c.sum(1) == 1 << 24).all() and (c >= 1).all()
    # N(0, 1) on its own equal-mass buckets: every bucket gets 2**14 / 256 counts at 14 bits.
    assert (c[0] == 64 << 10).all()
    # A narrow posterior puts nearly all its mass in the bucket holding its mean; the far buckets
    # get no mass at 14 bits, so only the coder's minimum (1 in 2**24) leaks out of the posterior.
    k = int(torch.searchsorted(b.edges[1], torch.tensor(3.0, dtype=torch.float64)))
    assert c[1, k] > 0.9 * (1 << 24)
    assert (c[1] == 1).sum() > 200 and c[1].sum() - c[1, c[1] > 1].sum() < 256
    # The masses are the 14-bit ones: every count but the leaks is a multiple of 2**10.
    assert (c[2][c[2] > 256] % 1024 == 0).sum() >= (c[2] > 256).sum() - 1
    p = bernoulli_counts(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), 16)
    assert (p.sum(1) == 1 << 24).all() and (p >= 1 << 8).all() and p[1, 1] == 1 << 23


def test_prior_buckets_follow_the_layer_marginal() -> None:
    """Below the top, buckets are equal-mass under a Gaussian fit to p(z_t), by ancestral sampling;
    the top layer keeps the N(0, 1) buckets; a wrong bucket digest stops decoding."""
    from vaelab.compression.bbans import buckets_digest, layer_buckets

    model = tiny_hvae()
    with torch.no_grad():  # move p(z_1 | z_2) away from N(0, 1): mean 2, std 3 in every dimension
        head = model.conditional_priors[0].head
        head.weight.zero_()
        head.bias[:6] = 2.0
        head.bias[6:] = float(np.log(3.0))
    chain = LatentChain(model)
    ((loc, scale),) = chain.prior_marginals()
    assert torch.allclose(loc, torch.full((6,), 2.0, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(scale, torch.full((6,), 3.0 + 1e-5, dtype=torch.float64), atol=1e-6)
    prior = layer_buckets(chain, CoderSettings(buckets="prior"))
    std = layer_buckets(chain, CoderSettings(buckets="standard"))
    assert torch.allclose(prior[0].centres, 2.0 + (3.0 + 1e-5) * std[0].centres)
    assert torch.equal(prior[1].centres, std[1].centres)
    x = binary_images(60)
    s = CoderSettings(block_size=30)
    enc = encode(chain, x, s)
    assert enc.buckets_sha256 == buckets_digest(prior)
    with pytest.raises(DecodeError, match="buckets computed from the model differ"):
        decode(chain, enc.payload, 60, s, enc.initial_words, enc.stripped_words, "0" * 64)


def test_bitswap_needs_fewer_initial_bits_than_bbans() -> None:
    x = binary_images(200)
    bb, _ = roundtrip(tiny_hvae(), x, order="bbans", block_size=50)
    bs, _ = roundtrip(tiny_hvae(), x, order="bitswap", block_size=50)
    assert bs.initial_bits_used < bb.initial_bits_used
    # Same model, same discretisation: both rates agree to within the initial-bits difference.
    assert abs(bs.net_bits - bb.net_bits) < 0.02 * bb.net_bits


def test_stream_grows_past_an_exhausted_initial_stack() -> None:
    """Too few initial words: encoding restarts with more instead of popping from nothing."""
    chain = LatentChain(tiny_vae())
    x = binary_images(100)
    s = CoderSettings(block_size=100)
    enc = encode(chain, x, s, initial_words=2)
    assert enc.initial_words > 2
    y = decode(chain, enc.payload, enc.num_images, s, enc.initial_words, enc.stripped_words)
    assert np.array_equal(y, x)


def test_non_binary_images_are_refused() -> None:
    chain = LatentChain(tiny_vae())
    x = binary_images(10).astype(np.float32)
    x[3, 0, 2, 2] = 0.5
    with pytest.raises(ValueError, match=r"binary images in \{0, 1\}.*0\.5"):
        encode(chain, x)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        encode(chain, np.zeros((4, 64), dtype=np.uint8))


def test_models_without_a_bernoulli_likelihood_are_refused() -> None:
    with pytest.raises(NotCompressibleError, match=r"GaussianLikelihood likelihood.*Bernoulli"):
        LatentChain(tiny_vae(GaussianLikelihood))
    from vaelab.models import RealNVP

    flow = RealNVP(
        data_shape=[1, 4, 4], num_scales=1, final_couplings=1, hidden_channels=4, num_blocks=1
    )
    with pytest.raises(NotCompressibleError, match="no latent variables"):
        LatentChain(flow)


def test_bad_settings_name_the_option() -> None:
    with pytest.raises(ValueError, match="order must be one of"):
        CoderSettings(order="fast")
    with pytest.raises(ValueError, match=r"latent_prec .* must exceed prior_prec"):
        CoderSettings(prior_prec=8, latent_prec=8)
    with pytest.raises(ValueError, match="obs_prec must be an int"):
        CoderSettings(obs_prec=30)


def _file_bytes(model, x):
    chain = LatentChain(model)
    enc = encode(chain, x, CoderSettings(block_size=50))
    head = fileformat.header(enc, chain.fingerprint, chain.model_name, fileformat.images_digest(x))
    return fileformat.to_bytes(head, enc.payload)


def test_file_round_trip_and_corruption_is_detected() -> None:
    model, x = tiny_vae(), binary_images(100)
    data = _file_bytes(model, x)
    f = fileformat.from_bytes(data)
    chain = LatentChain(model)
    fileformat.check_model(f, chain.fingerprint)
    y = decode(
        chain, f.payload, f.header["num_images"], f.settings, f.header["initial_words"],
        f.header["stripped_words"],
    )  # fmt: skip
    assert np.array_equal(y, x) and fileformat.images_digest(y) == f.header["images_sha256"]

    with pytest.raises(fileformat.CompressedFileError, match="truncated"):
        fileformat.from_bytes(data[:-7])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(fileformat.CompressedFileError, match="altered or corrupted"):
        fileformat.from_bytes(bytes(flipped))
    with pytest.raises(fileformat.CompressedFileError, match="not a vaelab compressed file"):
        fileformat.from_bytes(b"PK\x03\x04" + data[4:])


def test_altered_payload_fails_to_decode_rather_than_giving_wrong_images() -> None:
    """Past the checksum (a payload altered with the checksum recomputed), the decoder's own
    end-of-stream check still refuses."""
    model, x = tiny_vae(), binary_images(100)
    chain = LatentChain(model)
    s = CoderSettings(block_size=50)
    enc = encode(chain, x, s)
    bad = enc.payload.copy()
    bad[len(bad) // 2] ^= 1
    with pytest.raises(DecodeError, match="did not return to its initial words"):
        decode(chain, bad, enc.num_images, s, enc.initial_words, enc.stripped_words)


def test_a_different_checkpoint_is_detected() -> None:
    x = binary_images(50)
    f = fileformat.from_bytes(_file_bytes(tiny_vae(seed=0), x))
    other = LatentChain(tiny_vae(seed=1))
    with pytest.raises(fileformat.CompressedFileError, match="different model"):
        fileformat.check_model(f, other.fingerprint)
    # The fingerprint sees a single changed weight.
    m = tiny_vae(seed=0)
    with torch.no_grad():
        next(m.decoder.parameters()).view(-1)[0] += 1e-6
    assert LatentChain(m).fingerprint != LatentChain(tiny_vae(seed=0)).fingerprint


def test_missing_constriction_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "constriction", None)
    with pytest.raises(ImportError, match=r"pip install 'vaelab\[compression\]'"):
        encode(LatentChain(tiny_vae()), binary_images(4))
