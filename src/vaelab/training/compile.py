"""``module.compile``: the model's training forward through ``torch.compile`` (inductor).

:func:`training_forward` decides, once per module, what the training steps call: the model
itself (eager) or its compiled forward, primed by one eager forward. Evaluation stays eager.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from vaelab.models.base import GenerativeModel, Terms

COMPILE_CHOICES = (True, False, "cpu")


def check_compile(compile: bool | str) -> bool | str:
    """``True``, ``False`` or ``"cpu"`` (compile when training on a CPU); refuses the rest."""
    if compile not in COMPILE_CHOICES:
        raise ValueError(
            f"compile must be true, false or cpu (compile when training on a CPU), got {compile!r}"
        )
    return compile if compile == "cpu" else bool(compile)


def cxx_names() -> tuple[str, ...]:
    """The C++ compilers inductor searches on a CPU (``config.cpp.cxx``: ``$CXX`` or ``g++``)."""
    import torch._inductor.config as inductor_config

    names = inductor_config.cpp.cxx
    return tuple(n for n in (names if isinstance(names, (list, tuple)) else (names,)) if n)


def cpu_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU, or None if it finds none.

    Asks inductor itself (``cpp_builder.get_cpp_compiler``, private, standing in for a public
    "which compiler would you use" that torch does not have: it runs ``--version`` on each of
    :func:`cxx_names`); if that function is gone, looks the names up on ``PATH``.
    """
    try:
        from torch._inductor import cpp_builder, exc

        search = cpp_builder.get_cpp_compiler
    except (ImportError, AttributeError):  # pragma: no cover - another inductor
        import shutil

        return next((n for n in cxx_names() if shutil.which(n)), None)
    try:
        return search()
    except (exc.InvalidCxxCompiler, OSError):
        return None


def _cpu_compiler_or_eager(compile: bool | str) -> bool:
    """Whether inductor has a C++ compiler for the CPU; without one, ``compile: cpu`` (the
    IWAE experiments' default) trains eager with a warning and ``compile: true`` is refused,
    both at the first training batch, before any step, not with inductor's error inside it."""
    if cpu_compiler() is not None:
        return True
    fix = "install one (e.g. `apt install g++`) or point CXX at it, or set module.compile=false"
    looked = ", ".join(cxx_names()) or "none"
    if compile is True:
        raise RuntimeError(
            f"module.compile=true on a CPU needs a C++ compiler for torch.compile (inductor) "
            f"and none was found (looked for {looked}): {fix}"
        )
    warnings.warn(
        f"module.compile=cpu: no C++ compiler for torch.compile on this machine (looked for "
        f"{looked}), so it trains eager (slower; equal up to float rounding). To compile, "
        f"{fix.split(', or ')[0]}; module.compile=false silences this",
        stacklevel=3,
    )
    return False


def training_forward(
    model: GenerativeModel, compile: bool | str, device: torch.device
) -> Callable[[Tensor], Terms]:
    """What the training steps call on a minibatch: ``model`` or its compiled forward.

    Compiled when ``compile`` is ``True``, or ``"cpu"`` and ``device`` is a CPU (where it was
    measured faster, docs "Speed"); on a CPU only if inductor finds a C++ compiler.
    """
    on = compile is True or (compile == "cpu" and device.type == "cpu")
    if on and device.type == "cpu":
        on = _cpu_compiler_or_eager(compile)
    return compiled_forward(model, compile) if on else model


def compiled_forward(model: GenerativeModel, label: object = True) -> Callable[[Tensor], Terms]:
    """``torch.compile(model)``, primed by one eager forward of the first batch.

    Traced on the first call, two things break the graph and then fail its guards, so the
    whole forward was compiled twice: the model's once-only check of the data values (a
    data-dependent ``bool(bad.any())``, then the flag it sets) and torch's first
    ``kl_divergence`` for a pair of types (``_dispatch_kl`` searches the registry with
    ``min`` over a generator, then memoises). The priming forward runs both eagerly, without
    autograd and with the random state put back (``torch.random.fork_rng``), so the training
    steps draw exactly what they would have drawn without it.
    """
    compiled = torch.compile(model)
    primed = False

    def forward(x: Tensor) -> Terms:
        nonlocal primed
        if not primed:
            rank_zero_info(
                f"module.compile={label}: compiling the training forward with "
                f"torch.compile on {x.device.type} (once per run: 10-60 s on 2 CPU cores, "
                "less with inductor's cache warm)"
            )
            devices = [x.device] if x.device.type != "cpu" else []
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                model(x)
            primed = True
        return compiled(x)

    return forward


__all__ = [
    "COMPILE_CHOICES",
    "check_compile",
    "compiled_forward",
    "cpu_compiler",
    "training_forward",
]
