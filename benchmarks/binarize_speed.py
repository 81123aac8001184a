"""Dynamic binarization: vaelab's ``dynamic_binarize`` against ``torch.bernoulli(x / 255)``.

The peer is what a researcher would write (and what vaelab did before): ``torch.bernoulli`` on
the batch's grey levels. vaelab draws one ``torch.rand`` and compares it in place (the same
Bernoulli(x / 255) distribution). Both run on the same uint8 MNIST-sized batches from one
generator, alternating call by call, so the machine's drift moves both alike; it prints the
median microseconds per batch and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/binarize_speed.py
    python benchmarks/binarize_speed.py --device cuda --batch-sizes 20 100 1000
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import alternating_medians, write_json  # benchmarks/ is on sys.path

from vaelab.data.transforms import dynamic_binarize


def torch_bernoulli(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The peer: ``torch.bernoulli(x / 255)``."""
    return torch.bernoulli(x.float() / 255.0, generator=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 100])
    p.add_argument("--reps", type=int, default=3000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    out: dict = {"threads": torch.get_num_threads(), "device": args.device, "batch": {}}
    for bs in args.batch_sizes:
        x = torch.randint(0, 256, (bs, 1, 28, 28), dtype=torch.uint8, device=device)
        arms = {"torch_bernoulli": torch_bernoulli, "vaelab": dynamic_binarize}
        us = alternating_medians(arms, lambda r, x=x: (x, g), args.reps, device)
        us["ratio"] = round(us["vaelab"] / us["torch_bernoulli"], 3)
        out["batch"][str(bs)] = us
    print(json.dumps(out, indent=1))
    write_json(args.json, out, complete=True)


if __name__ == "__main__":
    main()
