"""Bit-Swap code the first N binarized MNIST test images with a discrete-time VDM checkpoint.

    python scripts/vdm_bitswap.py <run>/checkpoints/last.ckpt 20 [prior_prec latent_prec]

Prints the code's net rate (bits per image), the model's -ELBO on the same images (4 draws per
image), the coding times, and whether decoding gave the images back exactly.
"""

from __future__ import annotations

import math
import sys
import time

import torch

from vaelab import load_run
from vaelab.compression import CoderSettings, decode, encode
from vaelab.compression.diffusion_chain import DiffusionChain


def main() -> None:
    ckpt, n = sys.argv[1], int(sys.argv[2])
    pp = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    lp = int(sys.argv[4]) if len(sys.argv) > 4 else 14
    run = load_run(ckpt)
    model, dm = run.model, run.datamodule
    dm.setup()
    x = dm.batch("test", n).cpu()
    chain = DiffusionChain(model)
    s = CoderSettings(block_size=n, prior_prec=pp, latent_prec=lp)
    t0 = time.time()
    enc = encode(chain, x.numpy(), s)
    t_enc = time.time() - t0
    with torch.no_grad():
        torch.manual_seed(0)
        elbo = model.double().log_likelihood(x.double(), 4)
    t0 = time.time()
    out = decode(
        chain, enc.payload, enc.num_images, enc.settings, enc.initial_words, enc.stripped_words,
        enc.buckets_sha256,
    )  # fmt: skip
    print(f"settings {s}")
    print(f"rate {enc.net_bits / n:.1f} bits/image; -ELBO {float(-elbo.mean()) / math.log(2):.1f}")
    print(
        f"encode {t_enc:.0f} s, decode {time.time() - t0:.0f} s, exact {bool((out == x.numpy()).all())}"
    )


if __name__ == "__main__":
    main()
