"""Check a composed config once, before anything loads: types and ranges per key, and path-forming
names that stay inside their root.

``vaelab-train``, ``vaelab-eval`` and ``vaelab-compress`` call :func:`check_values` first thing, so
``trainer.max_epochs=abc``, ``model.latent_dim=-3``, ``data.batch_size=0`` or ``optimizer.lr=nan``
are refused in one short message that names the key, the value, what is allowed and a command that
works, instead of an ``AssertionError`` from Lightning's fit loop after the data loaded (or
"negative dimension -6" from torch). The per-key rules are :data:`RULES` (patterns over the
flattened key, ``*`` matching any part of it); keys the rules do not name are left to the classes
they configure. :func:`vaelab.tasks.short_errors` prints such refusals (and vaelab's other errors about the
user's input: a refused checkpoint or stored config, a missing or damaged data file) without a
traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback, as for any Hydra app.

Path-forming names (``task_name``, which forms ``${paths.log_dir}/<task_name>/runs/...`` and the
folder ``ckpt_path=last`` searches) must be relative and must not climb out of their root:
``task_name=../../x`` or ``task_name=/elsewhere`` are refused by :func:`check_name`, also while
Hydra forms the run folder (the ``vaelab.subdir`` resolver in ``conf/hydra/default.yaml``), i.e.
before any folder is made. Paths the user gives as paths (``paths.log_dir``, ``ckpt_path``,
``file``, ``output``) are theirs to choose.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigValueError(ValueError):
    """A config value of the wrong type or out of range, or a path-forming name that escapes."""


# -- path-forming names ----------------------------------------------------------------------------
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+@-]*$")


def name_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a folder name under a root (None when it can)."""
    if not isinstance(value, str) or not value:
        return f"a non-empty name is needed, got {type(value).__name__} {value!r}"
    if value.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", value):
        return "an absolute path would leave the log folder"
    parts = value.split("/")
    for part in parts:
        if part in (".", ".."):
            return f"{part!r} would climb out of the log folder"
        if not _PART.match(part):
            return f"{part!r} holds characters other than letters, digits and _ . , = + @ -"
    return None


def check_name(key: str, value: Any, root: str = "paths.log_dir") -> str:
    """Refuse a path-forming name that is absolute, climbs (``..``) or holds odd characters.

    Raises:
        ConfigValueError: naming the key, the value and what is allowed.
    """
    why = name_problem(value)
    if why:
        raise ConfigValueError(
            f"{key}={value!r} is not allowed: {why}. {key} names a folder under {root}: letters, "
            "digits and _ . , = + @ - in one or more parts joined by '/', no '..', not absolute. "
            f"To write elsewhere, set {root}=<folder> instead, e.g. {key}=my_run {root}=/data/logs"
        )
    return str(value)


