"""One training step captured in a CUDA graph and replayed (``module.cuda_graph=true``).

A small model's GPU step is a few dozen kernels of a few microseconds each; launching them one by
one from Python costs more than running them. ``GraphedStep`` records the whole optimizer step
once (forward, loss terms, backward, optional gradient-norm check, fused Adam) with
``torch.cuda.graph`` and then replays it: one launch per step, no host-device synchronisation
inside the step. It follows torch's whole-network capture recipe (torch.cuda "CUDA Graphs":
warm-up steps on a side stream, a static input buffer, gradients allocated by the captured
backward, ``capturable`` fused Adam with a tensor learning rate), with two additions that keep
what ``GenerativeModule`` promises:

- **A non-finite step changes no weight.** The eager path checks the loss on the host before the
  backward pass; a replay cannot stop half-way, so the check is done on the device: the captured
  step raises a flag when the loss (or, with ``check_grads``, the gradient norm) is not finite and
  hands it to the fused Adam kernel as ``found_inf`` (the argument ``GradScaler`` uses to skip an
  overflowing step: the update and the step count are left as they were). The flag stays raised
  until the host reads it (once per K-step block), so the block's later steps are skipped too, and
  the module then stops naming the first non-finite step: the weights are those after the step
  before it, as with the eager path.
- **Per-step values come from tensors.** Python numbers read inside the captured forward are
  frozen into the graph, so ``tracing()`` tells the objective and the prior to read their per-step
  values (the beta warm-up, the capacity) from 0-d tensors while a graph is captured, as they do
  under ``torch.compile``; the host fills those tensors and the learning rate before each replay.

``EagerStand`` is the CPU stand-in the tests use: "capturing" records the step function and each
"replay" runs it again, with the gradients reset as a replay of the captured backward writes them.
Nothing is captured on a CPU; it checks the bookkeeping around the graph (static buffers, the
deferred rows, the on-device skip of a non-finite step), which is all that can run without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

_capturing = False


def tracing() -> bool:
    """Whether the forward now running is traced (``torch.compile``) or captured (a CUDA graph):
    per-step values must then be read from tensors, since Python numbers would be frozen in.
    ``is_compiling`` first: dynamo then never reads (and guards on) the capture flag."""
    return torch.compiler.is_compiling() or _capturing


@contextlib.contextmanager
def _captured() -> Iterator[None]:
    global _capturing
    before, _capturing = _capturing, True
    try:
        yield
    finally:
        _capturing = before


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph``: capture once, replay on the current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph = torch.cuda.CUDAGraph()
        self.side_stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        """Eager steps before the capture run on a side stream (torch's capture recipe), so the
        lazy initialisation they trigger does not happen on the stream the graph is captured
        from."""
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        try:
            with torch.cuda.stream(self.side_stream):
                yield
        finally:
            current.wait_stream(self.side_stream)

    def capture(self, fn: Callable[[], None]) -> None:
        torch.cuda.synchronize(self.device)
        # thread_local: a DataLoader worker thread pinning memory meanwhile is not an error.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class EagerStand:
    """A CPU stand-in for ``CudaGraphBackend`` (tests only): runs the recorded step at each
    replay. A replay of the captured backward writes the gradients afresh (they were unset when it
    was captured), so they are unset before each run."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.fn: Callable[[], None] | None = None

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        yield

    def capture(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def replay(self) -> None:
        assert self.fn is not None
        for p in self.params:
            p.grad = None
        with _captured():
            self.fn()


class GraphedStep:
    """One optimizer step of a fixed input shape, captured and replayed.

    ``forward`` maps the static input to ``Terms``; ``values`` maps ``(loss, terms)`` to the 0-d
    tensors logged as ``train/*`` (the loss first). After each ``step`` the output vector
    ``out`` holds those values and, last, the gradient norm (0 without ``check_grads``);
    ``found`` is 1 once a step of the current block was not finite.
    """

    WARMUP_STEPS = 3  # eager steps on the side stream before the capture (torch's recipe)

    def __init__(
        self,
        forward: Callable[[Tensor], Any],
        values: Callable[[Tensor, Any], dict[str, Tensor]],
        params: list[Tensor],
        optimizer: torch.optim.Optimizer,
        backend: CudaGraphBackend | EagerStand,
        check_grads: bool,
    ) -> None:
        self.forward, self.values, self.params = forward, values, params
        self.optimizer, self.backend, self.check_grads = optimizer, backend, check_grads
        device = params[0].device
        self.found = torch.zeros((), device=device)
        self.static_x: Tensor | None = None
        self.out: Tensor | None = None
        self.names: list[str] | None = None
        self.eager_steps = 0
        self.first_shape: torch.Size | None = None  # the shape captured (the first minibatch's)
        self.captured = False
        self.replays = 0
        # Fused Adam reads found_inf from the optimizer (as GradScaler sets it) and skips the
        # update where it is non-zero. Learning rates become tensors on the device so that a
        # scheduler's new rate reaches the replays (torch's schedulers fill_ a tensor rate).
        optimizer.found_inf = self.found  # type: ignore[attr-defined]
        self.capturable_before = [g.get("capturable", False) for g in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["capturable"] = True
            if not isinstance(group["lr"], Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)

    def ready_for(self, x: Tensor) -> bool:
        """Whether ``x`` can be replayed (captured already, same shape and dtype)."""
        s = self.static_x
        return self.captured and s is not None and s.shape == x.shape and s.dtype == x.dtype

    def capture(self, x: Tensor) -> None:
        self.static_x = x.detach().clone()

        def step() -> None:
            terms = self.forward(self.static_x)
            loss = terms.loss
            vals = self.values(loss, terms)
            if self.names is None:
                self.names = list(vals)
            bad = ~torch.isfinite(loss)
            loss.backward()
            grads = [p.grad for p in self.params if p.grad is not None]
            if self.check_grads and grads:
                norm = torch.nn.utils.get_total_norm(grads)
                bad = bad | ~torch.isfinite(norm)
            else:
                norm = torch.zeros((), device=loss.device)
            torch.maximum(self.found, bad.to(self.found.dtype), out=self.found)
            self.optimizer.step()
            row = torch.stack([*(v.float() for v in vals.values()), norm.float()])
            if self.out is None:
                self.out = row.clone()
            else:
                self.out.copy_(row)

        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them
        device_type = self.static_x.device.type
        autocast = contextlib.nullcontext()
        if torch.is_autocast_enabled(device_type):  # bf16-mixed: no cast cache inside a graph
            autocast = torch.autocast(
                device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False
            )
        with _captured(), autocast:
            self.backend.capture(step)
        self.captured = True

    def step(self, x: Tensor) -> Tensor:
        """Replay the step on ``x``; returns a copy of its output vector."""
        assert self.static_x is not None
        self.static_x.copy_(x)
        self.backend.replay()
        self.replays += 1
        assert self.out is not None
        return self.out.clone()

    def release(self) -> None:
        """Give the optimizer back as it was (at the end of the fit): numbers for learning rates
        (float32-rounded, as trained), ``capturable`` as before, no ``found_inf``."""
        self.optimizer.__dict__.pop("found_inf", None)
        for group, before in zip(self.optimizer.param_groups, self.capturable_before, strict=True):
            if isinstance(group["lr"], Tensor):
                group["lr"] = float(group["lr"])
            group["capturable"] = before

    def restore_checkpoint_types(self, checkpoint: dict[str, Any]) -> None:
        """Write the learning rates as numbers and ``capturable`` as it was into a checkpoint, so
        it loads into a run without a graph exactly like one written by such a run."""
        for state in checkpoint.get("optimizer_states", [])[:1]:  # the module's one optimizer
            for group, before in zip(state["param_groups"], self.capturable_before, strict=False):
                if isinstance(group.get("lr"), Tensor):
                    group["lr"] = float(group["lr"])
                group["capturable"] = before
        for sched in checkpoint.get("lr_schedulers", []):
            for key in ("_last_lr", "base_lrs"):
                if isinstance(sched.get(key), list):
                    sched[key] = [float(v) if isinstance(v, Tensor) else v for v in sched[key]]


__all__ = ["CudaGraphBackend", "EagerStand", "GraphedStep", "tracing"]
