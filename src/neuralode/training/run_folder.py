"""The run folder: its layout, and :class:`RunFolder`, the one object that creates, locks,
opens and resumes one.

A run folder holds ``config.json`` (the run's options), ``checkpoint.pt`` (a
:class:`~.state.RunState`, written after every epoch), ``best.pt`` (the best validation epoch's
weights), ``metrics.csv`` (a row per epoch), ``summary.json`` (written at the end), pictures
and ``.lock`` (the lock a writing process holds). Nothing a user saved is touched: a folder
that is not a neuralode run, or holds another task's run, is refused before anything is
written; a run is continued only where the user asks for it; no file is written through a
symbolic link; and a checkpoint without a digest is checked against what the folder still
records before it is trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, InvalidArgumentError, InvalidTypeError
from ..files import RunLock, atomic_write, check_folder, remove_stale_temporaries, write_json
from ..tasks import Task, get_task
from ..tasks.base import RESUMABLE
from .checkpoint import load_checkpoint, save_checkpoint
from .state import RunState

__all__ = [
    "BEST",
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "RunFolder",
    "differing",
    "read_json",
    "run_config",
    "task_from_config",
    "upgrade_config",
    "weights_digest",
]

logger = logging.getLogger(__name__)

# the layout: every file a run folder holds, named once
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
DIAGNOSIS = "diagnosis.txt"

# neuralode 0.1's flat configuration (one dataclass for every dataset) → the task's options
_RENAMED = {"spiral_window": "window", "spiral_noise": "noise", "spiral_iters": "iters"}


def run_config(task: Task) -> dict[str, Any]:
    """What ``config.json`` holds: the task's name and its options."""
    return {"task": task.name, **task.options.to_dict()}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as this version stores it: options added since it was written take
    what the run was made with (the task's ``legacy_options``: an option whose default changed
    when it was added keeps the old behaviour), else their defaults. Runs written before tasks
    existed (a ``dataset`` key, every option of every
    dataset) keep evaluating and resuming: the options their task does not have are dropped,
    renamed ones renamed, and ``val_fraction`` is 0 (they had no validation split)."""
    config = dict(config)
    if "task" not in config and "dataset" in config:
        name = config.pop("dataset")
        fields = set(get_task(name).Options.__dataclass_fields__)
        old, config = config, {"task": name}
        for key, value in old.items():
            key = _RENAMED.get(key, key)
            if key in fields:
                config[key] = value
        if "val_fraction" in fields:
            config["val_fraction"] = 0.0
    try:
        task = get_task(str(config.get("task")))
    except InvalidArgumentError:
        return config  # reported by whoever reads it
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(task.Options)
        if f.default is not dataclasses.MISSING
    }
    defaults.update(task.legacy_config(config))
    return {"task": config["task"], **{k: v for k, v in defaults.items() if k not in config},
            **{k: v for k, v in config.items() if k != "task"}}  # fmt: skip


def task_from_config(config: dict[str, Any], where: str) -> Task:
    """The task a stored configuration describes (types checked, not re-validated)."""
    config = upgrade_config(dict(config))
    name = config.pop("task", None)
    try:
        cls = get_task(name)
        options = cls.Options.from_dict(config)
    except InvalidArgumentError as err:
        raise CheckpointError(
            f"{where}: the configuration stored with it is invalid: {err}"
        ) from err
    return cls(options)


def weights_digest(model: nn.Module | dict[str, Any]) -> str:
    """The SHA-256 of a model's weights (or of a state dict), as ``summary.json`` records it."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The configuration keys, other than those a resume may change, where two runs differ."""
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE and a.get(k) != b.get(k))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` where there is no such file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); the run folder is damaged") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the run folder is damaged")
    return data


# ---------------------------------------------------------------------------- the folder


class RunFolder:
    """One run folder. :meth:`start` decides, in one place, what a training command does with
    it: a new run (the folder is new or empty), the continuation of its run (``resume``
    asked, a checkpoint there), the restart of a run stopped in its first epoch (``resume``
    asked, only its ``config.json`` there), or a refusal with the reason and the fix; it holds
    the folder's lock from then until :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
            raise InvalidTypeError(
                f"the run folder must be a path (a str or os.PathLike[str], e.g. 'runs/x'), got "
                f"{type(path).__name__}"
            )
        self.path = check_folder(path)
        self._lock = RunLock(self.path)
        self.created = False  # this process made the folder (a failed start removes it)
        self.started = False  # the run's first epoch began (from then on the folder is kept)
        self.checkpointed = False  # a checkpoint was written by this process

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ what is there
    def stored_config(self, task: str | None = None) -> dict[str, Any] | None:
        """The run's configuration (``config.json``, else the checkpoint's), upgraded; ``None``
        where the folder holds no run of ours. ``task``: refuse a run of another task."""
        config = read_json(self.file(CONFIG)) if self.path.is_dir() else None
        if config is None and self.file(CHECKPOINT).is_file():
            config = RunState.load(self.file(CHECKPOINT)).config
        if config is None:
            return None
        if not _is_run_config(config):
            raise self._foreign(f"its {CONFIG} is not a neuralode run's configuration")
        config = upgrade_config(config)
        if task is not None and config["task"] != task:
            raise InvalidArgumentError(
                f"{self.path} holds a run of the task {config['task']!r}, not {task!r}; "
                f"nothing in it was touched. Choose another --out, or continue that run with "
                f"neuralode resume {self.path}"
            )
        return config

    def stored_task(self, **changes: Any) -> Task:
        """The task of the run here, with ``changes`` (only what a resume may change)."""
        from ..tasks import make_options

        bad = sorted(set(changes) - set(RESUMABLE))
        if bad:
            raise InvalidArgumentError(
                f"a resumed run keeps its options; only {', '.join(RESUMABLE)} may change, not "
                f"{', '.join(bad)}"
            )
        config = self.stored_config()
        if config is None:
            raise CheckpointError(
                f"no run to resume in {self.path} (no {CONFIG} or {CHECKPOINT}); start it with "
                "neuralode train TASK --out ..."
            )
        config = dict(config)
        name = config.pop("task")
        return get_task(name)(make_options(name, config, **changes))

    def _foreign(self, why: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"{self.path} is not a neuralode run folder ({why}); nothing in it was touched. "
            "Choose another --out (a new or empty folder)"
        )

    def _inspect(self, task: Task) -> str:
        """``"new"`` (no folder, or an empty one), ``"run"`` (a checkpoint of this task's run),
        ``"unstarted"`` (this task's ``config.json`` without a checkpoint); anything else is
        refused before a file is written."""
        if not self.path.exists():
            return "new"
        entries = [p.name for p in self.path.iterdir() if p.name != RunLock.NAME]
        if not entries:
            return "new"
        config = read_json(self.file(CONFIG)) if self.file(CONFIG).is_file() else None
        if config is None and not self.file(CHECKPOINT).is_file():
            shown = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
            raise self._foreign(f"it holds {shown} and no {CONFIG} or {CHECKPOINT} of a run")
        self.stored_config(task.name)
        return "run" if self.file(CHECKPOINT).is_file() else "unstarted"

    # ------------------------------------------------------------------ starting
    def start(self, task: Task, resume: bool | str, lock: bool = True) -> RunState | None:
        """Take the folder for ``task``: the state to continue from, or ``None`` for a run
        from its beginning. ``resume``: continue the run here (``True``), start a new one
        (``False``), or whichever the folder holds (``"auto"``: an interrupted run continues).
        ``lock``: hold the folder's lock (the writing process)."""
        if resume not in (True, False, "auto"):
            raise InvalidArgumentError(
                f"resume must be True, False or 'auto' (continue whatever run the folder holds), "
                f"got {resume!r}"
            )
        kind = self._inspect(task)
        if resume == "auto":
            resume = kind != "new"
        if kind == "run" and not resume:
            raise CheckpointError(
                f"{self.path} already holds a run; pass --resume to continue it, or choose "
                "another --out"
            )
        if kind == "unstarted" and not resume:
            raise CheckpointError(
                f"{self.path} holds a run stopped in its first epoch (no {CHECKPOINT}); pass "
                "--resume to start it again, or choose another --out"
            )
        if kind == "new" and resume:
            raise CheckpointError(
                f"--resume: no run to resume in {self.path} (no {CHECKPOINT}); start it without "
                "--resume"
            )
        self.created = not self.path.exists()
        if lock:
            self._lock.acquire()  # (refuses a link; held until close, released if killed)
            stale = remove_stale_temporaries(self.path)
            if stale:
                logger.info("removed temporary files of an interrupted write: %s", stale)
        if kind == "new":
            return None
        self._check_config(task)
        if kind == "unstarted":
            # nothing was trained, so the same run starts again from its beginning (its seed
            # makes it the run it would have been)
            logger.info("%s: no epoch had finished; starting the run from its beginning", self.path)
            return None
        return self.load_state(task)

    def _check_config(self, task: Task) -> None:
        old, new = self.stored_config() or {}, run_config(task)
        diff = differing(new, old)
        if diff:
            details = ", ".join(f"{k}: run has {old.get(k)!r}, now {new.get(k)!r}" for k in diff)
            raise CheckpointError(
                f"--resume: the run in {self.path} was made with a different configuration "
                f"({details}); resume with the same options, or start a new run with another --out"
            )

    def load_state(self, task: Task | None = None, map_location: Any = "cpu") -> RunState:
        """The checkpoint, verified: by its digest, or (a file from before digests) against
        the weights ``summary.json`` records; its configuration must be ``config.json``'s."""
        path = self.file(CHECKPOINT)
        state = RunState.load(path, map_location=map_location)
        state.config = upgrade_config(state.config)
        task_from_config(state.config, str(path))
        config = read_json(self.file(CONFIG))
        if config is not None and differing(upgrade_config(config), state.config):
            details = ", ".join(differing(upgrade_config(config), state.config)[:4])
            raise CheckpointError(
                f"{path} does not belong to the run in {self.path}: its configuration differs "
                f"from {CONFIG} ({details}); it was copied from another run"
            )
        if not state.verified:
            self._check_unverified(state)
        return state

    def _check_unverified(self, state: RunState) -> None:
        """A checkpoint without a digest: the weights must be those ``summary.json`` records
        for its epoch, where it records them."""
        summary = read_json(self.file(SUMMARY))
        recorded = summary.get("weights_sha256") if summary else None
        if recorded is None or summary is None or summary.get("epochs") != state.epoch:
            logger.warning(
                "%s has no digest (an older format) and the folder records no weights of its "
                "epoch to check it against; it is used as it is",
                self.file(CHECKPOINT),
            )
            return
        if recorded != weights_digest(state.model):
            raise CheckpointError(
                f"{self.file(CHECKPOINT)} has no digest (an older format), and its weights are not "
                f"the ones {SUMMARY} records for its epoch (weights_sha256 differs): it was "
                "altered or replaced after training. Restore the checkpoint from a backup, or "
                "start a new run; to use the altered file anyway, delete summary.json"
            )

    # ------------------------------------------------------------------ writing
    def write_config(self, task: Task) -> None:
        write_json(self.file(CONFIG), run_config(task))

    def save_state(self, state: RunState) -> None:
        state.save(self.file(CHECKPOINT))
        self.checkpointed = True

    def save_best(self, state: RunState) -> None:
        """``best.pt``: the best epoch's weights, as a checkpoint of their own."""
        best = state.best
        if best is None:
            raise RuntimeError("save_best needs a run state with a best epoch")
        save_checkpoint(
            self.file(BEST),
            {
                "model": best.model,
                "epoch": best.epoch,
                "metric": best.metric,
                "value": best.value,
                "config": state.config,
            },
        )

    def sync_best(self, state: RunState) -> None:
        """On resume: rewrite ``best.pt`` from the checkpoint's record (the authority) if a
        kill between the two writes left it behind, or it is missing or damaged."""
        if state.best is None:
            return
        try:
            if load_checkpoint(self.file(BEST)).get("epoch") == state.best.epoch:
                return
        except CheckpointError:
            pass  # missing or damaged: rewritten below
        self.save_best(state)

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.file(name), lambda fh: fh.write(text.encode()))

    # ------------------------------------------------------------------ ending
    def close(self, failed: bool = False, interrupted: bool = False) -> None:
        """Release the lock. A start that failed (not an interruption) in a folder this process
        made, before its first epoch began, leaves nothing behind."""
        try:
            if failed and not interrupted and self.created and not self.started:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._lock.release()


def _is_run_config(config: dict[str, Any]) -> bool:
    """A configuration neuralode wrote: it names a registered task (or, from before tasks, a
    dataset)."""
    name = config.get("task", config.get("dataset"))
    if not isinstance(name, str):
        return False
    try:
        get_task(name)
    except InvalidArgumentError:
        return False
    return True
