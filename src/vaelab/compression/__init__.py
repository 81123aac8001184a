"""Lossless compression with trained latent-variable models: bits-back coding (BB-ANS, Bit-Swap).

``encode(LatentChain(model), images, CoderSettings(...))`` compresses binary images into one ANS
stream (constriction's ``AnsCoder``), ``decode`` restores them bit-exactly; ``fileformat`` writes
and checks the compressed file; ``vaelab-compress`` (``vaelab.compression.cli``) is the command.
Needs the optional dependency constriction: ``pip install 'vaelab[compression]'``.

References:
    Townsend, Bird & Barber (2019), Practical Lossless Compression with Latent Variables using
    Bits Back Coding.
    Kingma, Abbeel & Ho (2019), Bit-Swap: Recursive Bits-Back Coding for Lossless Compression with
    Hierarchical Latent Variables.
"""

from vaelab.compression.bbans import (
    ORDERS,
    CoderSettings,
    DecodeError,
    Encoded,
    check_binary,
    decode,
    encode,
)
from vaelab.compression.chain import LatentChain, NotCompressibleError, model_fingerprint
from vaelab.compression.fileformat import CompressedFileError

__all__ = [
    "ORDERS",
    "CoderSettings",
    "CompressedFileError",
    "DecodeError",
    "Encoded",
    "LatentChain",
    "NotCompressibleError",
    "check_binary",
    "decode",
    "encode",
    "model_fingerprint",
]
