"""``vaelab-compress``: lossless compression of binary images with a trained model (bits-back).

    vaelab-compress ckpt_path=logs/bbans_vae/runs/<run>/checkpoints/last.ckpt split=test
    vaelab-compress ckpt_path=... num_images=1000 coder.order=bbans
    vaelab-compress mode=decompress ckpt_path=... file=<run>/test.vlbb output=images.npy

``mode=compress`` (the default) rebuilds the model and data from the config stored in the
checkpoint, compresses the first ``num_images`` images of ``split`` into one stream, writes the
file, reads it back, decompresses it, checks that every pixel is restored, and reports in
``metrics.json`` (and a summary table):

- ``compress/bpd``: bits/dim of the stream with the initial bits excluded (the papers' figure);
  ``compress/bpd_with_initial``: the stored words, initial bits included; ``compress/file_bpd``:
  the whole file, header and checksum included;
- ``compress/neg_elbo_bpd``: the model's negative ELBO on the same images, bits/dim;
  ``compress/gap_percent``: how far ``compress/bpd`` lies above it, in percent;
- ``compress/baseline/{gzip,bz2,lzma}_bpd`` on the same images, bit-packed;
  ``compress/baseline/png_bpd`` (one 1-bit PNG file per image) and ``png_stacked_bpd`` (all images
  in one tall 1-bit PNG), when Pillow is installed;
- ``compress/encode_images_per_s``, ``compress/decode_images_per_s``;
- ``status`` (``ok`` or ``failed: ...``, written also when the run fails), the checkpoint's training
  ``epochs`` and ``global_step``, and ``seconds``, ``device``, ``threads``, as vaelab-train writes
  them (``vaelab-reproduce table=bbans`` reads them).

``mode=decompress`` restores the images from a file and the checkpoint that wrote it, into
``output`` (a ``.npy`` uint8 array ``(N, C, H, W)``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from vaelab.checkpoints import atomic_write
from vaelab.compression import fileformat
from vaelab.compression.bbans import CoderSettings, DecodeError, check_binary, decode, encode
from vaelab.compression.chain import LatentChain
from vaelab.config import config_dir, register_resolvers
from vaelab.config_check import check_values
from vaelab.runs import load_run
from vaelab.safe_config import trusted_from
from vaelab.tasks import TaskRecord, short_errors, task_wrapper
from vaelab.units import bits_per_dim
from vaelab.utils import write_metrics

log = logging.getLogger(__name__)


def decode_file(chain: LatentChain, f: Any) -> np.ndarray:
    """The images of a read compressed file ``f`` (``fileformat.read``), decoded with ``chain``."""
    h = f.header
    return decode(
        chain, f.payload, h["num_images"], f.settings, h["initial_words"], h["stripped_words"],
        h["buckets_sha256"],
    )  # fmt: skip


def _load_options(cfg: DictConfig) -> dict[str, Any]:
    """``trust_checkpoint`` and ``trusted_targets`` of the command line, for :func:`load_run`."""
    return {"trust": bool(cfg.get("trust_checkpoint", False)), "trusted": trusted_from(cfg)}


def split_images(datamodule: Any, split: str, num_images: int | None) -> np.ndarray:
    """The first ``num_images`` images of ``split`` as the model sees them, checked binary."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    if getattr(datamodule, "kind", "binary") != "binary":
        raise ValueError(
            f"this run's data ({type(datamodule).__name__}, {datamodule.kind}) is not binary: "
            "vaelab-compress codes binary images with a Bernoulli likelihood; train on "
            "data=binarized_mnist"
        )
    datamodule.setup()
    total = int(datamodule.splits[split].shape[0])
    n = total if num_images is None else int(num_images)
    if not 1 <= n <= total:
        raise ValueError(f"num_images must be in [1, {total}] for split={split}, got {num_images}")
    return check_binary(datamodule.batch(split, n), tuple(datamodule.shape))


