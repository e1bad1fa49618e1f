"""Solver engines behind :func:`neuralode.odeint`, chosen by name (``backend=``).

The native engine is the default (:mod:`._adapter` turns a call into its objects). Another
engine implements :class:`AbstractBackend`: it receives a validated, immutable
:class:`SolveRequest` in torchdiffeq's terms (method names, ``options`` dicts) and fills in a
:class:`SolveStats`. :class:`TorchdiffeqBackend` runs torchdiffeq itself, adding counters, clear
errors and a step budget.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError, SolverError
from ..registry import Registry
from ._controller import DEFAULT_MAX_NUM_STEPS
from ._evaluator import CALLBACK_NAMES, callback_names, warn_unknown_callbacks
from ._messages import Status, failure
from ._solve import budget_of, is_finite
from ._stats import SolveStats

__all__ = [
    "BACKENDS",
    "AbstractBackend",
    "AdjointRequest",
    "SolveRequest",
    "TorchdiffeqBackend",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "register_backend",
    "set_default_backend",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdjointRequest:
    """The adjoint's part of a request (``odeint_adjoint``'s ``adjoint_*`` arguments, resolved:
    tolerances and method default to the forward solve's)."""

    rtol: Any
    atol: Any
    method: str
    options: Mapping[str, Any] | None
    params: tuple[torch.Tensor, ...] | None


@dataclasses.dataclass(frozen=True)
class SolveRequest:
    """One solve in torchdiffeq's terms, validated: what a backend receives."""

    func: Callable
    y0: Any
    t: torch.Tensor
    rtol: Any
    atol: Any
    method: str
    options: Mapping[str, Any]
    event_fn: Callable | None = None
    gradient: str = "direct"
    adjoint: AdjointRequest | None = None


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


BACKENDS: Registry[AbstractBackend] = Registry(
    "backend", "an engine is an AbstractBackend registered with register_backend"
)
_DEFAULT: list[str] = ["native"]


def register_backend(backend: AbstractBackend, *, replace: bool = False) -> None:
    """Make ``backend`` selectable as ``odeint(..., backend=backend.name)``."""
    if not isinstance(backend, AbstractBackend):
        raise InvalidTypeError(
            f"expected an AbstractBackend instance, got {type(backend).__name__}"
        )
    BACKENDS.register(backend.name, backend, replace=replace)


def available_backends() -> list[str]:
    """The names of the registered solver backends (``native``, ``torchdiffeq`` where installed)."""
    return sorted(BACKENDS.names())


def get_backend(name: str | AbstractBackend | None) -> AbstractBackend:
    """The backend of this name (an instance passes through; ``None``: the default backend)."""
    if isinstance(name, AbstractBackend):
        return name
    if name is None:
        name = _DEFAULT[0]
    if not isinstance(name, str):
        raise InvalidTypeError(
            f"backend must be a name ({', '.join(available_backends())}) or an AbstractBackend, "
            f"got {type(name).__name__}"
        )
    return BACKENDS.get(name)


def get_default_backend() -> str:
    """The name of the backend used where none is given."""
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


def torchdiffeq_callbacks(method: str) -> frozenset[str]:
    """The step callbacks torchdiffeq's ``method`` calls."""
    solver: Any = _torchdiffeq_solvers()[method]
    return frozenset(solver.valid_callbacks())


