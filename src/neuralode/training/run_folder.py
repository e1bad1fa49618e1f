"""A run folder read back: its configuration (``config.json``), its checkpoint (verified), its
model with the trained weights; ``evaluate`` and ``diagnose`` of a finished or interrupted run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgumentError
from ..tasks import Task, get_task
from ..tasks.base import RESUMABLE
from .checkpoint import load_checkpoint
from .files import write_json

__all__ = [
    "CHECKPOINT",
    "diagnose_run",
    "evaluate_run",
    "load_run",
    "read_run_checkpoint",
    "run_config",
    "task_from_config",
    "upgrade_config",
    "weights_digest",
]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"

# neuralode 0.1's flat configuration (one dataclass for every dataset) → the task's options
_RENAMED = {"spiral_window": "window", "spiral_noise": "noise", "spiral_iters": "iters"}


def run_config(task: Task) -> dict[str, Any]:
    """What ``config.json`` holds: the task's name and its options."""
    return {"task": task.name, **task.options.to_dict()}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as this version stores it: options added since it was written take
    their defaults. Runs written before tasks existed (a ``dataset`` key, every option of every
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
        options = get_task(config.get("task")).Options
    except InvalidArgumentError:
        return config  # reported by whoever reads it
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(options)
        if f.default is not dataclasses.MISSING
    }
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


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_CHECKPOINT_KEYS = {
    "model": dict,
    "optimizer": dict,
    "rng": dict,
    "epoch": int,
    "rows": list,
    "train_seconds": (int, float),
    "config": dict,
}


def read_run_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A training checkpoint, verified (digest) and checked to have a run checkpoint's fields;
    its configuration upgraded to this version's form."""
    saved = load_checkpoint(path, map_location=map_location)
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(saved.get(key), kind) or isinstance(saved.get(key), bool):
            raise CheckpointError(
                f"{path} is not a neuralode training checkpoint: its {key!r} entry is "
                f"{type(saved.get(key)).__name__ if key in saved else 'missing'}"
            )
    if not all(isinstance(v, torch.Tensor) for v in saved["model"].values()):
        raise CheckpointError(f"{path}: its model entry is not a state_dict of tensors")
    best = saved.get("best")
    if best is not None and not (
        isinstance(best, dict)
        and isinstance(best.get("model"), dict)
        and isinstance(best.get("epoch"), int)
    ):
        raise CheckpointError(f"{path}: its 'best' entry is not a best-checkpoint record")
    saved["config"] = upgrade_config(saved["config"])
    task_from_config(saved["config"], str(path))
    return saved


def load_weights(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load weights into ``model``: every tensor present, of the right shape, and finite."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{path} does not hold weights of this run's model "
            f"({first[0] if first else type(err).__name__} ...); the checkpoint belongs to "
            "another model or was altered"
        ) from err
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path}: the weights {bad[:3]} hold NaN or infinite values, so the model cannot "
            "be used; the run diverged before this checkpoint was written — retrain with a "
            "smaller --lr, or restore an earlier checkpoint"
        )


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The configuration keys, other than those a resume may change, where two runs differ."""
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE and a.get(k) != b.get(k))


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); the run folder is damaged") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the run folder is damaged")
    return data


def _check_same_run(run: Path, saved: dict[str, Any]) -> None:
    """The checkpoint must be this run's: its configuration is the one in config.json (up to
    the options that may change on resume)."""
    cfg = read_json(run / "config.json")
    if cfg is None:
        return
    cfg = upgrade_config(cfg)
    old = saved["config"]
    diff = differing(cfg, old)
    if diff:
        details = ", ".join(f"{k}: {old.get(k)!r} vs {cfg.get(k)!r}" for k in diff[:4])
        raise CheckpointError(
            f"{run / CHECKPOINT} does not belong to the run in {run}: its configuration differs "
            f"from config.json ({details}); it was copied from another run"
        )


def _check_summary_digest(run: Path, saved: dict[str, Any], model: nn.Module) -> None:
    """A finished run's summary.json records the SHA-256 of its final weights: check it."""
    summary = read_json(run / "summary.json")
    if summary is None or summary.get("epochs") != saved["epoch"]:
        return  # not finished, or resumed since: the summary describes another checkpoint
    recorded = summary.get("weights_sha256")
    if recorded is not None and recorded != weights_digest(model):
        raise CheckpointError(
            f"the weights in {run / CHECKPOINT} are not the ones summary.json records "
            "(weights_sha256 differs): the checkpoint was replaced or altered after training"
        )


def load_run(
    run_dir: str | os.PathLike, data_dir: str | None = None, best: bool = False
) -> tuple[nn.Module, Task]:
    """The model of a run folder with its trained weights (the last epoch's, or with
    ``best=True`` those of the best validation epoch), and its task."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a run folder (no such folder)")
    if not (run / "config.json").is_file() and not (run / CHECKPOINT).is_file():
        raise CheckpointError(f"{run} is not a run folder (no config.json or {CHECKPOINT})")
    saved = read_run_checkpoint(run / CHECKPOINT)
    task = task_from_config(saved["config"], str(run / CHECKPOINT))
    _check_same_run(run, saved)
    if data_dir is not None:
        if not hasattr(task.options, "data_dir"):
            raise InvalidArgumentError(f"task {task.name!r} reads no data folder (--data-dir)")
        task.options.data_dir = data_dir
        task.options.normalize()
    model = task.build_model()
    load_weights(model, saved["model"], run / CHECKPOINT)
    _check_summary_digest(run, saved, model)
    if best:
        record = saved.get("best")
        if record is None:
            raise CheckpointError(
                f"{run} has no best checkpoint: the run has no validation data (e.g. "
                "--val-fraction 0) or has not finished an epoch"
            )
        load_weights(model, record["model"], run / CHECKPOINT)
    return model, task


def evaluate_run(
    run_dir: str | os.PathLike,
    data_dir: str | None = None,
    batch_size: int | None = None,
    best: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's model on its test data with its evaluation tolerances; writes
    ``evaluation.json`` (``evaluation_best.json`` with ``best=True``) and returns the metrics."""
    run = Path(run_dir)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    model, task = load_run(run, data_dir, best)
    if batch_size is not None:
        task.options.batch_size = batch_size
    device = task.options.resolved_device()
    model.to(device)
    data = task.load_data()
    t0 = time.perf_counter()
    res: dict[str, Any] = dict(task.evaluate(model, data, "test", device))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    res["checkpoint"] = "best" if best else "last"
    res["eval_rtol"], res["eval_atol"] = task.options.eval_rtol, task.options.eval_atol
    name = "evaluation_best.json" if best else "evaluation.json"
    try:
        write_json(run / name, res)
    except OSError as err:  # a read-only run folder: the results are still returned
        logger.warning("could not save %s in %s: %s", name, run, err.strerror or err)
    return res


def diagnose_run(
    run_dir: str | os.PathLike, data_dir: str | None = None, batch_size: int = 64, best=False
):
    """The :func:`neuralode.diagnose` report of a run's model on a batch of its data."""
    from ..diagnostics import diagnose

    model, task = load_run(run_dir, data_dir, best)
    device = task.options.resolved_device()
    model.to(device)
    data = task.load_data()
    module, batch, *loss_fn = task.diagnosis_view(
        model, task.diagnosis_batch(data, batch_size), device
    )
    return diagnose(module, batch, *loss_fn)