@torch.no_grad()
def negative_elbo_bpd(
    model: torch.nn.Module, images: np.ndarray, samples: int, seed: int, batch: int = 500
) -> tuple[float, float]:
    """``(-ELBO, its standard error)`` in bits/dim on ``images``, from ``samples`` seeded passes."""
    d = int(np.prod(images.shape[1:]))
    x = torch.from_numpy(images).float()
    per_image = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(samples):
            for i in range(0, x.shape[0], batch):
                per_image[i : i + batch] += model(x[i : i + batch]).elbo.double()
    nelbo = bits_per_dim(-(per_image / samples), d, "binary")  # (N,)
    se = float(nelbo.std() / math.sqrt(nelbo.numel())) if nelbo.numel() > 1 else float("nan")
    return float(nelbo.mean()), se


def baselines(images: np.ndarray) -> dict[str, float]:
    """bits/dim of general-purpose compressors on the same binary images, bit-packed."""
    n_dims = images.size
    packed = np.packbits(images.reshape(-1)).tobytes()
    out = {
        "gzip_bpd": 8 * len(gzip.compress(packed, compresslevel=9, mtime=0)) / n_dims,
        "bz2_bpd": 8 * len(bz2.compress(packed, compresslevel=9)) / n_dims,
        "lzma_bpd": 8 * len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME)) / n_dims,
    }
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib/torchvision
        log.info("Pillow not installed: no PNG baseline")
        return out

    def png_bytes(img: np.ndarray) -> int:
        buf = io.BytesIO()
        Image.fromarray(img.astype(bool)).save(buf, format="PNG", optimize=True)  # 1-bit PNG
        return buf.tell()

    rows = images.reshape(images.shape[0], -1, images.shape[-1])  # (N, C*H, W)
    # One PNG file per image (headers included), and all images stacked into one tall PNG.
    out["png_bpd"] = 8 * sum(png_bytes(img) for img in rows) / n_dims
    out["png_stacked_bpd"] = 8 * png_bytes(rows.reshape(-1, rows.shape[-1])) / n_dims
    return out


