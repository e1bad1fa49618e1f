"""Training: configuration, the loop, checkpoints and the run folder, distributed training."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, build_model
from .loop import TrainingDiverged, evaluate_run, train

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainingDiverged",
    "build_model",
    "evaluate_run",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
