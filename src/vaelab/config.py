"""Hydra/OmegaConf glue: resolvers and the path of the packaged configs."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from vaelab.optim import iwae_epochs


def config_dir() -> str:
    """Absolute path of vaelab's packaged configs (``src/vaelab/conf``, shipped in the wheel).

    Users add their own config folders with Hydra's ``--config-dir DIR`` (or ``hydra.searchpath``);
    groups found there extend or override these.
    """
    return str(Path(__file__).resolve().parent / "conf")


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
