"""Time training epochs of vaelab against a loop written by hand, in one process.

Arms (all train on the same MNIST training images, batch size, thread count and device):

- ``hand``: the loop a researcher would write (``benchmarks/handwritten.py``: ``nn.Sequential``
  MLPs, ``binary_cross_entropy_with_logits``, analytic KL, fused Adam, a pre-loaded float tensor,
  one ``torch.bernoulli`` per batch). No vaelab code. **The baseline of every ratio.**
- ``bare``: vaelab's own model (``instantiate(cfg.model)``) and optimizer in a plain PyTorch loop
  over the same kind of batches: ``bare / hand`` is the cost of vaelab's model code alone.
- ``vaelab``: a whole ``vaelab-train`` epoch through the Trainer that ``vaelab.train.build`` makes
  (callbacks, CSV logger, checkpoint at the end of the epoch): ``vaelab / bare`` is the loop's cost.
- ``--variant NAME=OVERRIDE[,OVERRIDE...]``: more vaelab arms with extra Hydra overrides, e.g.
  ``--variant k8=module.steps_per_batch=8`` or ``--variant compile=module.compile=true``.
- ``--plain-lightning``: a minimal LightningModule (loss and optimizer only) under a bare Trainer.

Runs alternate (hand, bare, vaelab, variants..., hand, bare, ...) so that a machine that speeds up
or slows down moves every arm alike. For each batch size and arm it reports: epoch wall seconds,
``ms_per_step`` (median epoch / optimizer steps), ``step_median_ms`` (median interval between
consecutive optimizer steps: robust to bursts of load from other processes), CPU seconds per
epoch, and their ratios to ``hand`` (``ratio``: of the epoch medians; ``pair_ratio_median``: median
of the per-rep ratios; ``step_ratio``, ``cpu_ratio``). At batch 20 (the IWAE protocol) it
extrapolates the full schedule, 3280 epochs x 2980 steps (59,600 training images), from
``ms_per_step`` (training steps only; validation each epoch is not included).

    python benchmarks/epoch_speed.py                                  # 784-200-200-50 VAE
    python benchmarks/epoch_speed.py --experiment iwae_vae_1layer     # the paper's 1-layer model
    python benchmarks/epoch_speed.py --experiment iwae_vae_2layer --model hvae
    python benchmarks/epoch_speed.py --variant k8=module.steps_per_batch=8
    python benchmarks/epoch_speed.py --ll --ll-images 10000           # + L_5000 over the test set
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from handwritten import run_epoch as run_hand  # benchmarks/ is on sys.path
from hydra import compose, initialize_config_dir
from timing import (
    exit_if_failed,
    record_failure,
    run_plain_lightning,
    run_vaelab_epoch,
    settle,
    write_json,
)

from vaelab.config import config_dir
from vaelab.data.transforms import dynamic_binarize

IWAE_EPOCHS = 3280  # sum of 3^i, i = 0..7 (Burda et al. 2015)
IWAE_STEPS_PER_EPOCH = 2980  # 59,600 training images (400 held out) at batch 20


def compose_cfg(args: argparse.Namespace, batch_size: int, out: Path, extra: list[str]):
    overrides = [
        f"model={args.model}",
        "data=binarized_mnist",
        "trainer.max_epochs=1",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu" if args.device == "cpu" else "trainer.accelerator=gpu",
        "test=false",
        f"paths.output_dir={out}",
        f"paths.data_dir={args.data_dir}",
        "callbacks.model_checkpoint.monitor=null",
        "~callbacks.images",  # pictures read the test split, which the benchmark leaves empty
        f"seed={args.seed}",
    ]
    if args.experiment:
        overrides.insert(0, f"experiment={args.experiment}")
    overrides += [f"data.batch_size={batch_size}", *args.overrides, *extra]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def layer_spec(cfg) -> list[tuple[int, list[int]]]:
    """The model's (latent_dim, hidden widths) per layer, read from the config, for ``hand``."""
    m = cfg.model
    if "layers" in m:
        return [(int(s.latent_dim), [int(h) for h in s.hidden]) for s in m.layers]
    return [(int(m.latent_dim), [int(h) for h in m.encoder.net.hidden])]


@contextlib.contextmanager
def plain_pytorch_environment():
    """The environment of a script that never imported Lightning, for the plain-PyTorch arms.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, which makes every Adam step of a
    CUDA build of torch on the CPU load NVML afresh (``vaelab.lit``); a hand-written script does
    not pay that, so the ``hand`` and ``bare`` arms run without it.
    """
    saved = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved


