"""ODE solving: the public solve functions, statistics and the backend seam, and the native
engine's components for those who build their own (methods, controllers, gradient methods)."""

from ._backends import (
    AbstractBackend,
    SolveRequest,
    TorchdiffeqBackend,
    available_backends,
    get_backend,
    get_default_backend,
    register_backend,
    set_default_backend,
)
from ._controller import PIController, StepSizeController
from ._gradients import GradientMethod, register_gradient_method
from ._implicit import ESDIRK, DIRKTableau
from ._methods import ExplicitRK, Method, Stepper, register_method
from ._native import GRADIENT_METHODS, NativeBackend
from ._odeint import odeint, odeint_adjoint, odeint_dense, odeint_event, step_budget
from ._stats import SolveStats
from ._tableau import ButcherTableau
from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = [
    "DEFAULT_MAX_NUM_STEPS",
    "ESDIRK",
    "GRADIENT_METHODS",
    "AbstractBackend",
    "ButcherTableau",
    "DIRKTableau",
    "ExplicitRK",
    "GradientMethod",
    "Method",
    "NativeBackend",
    "PIController",
    "SolveRequest",
    "SolveStats",
    "StepSizeController",
    "Stepper",
    "TorchdiffeqBackend",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "register_backend",
    "register_gradient_method",
    "register_method",
    "set_default_backend",
    "step_budget",
]
