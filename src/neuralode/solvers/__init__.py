"""ODE solving.

Two ways in, one engine:

* torchdiffeq's interface — :func:`odeint`, :func:`odeint_adjoint`, :func:`odeint_event`,
  :func:`odeint_dense` — names and ``options`` dicts, translated into objects in one place
  (``_adapter``);
* the object API — :func:`solve` with a method (:class:`Dopri5`, :class:`Kvaerno5`,
  :class:`ExplicitRK`, ...), a step-size controller (:class:`PIController`,
  :class:`ConstantStepSize`), a gradient method (:class:`Direct`, :class:`Checkpoint`,
  :class:`Adjoint`) and a lane (:class:`Joint`, :class:`PerSample`), returning a
  :class:`Solution`.

Registries (:data:`METHODS`, :data:`GRADIENT_METHODS`, :data:`CONTROLLERS`, :data:`LANES`,
:data:`BACKENDS`) map names to these objects; :func:`record` collects the statistics of every
solve in a block of code.
"""

from ._adapter import OPTIONS, NativeBackend, odeint, odeint_adjoint
from ._adjoint import Adjoint
from ._backends import (
    BACKENDS,
    AbstractBackend,
    AdjointRequest,
    SolveRequest,
    TorchdiffeqBackend,
    available_backends,
    get_backend,
    get_default_backend,
    register_backend,
    set_default_backend,
)
from ._checkpoint import Checkpoint
from ._controller import (
    CONTROLLERS,
    DEFAULT_MAX_NUM_STEPS,
    AbstractStepSizeController,
    ConstantStepSize,
    PIController,
    StepSizeController,
    check_tolerance,
)
from ._dense import DenseOutput
from ._extras import odeint_dense, odeint_event
from ._implicit import ESDIRK, TRBDF2, DIRKTableau, Kvaerno3, Kvaerno5
from ._implicit_per_sample import PerSampleESDIRKStepper as _PerSampleESDIRKStepper  # noqa: F401 (registers)
from ._loops import LANES, Joint, Lane, PerSample
from ._messages import STIFF_REMEDIES
from ._methods import (
    METHODS,
    RK4,
    AdaptiveHeun,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    ExplicitRK,
    Fehlberg2,
    Heun2,
    Heun3,
    Method,
    Midpoint,
    Stepper,
    Tsit5,
    register_method,
)
from ._solve import (
    GRADIENT_METHODS,
    Direct,
    GradientMethod,
    Solution,
    check_times,
    register_gradient_method,
    solve,
    step_budget,
)
from ._stats import Recording, SolveStats, publish_regularization, record
from ._tableau import ButcherTableau

__all__ = [
    "BACKENDS",
    "CONTROLLERS",
    "DEFAULT_MAX_NUM_STEPS",
    "ESDIRK",
    "GRADIENT_METHODS",
    "LANES",
    "METHODS",
    "OPTIONS",
    "RK4",
    "STIFF_REMEDIES",
    "TRBDF2",
    "AbstractBackend",
    "AbstractStepSizeController",
    "AdaptiveHeun",
    "Adjoint",
    "AdjointRequest",
    "Bosh3",
    "ButcherTableau",
    "Checkpoint",
    "ConstantStepSize",
    "DIRKTableau",
    "DenseOutput",
    "Direct",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRK",
    "Fehlberg2",
    "GradientMethod",
    "Heun2",
    "Heun3",
    "Joint",
    "Kvaerno3",
    "Kvaerno5",
    "Lane",
    "Method",
    "Midpoint",
    "NativeBackend",
    "PIController",
    "PerSample",
    "Recording",
    "Solution",
    "SolveRequest",
    "SolveStats",
    "StepSizeController",
    "Stepper",
    "TorchdiffeqBackend",
    "Tsit5",
    "available_backends",
    "check_times",
    "check_tolerance",
    "get_backend",
    "get_default_backend",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "publish_regularization",
    "record",
    "register_backend",
    "register_gradient_method",
    "register_method",
    "set_default_backend",
    "solve",
    "step_budget",
]
