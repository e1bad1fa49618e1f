"""ODE solving: the public solve functions, statistics and the backend seam."""

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
from ._native import GRADIENT_METHODS, NativeBackend
from ._odeint import odeint, odeint_adjoint, odeint_dense, odeint_event, step_budget
from ._stats import SolveStats
from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = [
    "DEFAULT_MAX_NUM_STEPS",
    "GRADIENT_METHODS",
    "AbstractBackend",
    "NativeBackend",
    "SolveRequest",
    "SolveStats",
    "TorchdiffeqBackend",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "register_backend",
    "set_default_backend",
    "step_budget",
]