class TorchdiffeqBackend(AbstractBackend):
    """Delegates the numerics to torchdiffeq, adding counters, clear errors and a step budget
    (torchdiffeq's own, 2**31 steps, never ends a hopeless solve)."""

    name = "torchdiffeq"

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(_torchdiffeq_solvers())

    def valid_options(self, method: str) -> frozenset[str]:
        return _torchdiffeq_option_keys(method)

    def _budgeted(self, method: str, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if options is None:
            return None
        out = dict(options)
        if self.is_adaptive(method):
            out["max_num_steps"] = budget_of(out.get("max_num_steps") or DEFAULT_MAX_NUM_STEPS)
        return out

    def solve(self, request: SolveRequest, stats: SolveStats) -> Any:
        import torchdiffeq

        r = request
        if r.gradient != "direct":
            raise InvalidArgumentError(
                f"gradient={r.gradient!r} needs backend='native'; torchdiffeq backpropagates "
                "directly (odeint) or by the adjoint (odeint_adjoint)"
            )
        method_callbacks = torchdiffeq_callbacks(r.method)
        # the wrapper below defines only the callbacks the method calls: say, as torchdiffeq
        # would, which of the user's it never calls
        names = callback_names(r.func)
        unsupported = (names & set(CALLBACK_NAMES)) - method_callbacks
        if unsupported:
            warnings.warn(
                f"Solver '{r.method}' does not support callbacks {set(unsupported)}", stacklevel=4
            )
        warn_unknown_callbacks(r.func, names)
        fixed = "callback_accept_step" not in method_callbacks
        a = r.adjoint
        func = InstrumentedFunc(
            r.func,
            r.y0,
            stats,
            callbacks=method_callbacks,
            adjoint_callbacks=torchdiffeq_callbacks(a.method) if a else frozenset(),
            fixed_grid=fixed,
        )
        if method_callbacks:
            stats.steps_accepted = 0
            if not fixed:
                stats.steps_rejected = 0
        options = self._budgeted(r.method, r.options)
        event_fn = r.event_fn
        if event_fn is not None:  # torchdiffeq counts no steps while it looks for an event
            limit = (options or {}).get("max_num_steps") or budget_of(DEFAULT_MAX_NUM_STEPS)
            event_fn = _GuardedEvent(event_fn, limit, r.rtol)
        common = dict(rtol=r.rtol, atol=r.atol, method=r.method, options=options,
                      event_fn=event_fn)  # fmt: skip
        try:
            if a is not None:
                a_options = self._budgeted(a.method, a.options)
                if a_options is not None and a_options.get("norm") == "full":
                    a_options.pop("norm")  # torchdiffeq's default is the full norm
                params = a.params
                if params is None:
                    params = tuple(func.parameters())
                out = torchdiffeq.odeint_adjoint(
                    func, r.y0, r.t, adjoint_rtol=a.rtol, adjoint_atol=a.atol,
                    adjoint_method=a.method, adjoint_options=a_options, adjoint_params=params,
                    **common,
                )  # fmt: skip
            else:
                out = torchdiffeq.odeint(func, r.y0, r.t, **common)
        except AssertionError as err:
            raise _translate(err, func, r, options) from err
        func.end_forward()
        return out


class _GuardedEvent:
    """An event function with the bounds torchdiffeq's search for an event lacks: a budget of
    step attempts (it is called once per attempt, then a few dozen times to locate the
    crossing), a time that must stay finite (an event that never comes on a solution that
    settles lets the step size grow without bound), and a value that must be finite."""

    STALLED = 50  # calls at one time: the step size overflowed (torchdiffeq resets it to 0)

    def __init__(self, event_fn: Callable, limit: int, rtol: Any) -> None:
        self.event_fn, self.limit, self.rtol, self.calls = event_fn, limit, rtol, 0
        self.last_t: float | None = None
        self.same = 0

    def __call__(self, t: torch.Tensor, y: Any) -> torch.Tensor:
        self.calls += 1
        now = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
        where = f" near t ≈ {now:.6g}"
        if self.calls > self.limit + 200:  # (the crossing's bisection takes about 60)
            raise failure(Status.MAX_STEPS, where=where, limit=self.limit, rtol=self.rtol,
                          event=True)  # fmt: skip
        self.same = self.same + 1 if now == self.last_t else 0
        self.last_t = now
        if not math.isfinite(now) or self.same >= self.STALLED:
            raise failure(Status.EVENT_NEVER, time=now)
        value = self.event_fn(t, y)
        if not isinstance(value, torch.Tensor) or not bool(torch.isfinite(value).all()):
            raise InvalidArgumentError(
                f"event_fn(t, y) returned {value!r}{where}, not a finite tensor: the solve "
                "looks for where it crosses zero, so it must be finite (check for a division "
                "by zero or a log of a negative value in it)",
                argument="event_fn",
            )
        return value


def _translate(
    err: AssertionError, func: InstrumentedFunc, r: SolveRequest, options: Mapping | None
) -> Exception:
    t = None if func.last_t is None else float(func.last_t.detach())
    if not is_finite(func.last_dy):
        return failure(Status.NONFINITE, time=t)
    msg = str(err)
    where = "" if t is None else f" near t ≈ {t:.6g}"
    if "underflow" in msg:
        return failure(Status.STEP_UNDERFLOW, where=where)
    if "max_num_steps" in msg:
        limit = (options or {}).get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
        return failure(
            Status.MAX_STEPS, where=where, limit=limit, rtol=r.rtol, event=r.event_fn is not None
        )
    return SolverError(f"torchdiffeq failed{where}: {msg}")


# --------------------------------------------------------------------------------------------
# the counting wrapper torchdiffeq is given
# --------------------------------------------------------------------------------------------


def _shapes(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        return y.shape
    return tuple(v.shape for v in y)


class InstrumentedFunc(nn.Module):
    """Wraps ``func(t, y)`` for torchdiffeq.

    * counts evaluations into ``stats.nfe_forward`` until :meth:`end_forward` is called and into
      ``stats.nfe_backward`` afterwards (the adjoint's backward solve);
    * checks that ``func`` returns a derivative of the state's shape;
    * remembers the last time and derivative, so that a failed solve can say where it failed;
    * counts accepted and rejected steps through torchdiffeq's step callbacks (for fixed-grid
      methods every step is an accepted one), chaining any callbacks the user's ``func``
      defines itself.

    If ``func`` is an ``nn.Module`` it is registered as a submodule, so ``parameters()`` of the
    wrapper are exactly the parameters of ``func`` (which is what the adjoint needs).
    """

    def __init__(
        self,
        func: Callable,
        y0: Any,
        stats: SolveStats,
        callbacks: frozenset[str] = frozenset(),
        adjoint_callbacks: frozenset[str] = frozenset(),
        fixed_grid: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(func, nn.Module):
            self.func = func
        else:
            object.__setattr__(self, "func", func)
        self.stats = stats
        self._expected = _shapes(y0)
        self._is_tuple = not isinstance(y0, torch.Tensor)
        self.backward_phase = False
        self.last_t: torch.Tensor | None = None
        self.last_dy: Any = None
        self._fixed_grid = fixed_grid
        for name in CALLBACK_NAMES:
            if name in callbacks:
                setattr(self, name, self._make_callback(name, backward=False))
            if name in adjoint_callbacks:
                setattr(self, name + "_adjoint", self._make_callback(name, backward=True))

    def _make_callback(self, name: str, backward: bool) -> Callable:
        user_name = name + "_adjoint" if backward else name
        user_cb = getattr(self.func, user_name, None)
        suffix = "_backward" if backward else ""
        stats = self.stats
        if name == "callback_accept_step":
            counter: str | None = "steps_accepted" + suffix
        elif name == "callback_reject_step":
            counter = "steps_rejected" + suffix
        elif self._fixed_grid:  # callback_step of a fixed-grid method: every step is accepted
            counter = "steps_accepted" + suffix
        else:
            counter = None

        def callback(t0: Any, y0: Any, dt: Any) -> None:
            if counter is not None:
                setattr(stats, counter, (getattr(stats, counter) or 0) + 1)
            if callable(user_cb):
                user_cb(t0, y0, dt)

        return callback

    def end_forward(self) -> None:
        self.backward_phase = True
        self.last_t = None
        self.last_dy = None

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        dy = self.func(t, y)
        if self._is_tuple:
            if not isinstance(dy, (tuple, list)) or len(dy) != len(self._expected):
                raise InvalidArgumentError(
                    f"func(t, y) must return a tuple of {len(self._expected)} tensors for a "
                    f"tuple state, got {type(dy).__name__}"
                )
            got = tuple(getattr(v, "shape", None) for v in dy)
        else:
            if not isinstance(dy, torch.Tensor):
                raise InvalidTypeError(f"func(t, y) must return a tensor, got {type(dy).__name__}")
            got = dy.shape
        if not self.backward_phase and got != self._expected:
            raise InvalidArgumentError(
                f"func(t, y) returned dy/dt of shape {_fmt(got)} but the state y has shape "
                f"{_fmt(self._expected)}; the dynamics must return a derivative of the same shape "
                "as the state (check the output size of the last layer)"
            )
        if self.backward_phase:
            self.stats.nfe_backward += 1
        else:
            self.stats.nfe_forward += 1
            self.last_t = t
            self.last_dy = dy
        return dy


def _fmt(shape: Any) -> str:
    if isinstance(shape, torch.Size):
        return str(tuple(shape))
    return "(" + ", ".join(str(tuple(s)) if s is not None else "?" for s in shape) + ")"


register_backend(TorchdiffeqBackend())
