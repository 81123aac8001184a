"""Hydra/OmegaConf glue: resolvers and the path of the packaged configs."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from vaelab.config_check import register_resolvers as register_checks
from vaelab.optim import iwae_epochs


def config_dir() -> str:
    """Absolute path of vaelab's configs: ``conf/`` at the top of the repository, which the wheel
    ships as ``vaelab/conf`` (``pyproject.toml`` maps one onto the other; an editable install
    reads the checkout's ``conf/``).

    Users add their own config folders with Hydra's ``--config-dir DIR`` (or ``hydra.searchpath``);
    groups found there extend or override these.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parents[1] / "conf"):  # wheel, then checkout
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"vaelab's configs are neither in {package / 'conf'} (an installed wheel) nor in "
        f"{package.parents[1] / 'conf'} (a checkout): reinstall with `pip install vaelab` "
        "or, in a clone, `make install`"
    )


#: Folders of ``conf/`` that are not config groups of vaelab-train / vaelab-eval: ``reproduce/``
#: holds vaelab-reproduce's tables (read by ``vaelab.reproduce``, never composed by those apps).
NOT_GROUPS = ("hydra", "reproduce")


def config_groups() -> str:
    """``group: option, ...`` lines for ``vaelab-train --help``, one per config group of
    :func:`config_dir` (nested groups as ``a/b``), leaving out :data:`NOT_GROUPS`.

    Stands in for Hydra's ``$APP_CONFIG_GROUPS``, which lists every folder of the search path,
    ``reproduce/`` (vaelab-reproduce's tables) included. Groups added with ``--config-dir`` are
    not listed here (``--info defaults`` shows them).
    """
    root = Path(config_dir())
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and group.split("/")[0] not in NOT_GROUPS:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def unique_tag() -> str:
    """``<pid>-<4 random hex digits>``: unique among processes started in the same second on one
    machine (the pid), and across machines sharing a log folder (the random part)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """``${vaelab.iwae_epochs:N}``, ``${vaelab.prod:LIST}``, ``${vaelab.unique:}`` and
    ``${vaelab.config_groups:}`` (the help's list of groups) (idempotent).

    ``vaelab.unique`` is cached per config, like Hydra's ``now``: a run's folder name, once
    resolved, stays the same for the whole run.
    """
    resolvers = {
        "vaelab.iwae_epochs": (lambda n: iwae_epochs(int(n)), False),
        "vaelab.prod": (lambda xs: math.prod(int(x) for x in xs), False),
        "vaelab.unique": (unique_tag, True),
        "vaelab.config_groups": (config_groups, False),
    }
    register_checks()  # ${vaelab.subdir:...}: path-forming names stay inside their root
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()
