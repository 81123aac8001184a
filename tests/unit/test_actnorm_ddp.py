"""ActNorm's data-dependent initialisation under 2-process DDP (gloo, CPU): identical on both ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vaelab.flows import ActNorm

ROOT = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = ActNorm(3)
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, logdet = self.norm(x)
        return (self.lin(y).squeeze(-1) - logdet).mean()


def rank_batch(rank: int) -> torch.Tensor:
    # Each rank's first batch has its own offset and spread: per-rank statistics would differ.
    g = torch.Generator().manual_seed(rank)
    return (rank * 3.0 + 1.0) + (rank + 1.0) * torch.randn(40 + 24 * rank, 3, generator=g)


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(Net())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(rank_batch(rank))  # the first training step initialises ActNorm
        init = {k: v.detach().clone() for k, v in model.module.norm.state_dict().items()}
        torch.save(init, Path(out) / f"init{rank}.pt")
        loss.backward()
        opt.step()
        torch.save(
            {k: v.detach().clone() for k, v in model.module.state_dict().items()},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(out: str) -> None:
    """Two forked ranks (spawn would re-import torch in each: ~30 s on CI)."""
    mp.start_processes(worker, args=(free_port(), out), nprocs=2, join=True, start_method="fork")


def test_actnorm_parameters_equal_on_both_ranks_after_the_first_ddp_step(tmp_path: Path) -> None:
    # The ranks fork from a fresh interpreter: torch refuses to fork a process whose autograd
    # engine already runs threads, which a test worker that ran earlier tests may have.
    code = f"from tests.unit.test_actnorm_ddp import run_ddp; run_ddp({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=600)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("norm.bias", "norm.log_scale", "lin.weight"):
        torch.testing.assert_close(r0[key], r1[key], rtol=0, atol=0, msg=key)
    # ... initialised from the statistics of the union of both first batches, not each its own.
    both = torch.cat([rank_batch(0), rank_batch(1)]).double()
    for r in (0, 1):
        init = torch.load(tmp_path / f"init{r}.pt")
        torch.testing.assert_close(init["bias"].double(), -both.mean(0), rtol=0, atol=1e-5)
        torch.testing.assert_close(
            init["log_scale"].double(), -torch.log(both.std(0, correction=0)), rtol=0, atol=1e-5
        )
