"""The loader's gather: ``data.index_select(0, idx)`` (vaelab) against ``data[idx]``.

vaelab's training loader takes each minibatch out of the whole uint8 training set with a slice of
a random permutation (``IndexBatchLoader``). ``data[idx]`` is what a researcher would write (and
what vaelab did before); ``index_select`` makes the same copy. Both run on an MNIST-sized uint8
tensor (55,000 x 1 x 28 x 28) with the same index slices, alternating call by call, so the
machine's drift moves both alike; it prints the median microseconds per minibatch and the ratio.

    OMP_NUM_THREADS=1 python benchmarks/gather_speed.py
    python benchmarks/gather_speed.py --device cuda --batch-sizes 20 100 1000
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import alternating_medians, write_json  # benchmarks/ is on sys.path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 100])
    p.add_argument("--images", type=int, default=55000)
    p.add_argument("--reps", type=int, default=3000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8, generator=g)
    data = data.to(device)
    order = torch.randperm(args.images, generator=g).to(device)
    arms = {
        "indexing": lambda idx: data[idx],
        "index_select": lambda idx: data.index_select(0, idx),
    }
    out: dict = {"threads": torch.get_num_threads(), "device": args.device, "batch": {}}
    for bs in args.batch_sizes:
        n = args.images // bs
        idx0 = order[:bs]
        if not torch.equal(arms["indexing"](idx0), arms["index_select"](idx0)):
            raise AssertionError("index_select and indexing differ")
        us = alternating_medians(
            arms, lambda r, bs=bs, n=n: (order[(r % n) * bs : (r % n + 1) * bs],), args.reps, device
        )
        us["ratio"] = round(us["index_select"] / us["indexing"], 3)
        out["batch"][str(bs)] = us
    print(json.dumps(out, indent=1))
    write_json(args.json, out, complete=True)


if __name__ == "__main__":
    main()
