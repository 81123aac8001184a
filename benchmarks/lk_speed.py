"""Seconds for L_5000 over the 10,000 MNIST test images (batch 500), as docs/speed.md reports.

The model is built from the config (untrained, seed 0: the cost does not depend on the weights), the
test images are binarized once with seed 0, and the mean bound is printed with the timing, so two
source trees can be compared on the same numbers in one session:

    OMP_NUM_THREADS=2 python benchmarks/lk_speed.py vae       # the 784-200-200-50 VAE (model=vae)
    OMP_NUM_THREADS=2 python benchmarks/lk_speed.py hvae      # experiment=iwae_vae_2layer
    OMP_NUM_THREADS=2 PYTHONPATH=<other checkout>/src python benchmarks/lk_speed.py vae

Real MNIST is read from $VAELAB_DATA_DIR, else ./data (the checkout's data folder); or pass
the folder as the second argument.
"""

import json
import os
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import vaelab
from vaelab.config import config_dir
from vaelab.data.mnist import read_mnist_images

which = sys.argv[1]
data_dir = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VAELAB_DATA_DIR", "data")
ov = ["model=vae"] if which == "vae" else ["experiment=iwae_vae_2layer"]
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose(config_name="train", overrides=[*ov, f"paths.data_dir={data_dir}"])
torch.manual_seed(0)
model = instantiate(cfg.model).eval()
x = read_mnist_images(data_dir, train=False)[:10000]
x = torch.bernoulli(x.float() / 255, generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter()
c0 = time.process_time()
tot = 0.0
with torch.no_grad():
    for i in range(0, x.shape[0], 500):
        tot += float(model.log_likelihood(x[i : i + 500], 5000).double().sum())
print(
    json.dumps(
        {
            "src": vaelab.__file__,
            "model": which,
            "cls": type(model).__name__,
            "seconds": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "mean_ll": tot / x.shape[0],
        }
    ),
    flush=True,
)
