"""Training tasks: what differs between jobs (options, data, models, loss, metrics, plots),
registered by name. The loop, the command line, the Python API and the experiments all work
from this registry; a new task is a module with a :class:`Task` subclass and
:func:`register_task` (or, from another package, an entry point in the ``neuralode.tasks``
group)."""

# the built-in tasks register themselves, in the order the command line lists them
from . import mnist  # noqa: F401, I001
from . import density, timeseries, trajectory  # noqa: F401
from .base import (
    TASKS,
    ModelRegistry,
    Step,
    Task,
    TrainOptions,
    evaluate_batches,
    get_task,
    list_tasks,
    make_options,
    option,
    register_task,
    resolve_device,
    with_defaults,
)

__all__ = [
    "TASKS",
    "ModelRegistry",
    "Step",
    "Task",
    "TrainOptions",
    "evaluate_batches",
    "get_task",
    "list_tasks",
    "make_options",
    "option",
    "register_task",
    "resolve_device",
    "with_defaults",
]
