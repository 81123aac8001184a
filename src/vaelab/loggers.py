"""Experiment trackers: a W&B logger that works with no account and no network, and helpers.

``logger=wandb`` builds :class:`WandbLogger` (``conf/logger/wandb.yaml``):

- **Offline by default without an API key.** ``offline: null`` (auto) runs offline when no key is
  found (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` or a netrc entry for the W&B host) or when
  ``WANDB_MODE`` says ``offline``/``disabled``; ``offline: true`` forces it. Offline runs are written
  under ``<save_dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync <dir>``.
- **Never hangs or crashes the run.** ``wandb.init`` is bounded by ``init_timeout`` seconds; if an
  online start fails (no network, bad key, server down), the run goes on offline with a warning.
- **One run per Hydra job.** Under ``--multirun`` every job is its own W&B run, grouped by sweep
  (``group = <task_name>-<sweep dir name>``, ``name = <job num>-<overrides>``); the run is
  finished at the end of each job (:func:`finish_loggers`), so the next job in the same process
  does not reuse it.
- **Resume keeps the run.** The run id is saved in every checkpoint (the
  :class:`vaelab.callbacks.wandb_resume.WandbResume` callback); ``ckpt_path=last`` or an explicit
  checkpoint continues the same W&B run (:func:`resume_loggers`).

:func:`log_images` sends pictures to every image-capable logger (W&B, TensorBoard).
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

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


# -- names under Hydra ---------------------------------------------------------------------------
def _swept_keys(hc: Any) -> set[str]:
    """Keys a sweep varies: ``hydra.sweeper.params`` (Optuna, basic) and the sweep overrides of the
    command line (``seed=0,1,2``, read back from the sweep's ``multirun.yaml``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = {str(k) for k in (hc.sweeper.get("params") or {})}
    saved = Path(str(hc.sweep.dir)) / "multirun.yaml"
    if saved.is_file():
        try:
            task = OmegaConf.load(saved).hydra.overrides.task
            for o in OverridesParser.create().parse_overrides([str(t) for t in task]):
                if o.is_sweep_override():
                    keys.add(o.key_or_group)
        except Exception as err:  # a name is never worth failing a run for
            log.debug("could not read the sweep overrides from %s: %s", saved, err)
    return keys


def _job_label(hc: Any) -> str:
    """``key=value`` of the job's swept overrides (all its overrides when they cannot be told)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = _swept_keys(hc)
    task = [str(t) for t in hc.overrides.task]
    if swept:
        try:
            parsed = OverridesParser.create().parse_overrides(task)
            chosen = [t.lstrip("+~") for t, o in zip(task, parsed) if o.key_or_group in swept]
            if chosen:
                return ",".join(chosen)
        except Exception as err:
            log.debug("could not parse the job overrides %s: %s", task, err)
    return str(hc.job.override_dirname or "default")


def hydra_run_names(task_name: str | None = None) -> dict[str, str | None]:
    """W&B ``group`` and ``name`` for the current Hydra job (``{}`` outside Hydra).

    Multirun: ``group = <task_name>-<sweep dir name>`` (one group per sweep, Optuna included) and
    ``name = <job num>-<swept overrides>`` (e.g. ``3-model.objective.beta=2,seed=1``; 120 characters
    at most). Single run: ``group = None``, ``name = <task_name>-<run dir name>``.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return {}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    task = task_name or hc.job.name
    if hc.mode == RunMode.MULTIRUN:
        return {
            "group": f"{task}-{Path(str(hc.sweep.dir)).name}",
            "name": f"{hc.job.num}-{_job_label(hc)}"[:120],
        }
    return {"group": None, "name": f"{task}-{Path(str(hc.runtime.output_dir)).name}"}


# -- the logger ----------------------------------------------------------------------------------
class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with automatic offline mode, a bounded start and resume by id.

    Args:
        save_dir: where ``wandb/`` (run files, offline runs) is written; default the run directory.
        project: W&B project.
        name: run name; None: derived from the Hydra job (:func:`hydra_run_names`).
        group: run group; None: the sweep under multirun, none for a single run.
        job_type: e.g. the task name (``train``).
        tags: run tags.
        offline: None (auto: offline without an API key), True (force offline), False (online).
        id: run id to continue (set from the checkpoint on resume; see :meth:`resume`).
        init_timeout: seconds ``wandb.init`` may take before it gives up.
        fallback_offline: when an online start fails, go on offline (True) or raise (False).
        log_model: upload checkpoints as artifacts (online only; ignored offline, with a warning).
        settings: extra ``wandb.Settings`` fields as a dict (e.g. ``{x_disable_stats: true}``).
        **kwargs: passed to ``wandb.init`` (``entity``, ``notes``, ...).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str] = ".",
        project: str | None = "vaelab",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] | None = None,
        offline: bool | None = None,
        id: str | None = None,
        init_timeout: float = 60.0,
        fallback_offline: bool = True,
        log_model: bool | str = False,
        settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        mode = resolve_mode(offline)
        if mode == "offline" and offline is None:
            log.info(
                "W&B logs offline (no API key found, or WANDB_MODE=offline); upload later with "
                "`wandb sync <run dir>/wandb/offline-run-*`"
            )
        if mode != "online" and log_model:
            log.warning(
                "W&B runs %s: log_model=%s is ignored (nothing is uploaded)", mode, log_model
            )
            log_model = False
        names = hydra_run_names(job_type)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        settings = {"init_timeout": float(init_timeout), **dict(settings or {})}
        super().__init__(
            name=name if name is not None else names.get("name"),
            save_dir=os.fspath(save_dir),
            id=id,
            project=project,
            log_model=log_model,
            offline=False,  # the mode is passed to wandb.init; Lightning's flag sets WANDB_MODE globally
            group=group if group is not None else names.get("group"),
            job_type=job_type,
            tags=list(tags) if tags else None,
            mode=mode,
            settings=settings,
            **kwargs,
        )
        self.fallback_offline = bool(fallback_offline)
        self._explicit = {"name": name is not None, "group": group is not None}

    @property
    def mode(self) -> str:
        """``online``, ``offline`` or ``disabled`` (the mode of the next or current ``wandb.init``)."""
        return str(self._wandb_init.get("mode"))

    def resume(self, run_id: str, name: str | None = None, group: str | None = None) -> None:
        """Continue the W&B run ``run_id`` (call before the first log, i.e. before ``experiment``).

        ``name`` and ``group`` (as saved in the checkpoint) are kept unless this logger was given
        its own in the config.
        """
        if self._experiment is not None:
            if self._experiment.id != run_id:
                log.warning(
                    "W&B run %s already started; cannot resume run %s", self._experiment.id, run_id
                )
            return
        self._wandb_init["id"] = run_id
        self._wandb_init["resume"] = "allow"
        self._id = run_id
        if name and not self._explicit["name"]:
            self._wandb_init["name"] = self._name = name
        if group and not self._explicit["group"]:
            self._wandb_init["group"] = group

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use; an online start that fails falls back offline."""
        if self._experiment is not None:
            return self._experiment
        try:
            return super().experiment
        except Exception as err:  # wandb raises CommError, UsageError, AuthenticationError, ...
            if self.mode != "online" or not self.fallback_offline:
                raise
            log.warning(
                "W&B could not start online (%s: %s); logging offline instead. Upload later with "
                "`wandb sync %s/wandb/offline-run-*`.",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                self._save_dir,
            )
            self._wandb_init["mode"] = "offline"
            self._log_model = False
            self._experiment = None
            return super().experiment

    @property
    def run_dir(self) -> Path | None:
        """The run's local folder (``.../wandb/offline-run-<time>-<id>``), once started."""
        if self._experiment is None or not getattr(self._experiment, "dir", None):
            return None
        return Path(self._experiment.dir).parent  # experiment.dir is <run dir>/files


