"""Rebuild objects from a checkpoint's stored config without running code the config names.

A checkpoint is data: ``read_checkpoint`` loads it weights-only, so unpickling runs nothing. Its
stored config (``vaelab_config``) is data too, but ``hydra.utils.instantiate`` calls whatever a
``_target_`` names: ``{_target_: pathlib.Path.write_text, _args_: [...]}`` writes a file,
``builtins.open``, ``torch.save``, ``os.makedirs`` or ``logging.FileHandler`` as well (Hydra's own
blocklist stops only a few names such as ``os.system``). So every place that rebuilds a run from a
checkpoint (``vaelab-eval``, ``vaelab-compress`` in both modes, ``vaelab-reproduce``'s compression
rows, notebook 02) goes through :func:`stored_config`, which allows only:

- classes defined under the prefixes of :data:`TRUSTED_TARGETS` (the packages vaelab's own configs
  name: ``vaelab.models.``, ``vaelab.nn.``, ``torch.optim.``, ``lightning.pytorch.callbacks.``,
  ...), checked both as written and where the name really leads (so
  ``vaelab.models.realnvp.torch.save`` is refused: it is ``torch.serialization.save``);
- functions named exactly in :data:`TRUSTED_TARGETS` (``vaelab.optim.iwae_schedule``);
- what the user adds explicitly: ``trusted_targets=[mypackage.,other.module.func]`` on the command
  line of ``vaelab-eval`` / ``vaelab-compress``, ``stored_config(ckpt, trusted=[...])`` in Python.
  An entry ending in ``.`` allows the classes under that prefix, any other entry exactly that
  class or function.

The whole tree is checked (nested ``_target_``, ``_args_``, ``_partial_`` nodes, lists, a ``hydra``
node), after interpolations are resolved (a ``${...}`` that resolves to a target is checked as that
target); a ``_target_`` that is not a string, an interpolation that does not resolve, or a string that
would be interpolated again when instantiated is refused too. The error names the key path, the
target and how to allow it.

The command line's own config (``vaelab-train model=...``, a user's ``--config-dir``) is not checked:
the user wrote it, and it may name any class. Only configs read back from files are untrusted.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: What a stored config may instantiate: every ``_target_`` in vaelab's ``conf/`` lies under one of
#: these (``tests/unit/test_safe_config.py`` checks it). ``.``-ended entries: classes under that
#: prefix that subclass the base named beside it (so a helper class that writes files, e.g.
#: Lightning's ``csv_logs.ExperimentWriter``, is not one); other entries: exactly that class or
#: function.
TRUSTED_BASES: dict[str, str | None] = {
    "vaelab.callbacks.": "lightning.pytorch.Callback",
    "vaelab.data.": "lightning.pytorch.LightningDataModule",
    "vaelab.distributions.": "torch.nn.Module",
    "vaelab.flows.": "torch.nn.Module",
    "vaelab.lit.": "lightning.pytorch.LightningModule",
    "vaelab.loggers.": "lightning.pytorch.loggers.Logger",
    "vaelab.models.": "torch.nn.Module",
    "vaelab.nn.": "torch.nn.Module",
    "vaelab.objectives.": "torch.nn.Module",
    "vaelab.optim.iwae_schedule": None,
    "vaelab.runlock.RunDirLockCallback": None,  # conf/hydra: a Hydra callback taking a lock
    "torch.optim.": "torch.optim.Optimizer",
    "torch.optim.lr_scheduler.": "torch.optim.lr_scheduler.LRScheduler",
    "torch.nn.": "torch.nn.Module",
    "lightning.pytorch.callbacks.": "lightning.pytorch.Callback",
    "lightning.pytorch.loggers.": "lightning.pytorch.loggers.Logger",
    "lightning.pytorch.Trainer": None,
    "lightning.pytorch.trainer.trainer.Trainer": None,
    "optuna.samplers.": "optuna.samplers.BaseSampler",
}
TRUSTED_TARGETS: tuple[str, ...] = tuple(TRUSTED_BASES)

#: The command-line key that extends :data:`TRUSTED_TARGETS`.
TRUST_KEY = "trusted_targets"

_TARGET = "_target_"


class UntrustedConfigError(ValueError):
    """A stored config names something vaelab does not rebuild from a checkpoint."""


def _may_name(name: str, entries: Iterable[str]) -> bool:
    """Whether ``name`` may be looked up at all (checked before anything is imported)."""
    return any(name.startswith(e) if e.endswith(".") else name == e for e in entries)


def _allowed(target: str, obj: Any, trusted: Sequence[str]) -> bool:
    if target in trusted:  # named exactly by the user: their explicit decision
        return True
    is_class = inspect.isclass(obj)
    is_function = inspect.isfunction(obj) and "." not in obj.__qualname__  # not a method
    if not (is_class or is_function):
        return False
    real = f"{obj.__module__}.{obj.__qualname__}"
    entries: dict[str, str | None] = {**{e: None for e in trusted}, **TRUSTED_BASES}
    exact = {e for e in entries if not e.endswith(".")}
    if target in exact and real in exact:  # lightning.pytorch.Trainer is ...trainer.trainer.Trainer
        return True
    if not is_class:
        return False
    from hydra.utils import get_object

    for prefix, base in entries.items():
        # As written and as found: `vaelab.models.realnvp.torch.nn.Module` would pass as written.
        under = prefix.endswith(".") and target.startswith(prefix) and real.startswith(prefix)
        if under and (base is None or issubclass(obj, get_object(base))):
            return True
    return False


def check_target(
    target: Any, key: str, trusted: Sequence[str] = (), where: str = "the stored config"
) -> None:
    """Refuse ``target`` unless it names a trusted class or function (see the module doc).

    Raises:
        UntrustedConfigError: naming ``key``, the target and how to allow it.
    """
    how = (
        f"If you trust this file, allow it explicitly: {TRUST_KEY}='[{target}]' on the command "
        "line (an entry ending in '.' allows the classes under that prefix), or "
        "stored_config(ckpt, trusted=[...]) in Python. Allowed without that: classes under "
        f"{', '.join(e for e in TRUSTED_TARGETS if e.endswith('.'))} and "
        f"{', '.join(e for e in TRUSTED_TARGETS if not e.endswith('.'))}"
    )
    if not isinstance(target, str):
        raise UntrustedConfigError(
            f"{where}: {key} is a {type(target).__name__} ({target!r}), not the dotted name of a "
            "class; a config read from a file must name its targets as strings. Refused."
        )
    if not _may_name(target, (*TRUSTED_TARGETS, *trusted)):
        raise UntrustedConfigError(
            f"{where}: {key} = {target!r} is not something vaelab rebuilds from a checkpoint; "
            f"instantiating it could run code (write files, open sockets). Refused. {how}"
        )
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception as err:  # ImportError, AttributeError, ValueError for a bad dotstring
        raise UntrustedConfigError(
            f"{where}: {key} = {target!r} cannot be found ({type(err).__name__}); refused"
        ) from None
    if not _allowed(target, obj, trusted):
        real = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
        raise UntrustedConfigError(
            f"{where}: {key} = {target!r} is {real} (a {type(obj).__name__}), which vaelab does "
            f"not rebuild from a checkpoint. Refused. {how}"
        )


def _check_tree(node: Any, path: str, trusted: Sequence[str], where: str) -> None:
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if k == _TARGET:
                check_target(v, key, trusted, where)
            _check_tree(v, key, trusted, where)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_tree(v, f"{path}[{i}]", trusted, where)
    elif isinstance(node, str) and "${" in node:
        # Resolved once already: instantiate would interpolate this string a second time.
        raise UntrustedConfigError(
            f"{where}: {path} = {node!r} would be interpolated again when instantiated; a config "
            "written by vaelab-train is fully resolved. Refused."
        )


def check_config(config: Any, trusted: Sequence[str] = (), where: str = "the stored config") -> Any:
    """Resolve ``config`` (a dict or DictConfig) and check every ``_target_`` in it.

    Returns:
        The resolved plain container that was checked (instantiate this, not the original).

    Raises:
        UntrustedConfigError: an untrusted or malformed target, an interpolation that does not
            resolve, or a value that would be interpolated again.
    """
    try:
        node = config if OmegaConf.is_config(config) else OmegaConf.create(config)
        plain = OmegaConf.to_container(node, resolve=True)
    except Exception as err:
        raise UntrustedConfigError(
            f"{where} cannot be resolved ({type(err).__name__}: {err}); refused"
        ) from None
    _check_tree(plain, "", list(trusted), where)
    return plain


def trusted_from(cfg: Any) -> list[str]:
    """The user's extra entries, ``cfg.trusted_targets`` (a list, or one comma-separated string)."""
    extra = cfg.get(TRUST_KEY) if cfg is not None and hasattr(cfg, "get") else None
    if not extra:
        return []
    if isinstance(extra, str):
        return [e.strip() for e in extra.split(",") if e.strip()]
    return [str(e) for e in extra]


def stored_config(
    ckpt: Mapping[str, Any], trusted: Sequence[str] = (), source: str = "checkpoint"
) -> DictConfig:
    """The checkpoint's ``vaelab_config`` as a DictConfig, every ``_target_`` in it checked.

    Args:
        ckpt: a checkpoint dict (``read_checkpoint``) holding ``vaelab_config``.
        trusted: extra entries beyond :data:`TRUSTED_TARGETS` (``trusted_targets=`` on the
            command line).
        source: the file, for the error message.

    Raises:
        UntrustedConfigError: see :func:`check_config`.
        KeyError: the checkpoint holds no ``vaelab_config``.
    """
    plain = check_config(ckpt["vaelab_config"], trusted, where=f"{source} (vaelab_config)")
    return OmegaConf.create(plain)


__all__ = [
    "TRUSTED_TARGETS",
    "TRUST_KEY",
    "UntrustedConfigError",
    "check_config",
    "check_target",
    "stored_config",
    "trusted_from",
]
