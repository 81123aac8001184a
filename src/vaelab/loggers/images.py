"""Pictures to every image-capable logger (W&B, TensorBoard); CSV and others are skipped."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from PIL import Image
from torch import Tensor


def _to_pil(image: Tensor | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    from torchvision.transforms.functional import to_pil_image

    x = image.detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.is_floating_point():
        x = x.float().clamp(0, 1)
    return to_pil_image(x)


def _to_chw(image: Tensor | Image.Image) -> Tensor:
    if isinstance(image, Image.Image):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image)
    x = image.detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    return x.float().clamp(0, 1) if x.is_floating_point() else x


def log_images(
    trainer: L.Trainer,
    key: str,
    images: Sequence[Tensor | Image.Image],
    step: int | None = None,
    captions: Sequence[str] | None = None,
) -> int:
    """Send images to every image-capable logger of ``trainer``; returns how many took them.

    W&B gets one ``wandb.Image`` per picture under ``key`` (``log_image``); TensorBoard gets
    ``add_image(key)`` (``key/i`` when there are several). CSV and other loggers are skipped.
    Runs on global rank zero only.

    Args:
        trainer: the Trainer whose ``loggers`` receive the images.
        key: the name, e.g. ``images/samples``.
        images: ``(C, H, W)`` or ``(H, W)`` tensors (float in [0, 1] or uint8) or PIL images.
        step: the global step (default ``trainer.global_step``).
        captions: one caption per image (W&B only).
    """
    if trainer.global_rank != 0 or not images:
        return 0
    step = trainer.global_step if step is None else int(step)
    sent = 0
    for lg in trainer.loggers:
        if isinstance(lg, _LightningWandbLogger):
            kwargs = {"caption": list(captions)} if captions else {}
            lg.log_image(key=key, images=[_to_pil(im) for im in images], step=step, **kwargs)
        elif isinstance(lg, TensorBoardLogger):
            for i, im in enumerate(images):
                tag = key if len(images) == 1 else f"{key}/{i}"
                lg.experiment.add_image(tag, _to_chw(im), global_step=step)
        else:
            continue
        sent += 1
    return sent


__all__ = ["log_images"]