def wandb_loggers(loggers: Iterable[Logger]) -> list[_LightningWandbLogger]:
    """The W&B loggers among ``loggers`` (Lightning's class or ours)."""
    return [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]


# -- lifecycle hooks for vaelab.train --------------------------------------------------------------
def tracking_callbacks(loggers: Iterable[Logger], callbacks: Iterable[Any] = ()) -> list[Any]:
    """Callbacks the loggers need: ``WandbResume`` (run id in checkpoints) when W&B is used."""
    from vaelab.callbacks.wandb_resume import WandbResume

    if not wandb_loggers(loggers) or any(isinstance(c, WandbResume) for c in callbacks):
        return []
    return [WandbResume()]


def run_id_from_checkpoint(checkpoint: Mapping[str, Any]) -> str | None:
    """The W&B run id saved by ``WandbResume`` in a loaded checkpoint dict, or None."""
    run_id = wandb_state_from_checkpoint(checkpoint).get("run_id")
    return str(run_id) if run_id else None


def wandb_state_from_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``{run_id, project, group, name}`` saved by ``WandbResume`` (``{}`` when absent)."""
    from vaelab.callbacks.wandb_resume import WandbResume

    return dict((checkpoint.get("callbacks") or {}).get(WandbResume.STATE_KEY) or {})


def resume_loggers(
    loggers: Iterable[Logger], ckpt_path: str | os.PathLike[str] | None, trust: bool = False
) -> None:
    """Point W&B loggers at the run saved in ``ckpt_path`` (before anything is logged).

    The file is read weights-only (``trust``: full unpickling, for a file you trust)."""
    targets = [lg for lg in wandb_loggers(loggers) if hasattr(lg, "resume")]
    if not ckpt_path or not targets:
        return
    from vaelab.checkpoints import read_checkpoint

    state = wandb_state_from_checkpoint(read_checkpoint(ckpt_path, trust=trust))
    if not state.get("run_id"):
        log.info("%s holds no W&B run id; a new W&B run starts", ckpt_path)
        return
    for lg in targets:
        log.info("Continuing W&B run %s (from %s)", state["run_id"], ckpt_path)
        lg.resume(str(state["run_id"]), name=state.get("name"), group=state.get("group"))


def finish_loggers(
    loggers: Iterable[Logger], summary: Mapping[str, float] | None = None, ok: bool = True
) -> None:
    """Write ``summary`` into each W&B run's summary and finish the run (rank zero only).

    Called at the end of every ``vaelab.train.train``: the next Hydra job in the same process then
    starts its own run instead of reusing this one.
    """
    for lg in wandb_loggers(loggers):
        run = lg._experiment
        if run is None or not hasattr(run, "finish"):
            continue
        try:
            if summary:
                run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
            run.finish(exit_code=0 if ok else 1)
        except Exception as err:  # a tracker must never turn a finished run into a failure
            log.warning("W&B run %s did not finish cleanly: %s", getattr(run, "id", "?"), err)
        lg._experiment = None


# -- images --------------------------------------------------------------------------------------
def _to_pil(image: Tensor | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    from torchvision.transforms.functional import to_pil_image

    x = image.detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.is_floating_point():
        x = x.float().clamp(0, 1)
    return to_pil_image(x)


def _to_chw(image: Tensor | Image.Image) -> Tensor:
    if isinstance(image, Image.Image):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image)
    x = image.detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    return x.float().clamp(0, 1) if x.is_floating_point() else x


def log_images(
    trainer: L.Trainer,
    key: str,
    images: Sequence[Tensor | Image.Image],
    step: int | None = None,
    captions: Sequence[str] | None = None,
) -> int:
    """Send images to every image-capable logger of ``trainer``; returns how many took them.

    W&B gets one ``wandb.Image`` per picture under ``key`` (``log_image``); TensorBoard gets
    ``add_image(key)`` (``key/i`` when there are several). CSV and other loggers are skipped.
    Runs on global rank zero only.

    Args:
        trainer: the Trainer whose ``loggers`` receive the images.
        key: the name, e.g. ``images/samples``.
        images: ``(C, H, W)`` or ``(H, W)`` tensors (float in [0, 1] or uint8) or PIL images.
        step: the global step (default ``trainer.global_step``).
        captions: one caption per image (W&B only).
    """
    if trainer.global_rank != 0 or not images:
        return 0
    step = trainer.global_step if step is None else int(step)
    sent = 0
    for lg in trainer.loggers:
        if isinstance(lg, _LightningWandbLogger):
            kwargs = {"caption": list(captions)} if captions else {}
            lg.log_image(key=key, images=[_to_pil(im) for im in images], step=step, **kwargs)
        elif isinstance(lg, TensorBoardLogger):
            for i, im in enumerate(images):
                tag = key if len(images) == 1 else f"{key}/{i}"
                lg.experiment.add_image(tag, _to_chw(im), global_step=step)
        else:
            continue
        sent += 1
    return sent


# -- reading an offline run ----------------------------------------------------------------------
_BLOCK = 32768
_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


def _iter_records(path: Path) -> Iterable[bytes]:
    """Records of a ``run-<id>.wandb`` file (W&B's leveldb-log format: 32 KiB blocks)."""
    data = path.read_bytes()
    ident, _magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, parts = _HEADER.size, []
    while pos + _RECORD.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _RECORD.size:  # block trailer: padding
            pos += room
            continue
        _crc, length, kind = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        parts.append(chunk)
        if kind in (1, 4):
            yield b"".join(parts)
            parts = []


def read_offline_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a local W&B run holds: run info, config, history rows, summary, media files.

    Reads ``<run_dir>/run-<id>.wandb`` with W&B's protobuf records (no network, no server), so an
    offline run can be checked before ``wandb sync``. Returns a dict with ``id``, ``group``,
    ``name``, ``job_type``, ``config`` (flat, dotted keys), ``history`` (list of dicts), ``summary``
    and ``media`` (paths under ``files/media``).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}

    def key_of(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    def value_of(item: Any) -> Any:
        try:
            return json.loads(item.value_json)
        except (ValueError, TypeError):
            return item.value_json

    for raw in _iter_records(files[-1]):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # a truncated last record of a crashed run
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            out.update(
                id=run.run_id,
                project=run.project,
                group=run.run_group,
                name=run.display_name,
                job_type=run.job_type,
                tags=list(run.tags),
                resumed=run.resumed,
            )
            for item in run.config.update:
                out["config"][key_of(item)] = value_of(item)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][key_of(item)] = value_of(item)
        elif kind == "history":
            out["history"].append({key_of(it): value_of(it) for it in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][key_of(item)] = value_of(item)
    media = run_dir / "files" / "media"
    out["media"] = sorted(p for p in media.rglob("*") if p.is_file()) if media.is_dir() else []
    return out


def offline_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Offline run folders under ``root`` (``**/wandb/offline-run-*``), oldest first."""
    runs = [p for p in Path(root).rglob("offline-run-*") if p.is_dir()]
    pattern = re.compile(r"offline-run-(\d{8}_\d{6})")
    return sorted(runs, key=lambda p: (m.group(1) if (m := pattern.search(p.name)) else "", str(p)))


__all__ = [
    "WandbLogger",
    "finish_loggers",
    "hydra_run_names",
    "log_images",
    "offline_runs",
    "read_offline_run",
    "resolve_mode",
    "resume_loggers",
    "run_id_from_checkpoint",
    "tracking_callbacks",
    "wandb_api_key_available",
    "wandb_loggers",
    "wandb_state_from_checkpoint",
]
