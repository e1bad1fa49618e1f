"""A run folder read back: its model with the trained weights, ``evaluate`` and ``diagnose`` of
a finished or interrupted run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from ..diagnostics import DiagnosticReport
from ..errors import CheckpointError, InvalidArgumentError
from ..tasks import Task
from .run_folder import CHECKPOINT, CONFIG, SUMMARY, RunFolder, read_json, weights_digest

__all__ = ["diagnose_run", "evaluate_run", "load_run", "load_weights"]

logger = logging.getLogger(__name__)


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


def _check_summary_digest(folder: RunFolder, epoch: int, model: nn.Module) -> None:
    """A finished run's summary.json records the SHA-256 of its final weights: check it."""
    summary = read_json(folder.file(SUMMARY))
    if summary is None or summary.get("epochs") != epoch:
        return  # not finished, or resumed since: the summary describes another checkpoint
    recorded = summary.get("weights_sha256")
    if recorded is not None and recorded != weights_digest(model):
        raise CheckpointError(
            f"the weights in {folder.file(CHECKPOINT)} are not the ones {SUMMARY} records "
            "(weights_sha256 differs): the checkpoint was replaced or altered after training"
        )


def load_run(
    run_dir: str | os.PathLike[str], data_dir: str | None = None, best: bool = False
) -> tuple[nn.Module, Task]:
    """The model of a run folder with its trained weights (the last epoch's, or with
    ``best=True`` those of the best validation epoch), and its task."""
    folder = RunFolder(run_dir)
    run = folder.path
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a run folder (no such folder)")
    if not folder.file(CONFIG).is_file() and not folder.file(CHECKPOINT).is_file():
        raise CheckpointError(f"{run} is not a run folder (no {CONFIG} or {CHECKPOINT})")
    state = folder.load_state()
    from .run_folder import task_from_config

    task = task_from_config(state.config, str(folder.file(CHECKPOINT)))
    if data_dir is not None:
        if not hasattr(task.options, "data_dir"):
            raise InvalidArgumentError(f"task {task.name!r} reads no data folder (--data-dir)")
        task.options.data_dir = data_dir
        task.options.normalize()
    model = task.build_model()
    load_weights(model, state.model, folder.file(CHECKPOINT))
    _check_summary_digest(folder, state.epoch, model)
    if best:
        if state.best is None:
            raise CheckpointError(
                f"{run} has no best checkpoint: the run has no validation data (e.g. "
                "--val-fraction 0) or has not finished an epoch"
            )
        load_weights(model, state.best.model, folder.file(CHECKPOINT))
    return model, task


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data_dir: str | None = None,
    batch_size: int | None = None,
    best: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's model on its test data with its evaluation tolerances; writes
    ``evaluation.json`` (``evaluation_best.json`` with ``best=True``) and returns the metrics."""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    model, task = load_run(run_dir, data_dir, best)
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
    folder = RunFolder(run_dir)
    try:
        from ..files import write_json

        write_json(folder.file(name), res)
    except OSError as err:  # a read-only run folder: the results are still returned
        logger.warning("could not save %s in %s: %s", name, folder.path, err.strerror or err)
    return res


def diagnose_run(
    run_dir: str | os.PathLike[str],
    data_dir: str | None = None,
    batch_size: int = 64,
    best: bool = False,
) -> DiagnosticReport:
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
