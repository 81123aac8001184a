"""Draw a trained VDM's pictures from its checkpoint: samples, denoising chains, log SNR(t).

    python scripts/vdm_pictures.py logs/train/runs/<run>/checkpoints/last.ckpt --out pictures/

The same grids the ``ImageGrids`` callback writes during training (``vaelab.viz``), for a run
trained before the pictures existed or to draw them again with another seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from vaelab import load_run
from vaelab.viz import denoising_grid, sample_grid, snr_curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--out", default=".")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=64)
    args = p.parse_args()
    model = load_run(args.checkpoint).model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        grids = {
            "samples": sample_grid(model, args.num_samples, 8, seed=args.seed, use_mean=True),
            "denoising": denoising_grid(model, num_chains=6, frames=10, seed=args.seed),
            "snr": snr_curve(model),
        }
    for name, grid in grids.items():
        save_image(grid, out / f"{name}.png")
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
