"""W&B state without touching the network: the mode (online with credentials, offline without)
and whether a logger's run has started."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

#: W&B API hosts whose netrc entries count as "logged in" (the default moved to CoreWeave in 0.2x).
WANDB_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com", "forge.coreweave.com")


# -- mode ----------------------------------------------------------------------------------------
def wandb_api_key_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether W&B credentials are configured, without touching the network.

    Looks at ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` and the netrc file (``NETRC`` or
    ``~/.netrc``) for the host of ``WANDB_BASE_URL`` or one of :data:`WANDB_HOSTS`.
    """
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY", "").strip():
        return True
    token = env.get("WANDB_IDENTITY_TOKEN_FILE", "")
    if token and Path(token).expanduser().is_file():
        return True
    hosts = list(WANDB_HOSTS)
    if env.get("WANDB_BASE_URL"):
        hosts.insert(0, urlsplit(env["WANDB_BASE_URL"]).netloc or env["WANDB_BASE_URL"])
    path = Path(env.get("NETRC") or Path(env.get("HOME", str(Path.home()))) / ".netrc").expanduser()
    try:
        entries = netrc.netrc(str(path))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any((creds := entries.authenticators(h)) and creds[2] for h in hosts)


def resolve_mode(offline: bool | None, environ: Mapping[str, str] | None = None) -> str:
    """The ``wandb.init`` mode: ``online``, ``offline`` or ``disabled``.

    Args:
        offline: True forces offline, False asks for online, None (auto) chooses: ``WANDB_MODE``
            when it is set, else online with an API key and offline without one.
        environ: the environment (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if offline is True:
        return "offline"
    if offline is False:
        return "online"
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "disabled":
        return "disabled"
    return "online" if wandb_api_key_available(env) else "offline"


def started_run(lg: _LightningWandbLogger) -> Any | None:
    """The W&B run ``lg`` logs to if it has started, else None (never starts one).

    Public APIs only: ``lg.version`` is the run id (Lightning never starts a run to answer it) and
    ``wandb.run`` the run of this process.
    """
    import wandb  # optional (vaelab[wandb]) and slow to import: only once a W&B logger exists

    run = wandb.run
    if run is None or not lg.version or getattr(run, "id", None) != lg.version:
        return None
    return run


__all__ = ["WANDB_HOSTS", "resolve_mode", "started_run", "wandb_api_key_available"]
