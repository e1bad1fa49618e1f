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
from ._odeint import odeint, odeint_adjoint
from ._stats import SolveStats

__all__ = [
    "AbstractBackend",
    "SolveRequest",
    "SolveStats",
    "TorchdiffeqBackend",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "odeint",
    "odeint_adjoint",
    "register_backend",
    "set_default_backend",
]