def _summary(title: str, rows: list[tuple[str, float, str]], where: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, just in (("metric", "left"), ("value", "right"), ("unit", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for k, v, unit in rows:
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v), unit)
    console = Console()
    console.print(table)
    for k, v in where.items():
        # soft_wrap: a path is one line also when piped (rich's width is 80 columns then).
        console.print(f"[bold]{k}[/bold]: {v}", soft_wrap=True)


def settings_from(cfg: DictConfig) -> CoderSettings:
    c = cfg.coder
    return CoderSettings(
        order=str(c.order),
        prior_prec=int(c.prior_prec),
        latent_prec=int(c.latent_prec),
        obs_prec=int(c.obs_prec),
        block_size=int(c.block_size),
        seed=int(c.seed),
        buckets=str(c.buckets),
    )


def trained_epochs(ckpt: dict) -> int | None:
    """Training epochs a vaelab-train checkpoint had completed (``epochs`` of its metrics.json).

    Lightning's ``epoch`` is the 0-based epoch the checkpoint was written in; the fit loop's
    processed-epoch count says how many epochs of training steps were done (2 for ``last.ckpt``
    written at the end of the second epoch, where ``epoch`` is 1).
    """
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return None if ckpt.get("epoch") is None else int(ckpt["epoch"]) + 1


@task_wrapper
def compress(cfg: DictConfig, record: TaskRecord) -> dict[str, float]:
    """``mode=compress``: compress, write, read back, decompress, check; returns the metrics.

    ``metrics.json`` is written whatever happens, as vaelab-train writes it: ``status: ok`` or
    ``status: failed: ...``, with the checkpoint's training ``epochs`` and ``global_step``, the
    run's ``seconds``, ``device`` and ``threads`` (what vaelab-reproduce's report reads).
    """
    out_dir = Path(cfg.paths.output_dir)
    info: dict[str, Any] = {"checkpoint": str(cfg.ckpt_path), "split": str(cfg.split)}
    record.fields = lambda: {
        **info,
        "seconds": record.seconds(),
        "output_dir": str(out_dir),
        "threads": torch.get_num_threads(),
    }
    record.metrics.update(_compress(cfg, out_dir, info))
    return record.metrics


def _compress(cfg: DictConfig, out_dir: Path, info: dict[str, Any]) -> dict[str, float]:
    """The work of ``compress``; fills ``info`` (what metrics.json records besides the figures)."""
    ckpt_path = str(cfg.ckpt_path)
    run = load_run(ckpt_path, cfg.data_dir, **_load_options(cfg))
    model, datamodule, ckpt = run.model, run.datamodule, run.checkpoint
    info.update(
        epoch=ckpt.get("epoch"),
        epochs=trained_epochs(ckpt),
        global_step=ckpt.get("global_step"),
        device=str(next(model.parameters()).device),
    )
    chain = LatentChain(model)  # NotCompressibleError for flows and non-Bernoulli likelihoods
    settings = settings_from(cfg)
    images = split_images(datamodule, str(cfg.split), cfg.num_images)
    n, d = images.shape[0], int(np.prod(images.shape[1:]))
    nd = n * d

    enc = encode(chain, images, settings)
    head = fileformat.header(
        enc, chain.fingerprint, chain.model_name, fileformat.images_digest(images)
    )
    file = Path(cfg.file) if cfg.get("file") else out_dir / f"{cfg.split}.vlbb"
    size = fileformat.write(file, head, enc.payload)

    f = fileformat.read(file)  # decode from what is on disk
    fileformat.check_model(f, chain.fingerprint, ckpt_path)
    t0 = time.perf_counter()
    restored = decode_file(chain, f)
    dec_seconds = time.perf_counter() - t0
    if not np.array_equal(restored, images):
        wrong = int((restored != images).reshape(n, -1).any(1).sum())
        raise DecodeError(f"decompression restored {wrong} of {n} images wrongly")

    nelbo, nelbo_se = negative_elbo_bpd(model, images, int(cfg.elbo_samples), int(cfg.seed))
    bpd = enc.net_bits / nd
    metrics: dict[str, float] = {
        "compress/bpd": bpd,
        "compress/bpd_with_initial": enc.payload_bits / nd,
        "compress/file_bpd": 8 * size / nd,
        "compress/ideal_bpd": (enc.push_bits - enc.pop_bits) / nd,
        "compress/neg_elbo_bpd": nelbo,
        "compress/neg_elbo_bpd_se": nelbo_se,
        "compress/gap_percent": 100 * (bpd - nelbo) / nelbo,
        "compress/gap_with_initial_percent": 100 * (enc.payload_bits / nd - nelbo) / nelbo,
        "compress/initial_bits": enc.initial_bits_used,
        "compress/file_bytes": float(size),
        "compress/num_images": float(n),
        "compress/encode_seconds": enc.seconds,
        "compress/decode_seconds": dec_seconds,
        "compress/encode_images_per_s": n / enc.seconds,
        "compress/decode_images_per_s": n / dec_seconds,
        **{f"compress/bits_per_image/{k}": v / n for k, v in enc.layer_bits.items()},
    }
    if cfg.baselines:
        metrics.update({f"compress/baseline/{k}": v for k, v in baselines(images).items()})
    info.update(
        file=str(file),
        coder=settings.to_dict(),
        model=chain.model_name,
        model_sha256=chain.fingerprint,
    )
    units = {
        "bits_per_image": "bits/image",
        "seconds": "s",
        "per_s": "images/s",
        "percent": "%",
        "initial_bits": "bits",
        "file_bytes": "bytes",
    }
    rows = []
    for k, v in metrics.items():
        unit = next((u for key, u in units.items() if key in k), "bits/dim" if "bpd" in k else "")
        rows.append((k, v, unit))
    _summary(
        f"vaelab compress: {n} {cfg.split} images, {chain.model_name}, order={settings.order}",
        rows,
        {"file": str(file), "metrics": str(out_dir / "metrics.json")},
    )
    return metrics


def decompress(cfg: DictConfig) -> np.ndarray:
    """``mode=decompress``: restore the images of ``cfg.file`` with the checkpoint; save them.

    ``metrics.json`` is written whatever happens (``status: ok`` or ``status: failed: ...``),
    as ``mode=compress`` writes it.
    """
    out_dir = Path(cfg.paths.output_dir)
    t0 = time.perf_counter()
    status = "ok"
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {"checkpoint": str(cfg.ckpt_path), "file": str(cfg.get("file"))}
    try:
        images, metrics = _decompress(cfg, out_dir, info)
    except BaseException as err:
        status = f"failed: {type(err).__name__}: {err}"
        raise
    finally:
        try:
            write_metrics(
                out_dir / "metrics.json",
                metrics,
                status=status,
                **info,
                seconds=round(time.perf_counter() - t0, 2),
                output_dir=str(out_dir),
            )
        except Exception as err:  # never hide the run's own error behind this one
            if status == "ok":
                raise
            log.error("could not write %s: %s", out_dir / "metrics.json", err)
    return images


def _decompress(
    cfg: DictConfig, out_dir: Path, info: dict[str, Any]
) -> tuple[np.ndarray, dict[str, float]]:
    """The work of ``decompress``; fills ``info`` (what metrics.json records besides figures)."""
    if not cfg.get("file"):
        raise ValueError("mode=decompress needs file=<path of a file written by vaelab-compress>")
    f = fileformat.read(cfg.file)
    model = load_run(str(cfg.ckpt_path), cfg.data_dir, **_load_options(cfg)).model
    chain = LatentChain(model)
    fileformat.check_model(f, chain.fingerprint, str(cfg.ckpt_path))
    if tuple(f.header["image_shape"]) != chain.data_shape:
        raise fileformat.CompressedFileError(
            f"the file holds images of shape {f.header['image_shape']}, the model {chain.data_shape}"
        )
    t0 = time.perf_counter()
    images = decode_file(chain, f)
    seconds = time.perf_counter() - t0
    if fileformat.images_digest(images) != f.header["images_sha256"]:
        raise DecodeError(
            "the decoded images do not match the sha256 recorded when they were compressed: the "
            "decoder's numerics differ from the encoder's (another torch build or machine); "
            "decompress on the machine and software that compressed the file"
        )
    output = Path(cfg.output) if cfg.get("output") else out_dir / "decompressed.npy"
    atomic_write(output, lambda fh: np.save(fh, images))  # a full disk keeps an old output whole
    info["output"] = str(output)
    n = images.shape[0]
    metrics = {
        "decompress/num_images": float(n),
        "decompress/seconds": seconds,
        "decompress/images_per_s": n / seconds,
    }
    _summary(
        f"vaelab decompress: {n} images",
        [(k, v, "images/s" if "per_s" in k else "s" if "seconds" in k else "") for k, v in metrics.items()],
        {"images": str(output)},
    )  # fmt: skip
    return images, metrics


def run(cfg: DictConfig) -> Any:
    """Dispatch on ``cfg.mode``."""
    check_values(cfg, "compress")  # issue 26: types and ranges, before anything loads
    torch.set_grad_enabled(False)
    if cfg.mode == "compress":
        return compress(cfg)
    if cfg.mode == "decompress":
        return decompress(cfg)
    raise ValueError(f"mode must be 'compress' or 'decompress', got {cfg.mode!r}")


register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="compress")
@short_errors("vaelab-compress")  # a bad value is one message, no traceback
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    run(cfg)


if __name__ == "__main__":
    main()
