"""The Python API of training, as short as the command line::

summary = neuralode.train("mnist", out="runs/x", epochs=2)
neuralode.resume("runs/x", epochs=3)
metrics = neuralode.evaluate("runs/x")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgumentError
from ..tasks import Task, get_task, make_options
from .callbacks import Callback
from .loop import train as _train
from .run_folder import RunFolder

__all__ = ["resume", "train"]


def train(
    task: str | Task,
    out: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | dict[str, Any] | None = None,
    resume: bool | str = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    **options: Any,
) -> dict[str, Any]:
    """Train a registered task into the run folder ``out`` and return its summary.

    ``task`` is a task's name (``"mnist"``, ``"spiral"``, ``"cubic"``, see
    :func:`neuralode.tasks.list_tasks`) with its options as keywords, in the names
    ``neuralode train TASK --help`` lists (``batch_size`` for ``--batch-size``), optionally on
    top of a ``config`` file or mapping; or a :class:`~neuralode.tasks.Task` built already.
    ``resume=True`` continues the run in ``out`` (the options must match the run's);
    ``resume="auto"`` continues it if there is one and starts it otherwise.
    ``callbacks``: :class:`~neuralode.training.Callback` objects, called after the loop's own.
    """
    RunFolder(out)  # a path, checked before any other work
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise InvalidArgumentError(
                f"callbacks must be neuralode.training.Callback objects, got {type(cb).__name__}"
            )
    if isinstance(task, Task):
        if options or config is not None:
            raise InvalidArgumentError(
                "pass options either in the Task or as keywords with a task name, not both"
            )
        return _train(task, out, resume, progress, callbacks)
    runner = get_task(task)(make_options(task, config, **options))
    return _train(runner, out, resume, progress, callbacks)


def resume(
    run_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    **changes: Any,
) -> dict[str, Any]:
    """Continue the interrupted run in ``run_dir`` exactly where its last checkpoint left it,
    with its own options; ``changes`` may set only ``epochs`` (to extend a run without a
    schedule), ``device``, ``threads`` or ``data_dir``."""
    task = RunFolder(run_dir).stored_task(**changes)
    return _train(task, run_dir, True, progress, callbacks)
