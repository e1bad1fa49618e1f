"""Solver engines behind :func:`neuralode.odeint`: an abstract backend and a registry.

A backend receives a validated :class:`SolveRequest` and fills in a :class:`SolveStats`.
Callers never depend on a particular engine: ``backend=`` picks one by name.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..errors import (
    InvalidArgumentError,
    InvalidTypeError,
    SolverError,
)
from ._callbacks import warn_unknown_callbacks
from ._instrument import InstrumentedFunc, is_finite
from ._messages import Status, failure
from ._stats import SolveStats
from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = [
    "AbstractBackend",
    "SolveRequest",
    "TorchdiffeqBackend",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "register_backend",
    "set_default_backend",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SolveRequest:
    """Everything a backend needs for one solve, already validated."""

    func: Callable
    y0: Any
    t: torch.Tensor
    rtol: Any
    atol: Any
    method: str
    options: dict[str, Any]
    event_fn: Callable | None = None
    adjoint: bool = False
    adjoint_rtol: Any = None
    adjoint_atol: Any = None
    adjoint_method: str | None = None
    adjoint_options: dict[str, Any] | None = None
    adjoint_params: tuple[torch.Tensor, ...] | None = None
    gradient: str = "direct"
    method_object: Any = None  # a method passed as an object (native engine), named by method


class AbstractBackend(abc.ABC):
    """A solver engine. Subclasses implement :meth:`solve`."""

    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def methods(self) -> frozenset[str]:
        """Method names this backend can solve with."""

    @abc.abstractmethod
    def valid_options(self, method: str) -> frozenset[str]:
        """Keys accepted in ``options`` for ``method``."""

    def valid_adjoint_options(self, method: str) -> frozenset[str]:
        """Keys accepted in ``adjoint_options`` for ``method``."""
        return self.valid_options(method)

    def is_adaptive(self, method: str) -> bool:
        """Whether ``method`` chooses its steps from ``rtol``/``atol`` (and so has a step
        budget, ``max_num_steps``)."""
        return "max_num_steps" in self.valid_options(method)

    @abc.abstractmethod
    def solve(self, request: SolveRequest, stats: SolveStats) -> Any:
        """Solve and return what torchdiffeq's function of the same name would return."""


_BACKENDS: dict[str, AbstractBackend] = {}
# the native engine (_native.py) met the speed goals of its issue: it is the default, and hands
# what it does not implement to torchdiffeq
_DEFAULT: list[str] = ["native"]


def register_backend(backend: AbstractBackend) -> None:
    """Make ``backend`` selectable as ``odeint(..., backend=backend.name)``."""
    if not isinstance(backend, AbstractBackend):
        raise InvalidTypeError(
            f"expected an AbstractBackend instance, got {type(backend).__name__}"
        )
    _BACKENDS[backend.name] = backend


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str | AbstractBackend | None) -> AbstractBackend:
    if isinstance(name, AbstractBackend):
        return name
    if name is None:
        name = _DEFAULT[0]
    try:
        return _BACKENDS[name]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"unknown backend {name!r}; valid backends are: {', '.join(available_backends())}"
        ) from None


def get_default_backend() -> str:
    return _DEFAULT[0]


def set_default_backend(name: str) -> None:
    """Change the engine used when ``backend=`` is not given."""
    get_backend(name)
    _DEFAULT[0] = name


# --------------------------------------------------------------------------------------------
# torchdiffeq
# --------------------------------------------------------------------------------------------


@functools.cache
def _torchdiffeq_solvers() -> dict[str, type]:
    from torchdiffeq._impl.odeint import SOLVERS

    return dict(SOLVERS)


@functools.cache
def _torchdiffeq_methods() -> frozenset[str]:
    return frozenset(_torchdiffeq_solvers())


@functools.cache
def _torchdiffeq_option_keys(method: str) -> frozenset[str]:
    cls = _torchdiffeq_solvers()[method]
    keys = {"norm"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                keys.add(p.name)
    return frozenset(keys - {"self", "func", "y0", "rtol", "atol"})


class TorchdiffeqBackend(AbstractBackend):
    """Delegates the numerics to torchdiffeq, adding counters and clear errors."""

    name = "torchdiffeq"

    @property
    def methods(self) -> frozenset[str]:
        return _torchdiffeq_methods()

    def valid_options(self, method: str) -> frozenset[str]:
        return _torchdiffeq_option_keys(method)

    def _callbacks(self, method: str) -> frozenset[str]:
        return frozenset(_torchdiffeq_solvers()[method].valid_callbacks())

    def solve(self, request: SolveRequest, stats: SolveStats) -> Any:
        import torchdiffeq

        r = request
        if r.gradient != "direct":
            raise InvalidArgumentError(
                f"gradient={r.gradient!r} needs backend='native'; torchdiffeq backpropagates "
                "directly (odeint) or by the adjoint (odeint_adjoint)"
            )
        if r.adjoint_options is not None and r.adjoint_options.get("norm") == "full":
            r.adjoint_options = {k: v for k, v in r.adjoint_options.items() if k != "norm"}
        warn_unknown_callbacks(r.func)
        fixed = "callback_accept_step" not in self._callbacks(r.method)
        adjoint_callbacks: frozenset[str] = frozenset()
        if r.adjoint:
            adjoint_callbacks = self._callbacks(r.adjoint_method or r.method)
        func = InstrumentedFunc(
            r.func,
            r.y0,
            stats,
            callbacks=self._callbacks(r.method),
            adjoint_callbacks=adjoint_callbacks,
            fixed_grid=fixed,
        )
        if self._callbacks(r.method):
            stats.steps_accepted = 0
            if not fixed:
                stats.steps_rejected = 0
        options = r.options
        if self.is_adaptive(r.method) and options.get("max_num_steps") is None:
            # torchdiffeq's own default (2**31) never ends a hopeless solve
            options = {**options, "max_num_steps": DEFAULT_MAX_NUM_STEPS}
        common = dict(
            rtol=r.rtol, atol=r.atol, method=r.method, options=options, event_fn=r.event_fn
        )
        try:
            if r.adjoint:
                params = r.adjoint_params
                if params is None:
                    params = tuple(func.parameters())
                out = torchdiffeq.odeint_adjoint(
                    func,
                    r.y0,
                    r.t,
                    adjoint_rtol=r.adjoint_rtol,
                    adjoint_atol=r.adjoint_atol,
                    adjoint_method=r.adjoint_method,
                    adjoint_options=r.adjoint_options,
                    adjoint_params=params,
                    **common,
                )
            else:
                out = torchdiffeq.odeint(func, r.y0, r.t, **common)
        except AssertionError as err:
            raise _translate(err, func, r) from err
        func.end_forward()
        return out


def _translate(err: AssertionError, func: InstrumentedFunc, r: SolveRequest) -> Exception:
    t = None if func.last_t is None else float(func.last_t.detach())
    if not is_finite(func.last_dy):
        return failure(Status.NONFINITE, time=t)
    msg = str(err)
    where = "" if t is None else f" near t ≈ {t:.6g}"
    if "underflow" in msg:
        return failure(Status.STEP_UNDERFLOW, where=where)
    if "max_num_steps" in msg:
        limit = r.options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
        return failure(
            Status.MAX_STEPS, where=where, limit=limit, rtol=r.rtol, event=r.event_fn is not None
        )
    return SolverError(f"torchdiffeq failed{where}: {msg}")


register_backend(TorchdiffeqBackend())