class BareLoop:
    """vaelab's model and optimizer (``instantiate(cfg.model)``, ``cfg.optimizer``) in a plain
    PyTorch loop, one optimizer step per ``step(i)``, on vaelab's gather and dynamic binarization
    of the uint8 images (``i`` modulo ``num_batches``, as in ``handwritten.HandLoop``)."""

    def __init__(self, cfg, data: torch.Tensor, device: torch.device) -> None:
        from hydra.utils import instantiate

        torch.manual_seed(cfg.seed)
        self.model = instantiate(cfg.model).to(device)
        self.opt = instantiate(cfg.optimizer)(self.model.parameters())
        self.data = data.to(device)
        self.batch_size = int(cfg.data.batch_size)
        self.g = torch.Generator(device=device).manual_seed(0)
        self.num_batches = self.data.shape[0] // self.batch_size
        self.order = torch.randperm(self.data.shape[0], device=device)

    def step(self, i: int) -> None:
        bs, i = self.batch_size, i % self.num_batches
        # index_select, as vaelab's loader gathers (the hand-written loop indexes: data[idx])
        x = dynamic_binarize(self.data.index_select(0, self.order[i * bs : (i + 1) * bs]), self.g)
        loss = self.model(x).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def run_bare(cfg, data: torch.Tensor, device: torch.device):
    """One epoch of ``BareLoop``: (epoch wall s, step intervals s, CPU s, optimizer steps)."""
    loop = BareLoop(cfg, data, device)
    n_batches = loop.num_batches
    steps: list[float] = []
    cpu0 = time.process_time()
    t0 = last = time.perf_counter()
    for i in range(n_batches):
        now = time.perf_counter()
        if i:
            steps.append(now - last)
        last = now
        loop.step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, steps, time.process_time() - cpu0, n_batches


def load_train(data_dir: str, n: int) -> torch.Tensor:
    from vaelab.data.mnist import _have_files, read_mnist_images

    if _have_files(data_dir):
        return read_mnist_images(data_dir, train=True)[:n]
    print(f"(no MNIST in {data_dir}: using random 8-bit images)")
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)


