"""neuralode: Neural Ordinary Differential Equations for PyTorch.

Solving (torchdiffeq-compatible): :func:`odeint`, :func:`odeint_adjoint`, :class:`SolveStats`.
Modelling: dynamics (:class:`ODEFunc`, ...), blocks (:class:`NeuralODEBlock`, ...),
regularizers, models (:func:`create_model`) and :func:`diagnose`.
Training (tasks by name, see :mod:`neuralode.tasks`): :func:`train`, :func:`resume`,
:func:`evaluate`, :func:`load_run`.
"""

from .blocks import (
    HybridNeuralODE,
    MultiScaleNeuralODE,
    NeuralODEBlock,
    ResidualStack,
    TutorialMultiScaleODE,
    ode_blocks,
    regularization_loss,
    solve_stats,
)
from .diagnostics import DiagnosticReport, diagnose
from .dynamics import (
    ACTIVATIONS,
    ConcatConv2d,
    ConvODEFunc,
    HypernetODEFunc,
    ODEFunc,
    TimeConcatODEFunc,
    small_init_,
)
from .errors import (
    NeuralODEError,
    NonFiniteStateError,
    SolverError,
    StepSizeUnderflowError,
    TooManyStepsError,
)
from .models import (
    NeuralODEClassifier,
    ODENet,
    ODENetResNet,
    ResNetClassifier,
    create_model,
    list_models,
)
from .registry import Registry
from .regularizers import AbstractRegularizer, JacobianFrobenius, KineticEnergy
from .solvers import (
    AbstractBackend,
    Recording,
    SolveStats,
    available_backends,
    get_default_backend,
    odeint,
    odeint_adjoint,
    odeint_dense,
    odeint_event,
    record,
    register_backend,
    set_default_backend,
    solve,
)
from .tasks import list_tasks
from .training import diagnose_run, load_run, resume, train
from .training import evaluate_run as evaluate

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "AbstractBackend",
    "AbstractRegularizer",
    "ConcatConv2d",
    "ConvODEFunc",
    "DiagnosticReport",
    "HybridNeuralODE",
    "HypernetODEFunc",
    "JacobianFrobenius",
    "KineticEnergy",
    "MultiScaleNeuralODE",
    "NeuralODEBlock",
    "NeuralODEClassifier",
    "NeuralODEError",
    "NonFiniteStateError",
    "ODEFunc",
    "ODENet",
    "ODENetResNet",
    "Recording",
    "Registry",
    "ResNetClassifier",
    "ResidualStack",
    "SolveStats",
    "SolverError",
    "StepSizeUnderflowError",
    "TimeConcatODEFunc",
    "TooManyStepsError",
    "TutorialMultiScaleODE",
    "__version__",
    "available_backends",
    "create_model",
    "diagnose",
    "diagnose_run",
    "evaluate",
    "get_default_backend",
    "list_models",
    "list_tasks",
    "load_run",
    "ode_blocks",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "record",
    "register_backend",
    "regularization_loss",
    "resume",
    "set_default_backend",
    "small_init_",
    "solve",
    "solve_stats",
    "train",
]
