"""Hydra/OmegaConf glue: resolvers and the path of the packaged configs."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from vaelab.optim import iwae_epochs


def config_dir() -> str:
    """Absolute path of vaelab's ``conf/`` folder (the repository's, or the installed copy's)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"vaelab's conf/ folder was not found near {here}")


def register_resolvers() -> None:
    """``${vaelab.iwae_epochs:N}``, ``${vaelab.prod:LIST}`` (idempotent)."""
    resolvers = {
        "vaelab.iwae_epochs": lambda n: iwae_epochs(int(n)),
        "vaelab.prod": lambda xs: math.prod(int(x) for x in xs),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
