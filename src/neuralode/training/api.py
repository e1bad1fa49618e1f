"""The Python API of training, as short as the command line::

summary = neuralode.train("mnist", out="runs/x", epochs=2)
neuralode.resume("runs/x", epochs=3)
metrics = neuralode.evaluate("runs/x")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InvalidArgumentError
from ..tasks import Task, get_task, make_options
from ..tasks.base import RESUMABLE
from .loop import Callback
from .loop import train as _train
from .run_folder import CHECKPOINT, read_json, read_run_checkpoint, upgrade_config

__all__ = ["resume", "train"]


def train(
    task: str | Task,
    out: str | os.PathLike,
    *,
    config: str | os.PathLike | dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    **options: Any,
) -> dict[str, Any]:
    """Train a registered task into the run folder ``out`` and return its summary.

    ``task`` is a task's name (``"mnist"``, ``"spiral"``, ``"cubic"``, see
    :func:`neuralode.tasks.list_tasks`) with its options as keywords, in the names
    ``neuralode train TASK --help`` lists (``batch_size`` for ``--batch-size``), optionally on
    top of a ``config`` file or mapping; or a :class:`~neuralode.tasks.Task` built already.
    ``resume=True`` continues the run in ``out`` (the options must match the run's).
    """
    if isinstance(task, Task):
        if options or config is not None:
            raise InvalidArgumentError(
                "pass options either in the Task or as keywords with a task name, not both"
            )
        return _train(task, out, resume, progress, callbacks)
    runner = get_task(task)(make_options(task, config, **options))
    return _train(runner, out, resume, progress, callbacks)


def resume(
    run_dir: str | os.PathLike,
    *,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    **changes: Any,
) -> dict[str, Any]:
    """Continue the interrupted run in ``run_dir`` exactly where its last checkpoint left it,
    with its own options; ``changes`` may set only ``epochs`` (to extend a run without a
    schedule), ``device``, ``threads`` or ``data_dir``."""
    bad = sorted(set(changes) - set(RESUMABLE))
    if bad:
        raise InvalidArgumentError(
            f"a resumed run keeps its options; only {', '.join(RESUMABLE)} may change, not "
            f"{', '.join(bad)}"
        )
    return _train(_stored_task(run_dir, **changes), run_dir, True, progress, callbacks)


def _stored_task(run_dir: str | os.PathLike, **changes: Any) -> Task:
    """The task of the run in ``run_dir`` as its ``config.json`` (or checkpoint) records it,
    with ``changes`` applied."""
    run = Path(run_dir)
    config = read_json(run / "config.json")
    if config is None:
        if not (run / CHECKPOINT).is_file():
            raise CheckpointError(
                f"no run to resume in {run} (no config.json or {CHECKPOINT}); start it with "
                "neuralode train TASK --out ..."
            )
        config = read_run_checkpoint(run / CHECKPOINT)["config"]
    config = dict(upgrade_config(config))
    name = config.pop("task", None)
    return get_task(name)(make_options(name, config, **changes))