def time_ll(cfg, data_dir: str, num_images: int, k: int, batch: int) -> dict:
    """Seconds for L_k over ``num_images`` test images with the model of ``cfg`` (untrained weights;
    the cost does not depend on them)."""
    from hydra.utils import instantiate

    from vaelab.data.mnist import _have_files, read_mnist_images

    model = instantiate(cfg.model).eval()
    if _have_files(data_dir):
        x = read_mnist_images(data_dir, train=False)[:num_images]
    else:
        x = torch.randint(0, 256, (num_images, 1, 28, 28), dtype=torch.uint8)
    x = torch.bernoulli(x.float() / 255, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            model.log_likelihood(x[i : i + batch], k)
    return {
        "ll_images": int(x.shape[0]),
        "ll_k": k,
        "ll_seconds": round(time.perf_counter() - t0, 2),
    }


def summarise(runs: dict[str, list[tuple[float, list[float], float, int]]]) -> dict:
    """Per arm: medians, ms per optimizer step and the ratios to ``hand``."""
    out: dict[str, dict] = {}
    for arm, reps in runs.items():
        epochs = [r[0] for r in reps]
        steps = [s for r in reps for s in r[1]]
        n_steps = reps[0][3]
        out[arm] = {
            "epoch_s": [round(t, 3) for t in epochs],
            "epoch_median_s": round(statistics.median(epochs), 3),
            "optimizer_steps": n_steps,
            "ms_per_step": round(1e3 * statistics.median(epochs) / n_steps, 4),
            "step_median_ms": round(1e3 * statistics.median(steps), 4) if steps else None,
            "cpu_per_epoch_s": round(statistics.mean(r[2] for r in reps), 3),
        }
    hand = runs["hand"]
    for arm, reps in runs.items():
        d = out[arm]
        d["ratio"] = round(d["epoch_median_s"] / out["hand"]["epoch_median_s"], 3)
        d["pair_ratio_median"] = round(
            statistics.median(r[0] / h[0] for r, h in zip(reps, hand)), 3
        )
        if d["step_median_ms"] and out["hand"]["step_median_ms"]:
            d["step_ratio"] = round(d["step_median_ms"] / out["hand"]["step_median_ms"], 3)
        d["cpu_ratio"] = round(d["cpu_per_epoch_s"] / out["hand"]["cpu_per_epoch_s"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="vae")
    p.add_argument("--experiment", default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 100])
    p.add_argument("--reps", type=int, default=5, help="epochs timed for each arm (alternating)")
    p.add_argument("--train-images", type=int, default=55000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "data"))
    p.add_argument("--no-bare", action="store_true", help="skip the same-model bare loop")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="an extra vaelab arm: a name and comma-separated Hydra overrides",
    )
    p.add_argument(
        "--plain-lightning",
        action="store_true",
        help="also time a minimal LightningModule under a bare Trainer (Lightning's own floor)",
    )
    p.add_argument("--ll", action="store_true", help="also time L_k over the test images")
    p.add_argument("--ll-images", type=int, default=10000)
    p.add_argument("--ll-k", type=int, default=5000)
    p.add_argument("--ll-batch", type=int, default=500)
    p.add_argument(
        "--max-ratio", type=float, default=None, help="exit 1 if vaelab/hand exceeds this"
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--out",
        default=None,
        help="run folder of the vaelab arms (default: logs/benchmarks/epoch_speed/<pid>, so that "
        "concurrent runs do not share a CSV file)",
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (every vaelab arm)")
    args = p.parse_args()

    variants: dict[str, list[str]] = {}
    for v in args.variant:
        name, _, ov = v.partition("=")
        if not name or not ov:
            p.error(f"--variant wants NAME=OVERRIDE[,OVERRIDE...], got {v!r}")
        variants[name] = ov.split(",")

    out = Path(args.out or f"logs/benchmarks/epoch_speed/{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    data = load_train(args.data_dir, args.train_images)
    device = torch.device(args.device)
    result: dict = {
        "model": args.model,
        "experiment": args.experiment,
        "train_images": int(data.shape[0]),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "variants": {k: v for k, v in variants.items()},
        "batch": {},
        "errors": {},
    }
    for bs in args.batch_sizes:
        cfg = compose_cfg(args, bs, out, [])
        cfgs = {name: compose_cfg(args, bs, out, ov) for name, ov in variants.items()}
        layers = layer_spec(cfg)
        lr = float(cfg.optimizer.lr)
        runs: dict[str, list] = {"hand": []}
        if not args.no_bare:
            runs["bare"] = []
        runs["vaelab"] = []
        for name in cfgs:
            runs[name] = []
        if args.plain_lightning:
            runs["plain_lightning"] = []
        ks: dict[str, dict] = {}  # each Trainer arm's K (module.steps_per_batch as resolved)
        for _ in range(args.reps):
            with plain_pytorch_environment():
                settle()  # the previous arms' garbage is not this arm's cost
                runs["hand"].append(run_hand(data, layers, bs, lr, args.seed, device))
                if not args.no_bare:
                    settle()
                    runs["bare"].append(run_bare(cfg, data, device))
            runs["vaelab"].append(run_vaelab_epoch(cfg, data, ks.setdefault("vaelab", {})))
            for name, c in list(cfgs.items()):
                try:
                    runs[name].append(run_vaelab_epoch(c, data, ks.setdefault(name, {})))
                except Exception as e:
                    record_failure(result, f"batch {bs}, {name}", e)
                    del cfgs[name], runs[name]
            if args.plain_lightning:
                runs["plain_lightning"].append(run_plain_lightning(cfg, data))
        res = summarise(runs)
        for name, info in ks.items():
            if name in res:
                res[name]["steps_per_batch"] = info.get("steps_per_batch")
        if bs == 20:
            for d in res.values():
                d["full_iwae_schedule_h"] = round(
                    d["ms_per_step"] * IWAE_EPOCHS * IWAE_STEPS_PER_EPOCH / 3.6e6, 2
                )
        result["batch"][str(bs)] = res
        print(json.dumps({f"batch {bs}": res}, indent=1), flush=True)
        write_json(args.json, result, complete=False)
    if args.ll:
        result.update(time_ll(cfg, args.data_dir, args.ll_images, args.ll_k, args.ll_batch))
    print(json.dumps(result, indent=2))
    write_json(args.json, result, complete=True)
    exit_if_failed(result)
    if args.max_ratio is not None:
        worst = max(b["vaelab"]["ratio"] for b in result["batch"].values())
        if worst > args.max_ratio:
            print(f"FAIL: vaelab/hand ratio {worst} > {args.max_ratio}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
