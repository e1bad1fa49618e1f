"""Training: the generic loop and its callbacks, the run folder and its state, distributed
training, and the Python API (:func:`train`, :func:`resume`, :func:`evaluate_run`). Tasks are in
:mod:`neuralode.tasks`."""

from ..errors import CheckpointError, TrainingDiverged
from .api import resume, train
from .callbacks import (
    BatchEnd,
    BestModel,
    Callback,
    Checkpointer,
    CSVLogger,
    EpochLog,
    ExplosionWarnings,
    Pictures,
    ProgressBar,
    SummaryFile,
    TensorBoardLogger,
    default_callbacks,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import Trainer
from .run_folder import RunFolder
from .runs import diagnose_run, evaluate_run, load_run
from .state import BestRecord, RunState

__all__ = [
    "BatchEnd",
    "BestModel",
    "BestRecord",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "Checkpointer",
    "EpochLog",
    "ExplosionWarnings",
    "Pictures",
    "ProgressBar",
    "RunFolder",
    "RunState",
    "SummaryFile",
    "TensorBoardLogger",
    "Trainer",
    "TrainingDiverged",
    "default_callbacks",
    "diagnose_run",
    "evaluate_run",
    "load_checkpoint",
    "load_run",
    "resume",
    "save_checkpoint",
    "train",
]
