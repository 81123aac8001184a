"""Hydra/OmegaConf glue: resolvers and the path of the packaged configs."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from vaelab.optim import iwae_epochs


def config_dir() -> str:
    """Absolute path of vaelab's packaged configs (``src/vaelab/conf``, shipped in the wheel).

    Users add their own config folders with Hydra's ``--config-dir DIR`` (or ``hydra.searchpath``);
    groups found there extend or override these.
    """
    return str(Path(__file__).resolve().parent / "conf")


def unique_tag() -> str:
    """``<pid>-<4 random hex digits>``: unique among processes started in the same second on one
    machine (the pid), and across machines sharing a log folder (the random part)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """``${vaelab.iwae_epochs:N}``, ``${vaelab.prod:LIST}``, ``${vaelab.unique:}`` (idempotent).

    ``vaelab.unique`` is cached per config, like Hydra's ``now``: a run's folder name, once
    resolved, stays the same for the whole run.
    """
    resolvers = {
        "vaelab.iwae_epochs": (lambda n: iwae_epochs(int(n)), False),
        "vaelab.prod": (lambda xs: math.prod(int(x) for x in xs), False),
        "vaelab.unique": (unique_tag, True),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()