def _subdir_resolver(value: Any, key: str = "task_name") -> str:
    try:
        return check_name(str(key), value)
    except ConfigValueError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # Hydra resolves the run folder before the task runs, outside short_errors, and would
        # print a 60-line traceback of OmegaConf's grammar around this line: say it and stop.
        print(f"{_prog()}: error: {err}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "vaelab"


def register_resolvers() -> None:
    """``${vaelab.subdir:${task_name},task_name}``: the value, refused if it escapes (idempotent)."""
    if not OmegaConf.has_resolver("vaelab.subdir"):
        OmegaConf.register_new_resolver("vaelab.subdir", _subdir_resolver)


def check_reproduce_paths(
    table: str, budget: str, row_ids: Sequence[str], out_dir: str, out_dir_given: bool
) -> None:
    """``vaelab-reproduce``: ``table`` (a name), ``budget`` and the row ids form
    ``<out_dir>/runs/<row>``; the default ``out_dir`` (``logs/reproduce/<table>/<budget>``) must
    stay inside ``logs/reproduce`` (a table given as a ``.yaml`` path too). ``out_dir=`` given on
    the command line is the user's choice.

    Raises:
        ConfigValueError: naming the key, the value and what is allowed.
    """
    if not table.endswith((".yaml", ".yml")):
        check_name("table", table, root="logs/reproduce")
    check_name("budget", budget, root="logs/reproduce/<table>")
    for rid in row_ids:
        check_name(f"row id {rid!r} (table {table})", rid, root="<out_dir>/runs")
    if out_dir_given:
        return
    root = (Path(os.environ.get("VAELAB_ROOT", ".")) / "logs" / "reproduce").resolve()
    if not Path(out_dir).resolve().is_relative_to(root):
        raise ConfigValueError(
            f"table={table!r} budget={budget!r} form out_dir={out_dir!r}, outside {root}: pass "
            f"out_dir=<folder> for this table's runs and report, e.g. out_dir={root}/my_table"
        )


# -- types and ranges ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one key allows: ``kind`` int / float / choice / name; bounds; null; an example value."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False
    choices: tuple[Any, ...] = ()
    example: Any = None

    def problem(self, v: Any) -> str | None:
        if v is None:
            return None if self.nullable else "null"
        if self.kind == "name":
            return name_problem(v)
        if v in self.choices and not isinstance(v, bool):
            return None
        if self.kind == "choice":
            return "not one of the choices"
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"a {type(v).__name__}"
        if self.kind == "int" and not isinstance(v, int):
            return "not an integer"
        if not math.isfinite(v):
            return "not finite"
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return "too small"
        if self.high is not None and v > self.high:
            return "too large"
        return None

    def describe(self) -> str:
        if self.kind == "name":
            return "a relative folder name (letters, digits, _ . , = + @ -; no '..')"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            what += f" and <= {self.high:g}"
        extra = [repr(c) for c in self.choices] + (["null"] if self.nullable else [])
        return what + (f" (or {', '.join(extra)})" if extra else "")


def Int(low: float | None = None, high: float | None = None, **kw: Any) -> Rule:
    return Rule("int", low, high, **kw)


def Float(low: float | None = None, high: float | None = None, **kw: Any) -> Rule:
    return Rule("float", low, high, **kw)


def Choice(*choices: Any, example: Any = None) -> Rule:
    return Rule("choice", choices=choices, example=example if example is not None else choices[0])


_COMMON: dict[str, Rule] = {
    "task_name": Rule("name", example="my_run"),
    "seed": Int(nullable=True, example=0),
    "trainer.max_epochs": Int(-1, nullable=True, example=10),
    "trainer.min_epochs": Int(0, nullable=True, example=1),
    "trainer.max_steps": Int(-1, nullable=True, example=-1),
    "trainer.check_val_every_n_epoch": Int(1, nullable=True, example=1),
    "trainer.log_every_n_steps": Int(1, nullable=True, example=50),
    "trainer.num_nodes": Int(1, example=1),
    "trainer.accumulate_grad_batches": Int(1, example=1),
    "trainer.gradient_clip_val": Float(0, nullable=True, example=1.0),
    "trainer.limit_*_batches": Float(0, nullable=True, example=1.0),
    "trainer.num_sanity_val_steps": Int(-1, nullable=True, example=0),
}

#: Per entry point: flattened-key pattern -> rule (``*`` matches any part of a key, list items are
#: ``key[i]``). The first matching pattern decides.
RULES: dict[str, dict[str, Rule]] = {
    "train": {
        **_COMMON,
        "data.batch_size": Int(1, example=100),
        "data.eval_batch_size": Int(1, example=500),
        "data.val_size": Int(0, example=5000),
        "model*latent_dim": Int(1, example=50),
        # VDM's schedule network: 0 hidden units is the linear schedule (model=vdm_linear).
        "model.schedule.hidden": Int(0, example=1024),
        "model*.hidden*": Int(1, example=200),
        "model*.num_scales": Int(1, example=2),
        "model*.num_blocks": Int(1, example=8),
        "model*.objective.beta": Float(0, example=1.0),
        "model*.objective.iwae_samples": Int(1, example=1),
        "model*.objective.elbo_samples": Int(1, example=1),
        "model*.objective.warmup_steps": Int(0, example=0),
        "optimizer.lr": Float(0, example=0.001),  # 0: frozen weights (torch allows it)
        "optimizer.weight_decay": Float(0, example=0.0),
        "optimizer.eps": Float(0, low_open=True, example=1e-8),
        "eval.num_samples": Int(1, example=5000),
        "eval.val_num_samples": Int(1, example=100),
        "module.steps_per_batch": Int(1, choices=("auto",), example="auto"),
    },
    "eval": {
        **_COMMON,
        "eval.num_samples": Int(1, example=5000),
        "eval.split": Choice("test", "val"),
        "eval.seed": Int(example=1234),
    },
    "compress": {
        **_COMMON,
        "mode": Choice("compress", "decompress"),
        "split": Choice("test", "val"),
        "num_images": Int(1, nullable=True, example=100),
        "elbo_samples": Int(1, example=10),
        "coder.order": Choice("bitswap", "bbans"),
        "coder.prior_prec": Int(1, 24, example=8),
        "coder.latent_prec": Int(1, 24, example=14),
        "coder.obs_prec": Int(1, 24, example=16),
        "coder.block_size": Int(1, example=100),
        "coder.seed": Int(example=0),
        "coder.buckets": Choice("prior", "standard"),
    },
}


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(display key, select key)`` of every leaf (and of every empty container)."""
    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none() or node._is_interpolation():
            yield key, key
            return
        for k in node:
            if not key and k == "hydra":
                continue
            sub = f"{key}.{k}" if key else str(k)
            yield from _leaves(node._get_node(k), sub)
    elif isinstance(node, ListConfig):
        if node._is_missing() or node._is_none() or node._is_interpolation():
            yield key, key
            return
        for i in range(len(node)):
            yield from _leaves(node._get_node(i), f"{key}[{i}]")
    elif not node._is_interpolation():  # an interpolation is checked where it points
        yield key, key


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except Exception:  # pragma: no cover - outside Hydra
        pass
    return []


def _working_command(prog: str, fixes: dict[str, Any], overrides: Sequence[str]) -> str:
    args = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key not in fixes:
            args.append(o)
    args += [f"{k}={'null' if v is None else v}" for k, v in fixes.items()]
    return shlex.join([prog, *args])


def check_values(cfg: DictConfig, entry: str, prog: str | None = None) -> None:
    """Check every key of ``cfg`` that :data:`RULES` ``[entry]`` names; refuse all bad ones at once.

    Args:
        cfg: the composed config.
        entry: ``train``, ``eval`` or ``compress``.
        prog: the command, for the example that works (default ``vaelab-<entry>``).

    Raises:
        ConfigValueError: one line per bad key (key, value, what is allowed) and a command that
            works.
    """
    rules = RULES[entry]
    prog = prog or f"vaelab-{entry}"
    bad: list[str] = []
    fixes: dict[str, Any] = {}
    for key, select in _leaves(cfg):
        rule = next((r for pat, r in rules.items() if fnmatch.fnmatchcase(key, pat)), None)
        if rule is None:
            continue
        try:
            value = OmegaConf.select(cfg, select, throw_on_resolution_failure=True)
        except Exception:  # ${hydra:...} outside a Hydra app: not ours to check
            continue
        if isinstance(value, DictConfig | ListConfig):
            continue
        why = rule.problem(value)
        if why is None:
            continue
        bad.append(f"{key}={value!r} is not allowed ({why}): expected {rule.describe()}")
        # the command line names a list item as key.0 (Hydra's override grammar)
        fixes[key.replace("[", ".").replace("]", "")] = rule.example
    if not bad:
        return
    cmd = _working_command(prog, fixes, _overrides())
    raise ConfigValueError("; ".join(bad) + f". A command that works: {cmd}")


# -- reporting -------------------------------------------------------------------------------------
register_resolvers()

__all__ = [
    "RULES",
    "ConfigValueError",
    "Rule",
    "check_name",
    "check_reproduce_paths",
    "check_values",
    "name_problem",
    "register_resolvers",
]
