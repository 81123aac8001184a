"""The compressed file: a small header, the ANS words, and a checksum.

Layout (all integers little-endian)::

    b"VLBB"                      4 bytes, magic
    header length H              uint32
    header                       H bytes of UTF-8 JSON (see ``header``)
    payload                      uint32 words, header["payload_words"] of them
    sha256 of all bytes above    32 bytes

The header records the format version, the image count and shape, the sha256 of the model's
weights (``chain.model_fingerprint``), the sha256 of the images, and everything needed to decode
(coder settings, initial words, stripped prefix). Any truncation or alteration is caught by the
length and checksum before decoding starts; a different checkpoint by the weights' hash.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.checkpoints import atomic_write
from vaelab.compression._coder import version as constriction_version
from vaelab.compression.bbans import CoderSettings, Encoded

MAGIC = b"VLBB"
REQUIRED = (
    "num_images",
    "image_shape",
    "model_sha256",
    "images_sha256",
    "buckets_sha256",
    "coder",
    "initial_words",
    "stripped_words",
    "payload_words",
)
FORMAT_VERSION = 1
_DIGEST = 32


class CompressedFileError(ValueError):
    """A compressed file is truncated, altered, of another format, or for another model."""


def images_digest(images: np.ndarray) -> str:
    """sha256 (hex) of uint8 binary images, bit-packed, with their shape."""
    x = np.ascontiguousarray(images, dtype=np.uint8)
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(np.packbits(x.reshape(-1)).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CompressedFile:
    """What a file holds, parsed and checked."""

    header: dict[str, Any]
    payload: np.ndarray
    size_bytes: int

    @property
    def settings(self) -> CoderSettings:
        return CoderSettings(**self.header["coder"])


def header(enc: Encoded, model_sha256: str, model_name: str, images_sha256: str) -> dict[str, Any]:
    return {
        "format": "vaelab-bits-back",
        "version": FORMAT_VERSION,
        "num_images": enc.num_images,
        "image_shape": list(enc.image_shape),
        "model": model_name,
        "model_sha256": model_sha256,
        "images_sha256": images_sha256,
        "buckets_sha256": enc.buckets_sha256,
        "coder": enc.settings.to_dict(),
        "initial_words": enc.initial_words,
        "stripped_words": enc.stripped_words,
        "payload_words": int(enc.payload.size),
        "constriction": constriction_version(),
    }


def to_bytes(head: dict[str, Any], payload: np.ndarray) -> bytes:
    h = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(h)) + h + np.asarray(payload, dtype="<u4").tobytes()
    return body + hashlib.sha256(body).digest()


def write(path: str | Path, head: dict[str, Any], payload: np.ndarray) -> int:
    """Write the file atomically (as checkpoints are: a full disk or a kill leaves the old file
    whole, never a fragment); returns its size in bytes.

    Raises:
        vaelab.checkpoints.DiskFullError: no space left on the file's device (the file named).
    """
    data = to_bytes(head, payload)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def from_bytes(data: bytes, name: str = "the file") -> CompressedFile:
    """Parse and check a file's bytes.

    Raises:
        CompressedFileError: not this format, an unknown version, truncated, or altered.
    """
    if len(data) < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
        raise CompressedFileError(
            f"{name} is not a vaelab compressed file (it does not start with {MAGIC!r}); "
            "pass a file written by vaelab-compress"
        )
    (hlen,) = struct.unpack("<I", data[4:8])
    if 8 + hlen + _DIGEST > len(data):
        raise CompressedFileError(
            f"{name} is truncated: its header says {hlen} header bytes, but only {len(data)} "
            "bytes are there in all; compress again or restore the file"
        )
    try:
        head = json.loads(data[8 : 8 + hlen].decode())
        version = int(head["version"])
    except (ValueError, KeyError, TypeError) as err:
        raise CompressedFileError(f"{name} has a corrupt header ({err}); it was altered") from err
    if version != FORMAT_VERSION:
        raise CompressedFileError(
            f"{name} has format version {version}; this vaelab reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED if k not in head]
    if missing:
        raise CompressedFileError(
            f"{name}: its header lacks {', '.join(missing)}; it was altered, or written by a "
            "development version of vaelab-compress. Compress the images again."
        )
    n_words = int(head["payload_words"])
    expected = 8 + hlen + 4 * n_words + _DIGEST
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise CompressedFileError(
            f"{name} is {what}: {len(data)} bytes, expected {expected} "
            f"({n_words} payload words); compress again or restore the file"
        )
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CompressedFileError(
            f"{name} was altered or corrupted: its sha256 checksum does not match its contents"
        )
    payload = np.frombuffer(body[8 + hlen :], dtype="<u4").astype(np.uint32)
    return CompressedFile(header=head, payload=payload, size_bytes=len(data))


def read(path: str | Path) -> CompressedFile:
    p = Path(path)
    if not p.is_file():
        raise CompressedFileError(f"compressed file {p} does not exist")
    return from_bytes(p.read_bytes(), name=str(p))


def check_model(f: CompressedFile, model_sha256: str, ckpt: str = "this checkpoint") -> None:
    """Raise unless the file was written with the model whose weights hash to ``model_sha256``."""
    want = f.header.get("model_sha256")
    if want != model_sha256:
        raise CompressedFileError(
            f"the file was compressed with a different model (weights sha256 {str(want)[:16]}..., "
            f"{f.header.get('model')}) than {ckpt} (sha256 {model_sha256[:16]}...); decompress "
            "it with the checkpoint that compressed it"
        )
