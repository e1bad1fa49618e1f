"""Training: the generic loop, checkpoints and the run folder, distributed training, and the
Python API (:func:`train`, :func:`resume`, :func:`evaluate_run`). Tasks are in
:mod:`neuralode.tasks`."""

from ..errors import CheckpointError, TrainingDiverged
from .api import resume, train
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import BatchEnd, Callback
from .run_folder import diagnose_run, evaluate_run, load_run

__all__ = [
    "BatchEnd",
    "Callback",
    "CheckpointError",
    "TrainingDiverged",
    "diagnose_run",
    "evaluate_run",
    "load_checkpoint",
    "load_run",
    "resume",
    "save_checkpoint",
    "train",
]
