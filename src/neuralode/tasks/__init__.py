"""Training tasks: what differs between jobs (options, data, models, loss, metrics, plots),
registered by name. The loop, the command line, the Python API and the experiments all work
from this registry; a new task is a module with a :class:`Task` subclass and
:func:`register_task` (or, from another package, an entry point in the ``neuralode.tasks``
group)."""

from . import density, mnist, timeseries, trajectory  # noqa: F401  (the built-in tasks register themselves)
from .base import (
    ModelRegistry,
    Step,
    Task,
    TrainOptions,
    get_task,
    list_tasks,
    make_options,
    option,
    register_task,
    resolve_device,
)

__all__ = [
    "ModelRegistry",
    "Step",
    "Task",
    "TrainOptions",
    "get_task",
    "list_tasks",
    "make_options",
    "option",
    "register_task",
    "resolve_device",
]
