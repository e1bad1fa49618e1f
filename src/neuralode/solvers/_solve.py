"""The engine's core: :func:`solve` takes objects — a method, a step-size controller, a gradient
method and a lane — and returns a :class:`Solution`. Nothing here reads a name or an options
dict; torchdiffeq's names and options are turned into these objects by :mod:`._adapter`.

A solve flows: the inputs are checked → a :class:`Plan` holds what the loops need (the method,
the controller's tolerances and norm in the internal time direction, the lane) → the gradient
method runs the plan's lane (:class:`Direct` under autograd, :class:`Checkpoint` without a graph
and again step by step in the backward pass, ``Adjoint`` in :mod:`._adjoint`) → the lane asks
the stepper for steps and the controller for step sizes.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError, NonFiniteStateError, SolverError
from ..registry import Registry
from . import _kernels as kernels
from ._controller import (
    AbstractStepSizeController,
    ConstantStepSize,
    PIController,
    StepSizeController,
    adaptive_controller,
    check_resolution,
    check_tolerance_shape,
    tightest,
)
from ._evaluator import Evaluator, StepCallbacks
from ._loops import RMS_NORM, AdaptiveConfig, Joint, Lane, mixed_norm
from ._messages import explain, first_nonfinite_time
from ._methods import Method
from ._stats import ACTIVE, SolveStats

__all__ = [
    "GRADIENT_METHODS",
    "Direct",
    "GradientMethod",
    "Plan",
    "Solution",
    "check_func",
    "check_times",
    "check_y0",
    "register_gradient_method",
    "solve",
    "step_budget",
]

_T_EXAMPLE = "e.g. t = torch.linspace(0.0, 1.0, 10)"


# --------------------------------------------------------------------------- input checks


def check_func(func: Any, name: str = "func") -> None:
    if not callable(func):
        raise InvalidTypeError(
            f"{name} must be callable as {name}(t, y) and return dy/dt, got {type(func).__name__}"
        )


def check_y0(y0: Any) -> bool:
    """Check the initial state; return True when it is a tuple of tensors."""
    if type(y0) is torch.Tensor and y0.is_floating_point():  # the common case, at once
        return False
    if isinstance(y0, torch.Tensor):
        tensors, is_tuple = (y0,), False
    elif isinstance(y0, tuple) and len(y0) > 0:
        tensors, is_tuple = y0, True
    else:
        raise InvalidTypeError(
            "y0 must be a floating-point tensor or a non-empty tuple of them, "
            f"got {type(y0).__name__}"
        )
    for i, y in enumerate(tensors):
        where = f"y0[{i}]" if is_tuple else "y0"
        if not isinstance(y, torch.Tensor):
            raise InvalidTypeError(f"{where} must be a tensor, got {type(y).__name__}")
        if not (y.is_floating_point() or y.is_complex()):
            raise InvalidTypeError(
                f"{where} must be a floating-point tensor, got dtype {y.dtype}; "
                f"convert it first, e.g. {where}.float() or {where}.double()"
            )
    return is_tuple


def check_times(t: Any, per_sample: bool = False) -> tuple[Any, float]:
    """``(times, sign)``: the output times in the internal, increasing direction (a list of
    floats for a 1-D ``t``; a ``(batch, n)`` tensor for per-sample times) and the direction
    (``-1.0`` where ``t`` decreases). One read of ``t`` from its device."""
    times = t.tolist() if type(t) is torch.Tensor and not per_sample else None
    if not (type(times) is list and times and type(times[0]) is float):  # (not 1-D floats)
        if not isinstance(t, torch.Tensor):
            raise InvalidTypeError(
                f"t must be a 1-D floating-point tensor of times ({_T_EXAMPLE}), got "
                f"{type(t).__name__}"
            )
        if t.ndim == 2:
            if not per_sample:
                raise InvalidArgumentError(
                    f"t must be 1-D (times shared by the batch, {_T_EXAMPLE}), got shape "
                    f"{tuple(t.shape)}; a 2-D t, every sample its own times, needs "
                    "options={'batch_mode': 'per_sample'} on the native engine"
                )
            if not t.is_floating_point():
                raise InvalidTypeError(
                    f"per-sample times must be a floating-point tensor, got dtype {t.dtype}; use "
                    "t.float() or t.double()"
                )
            from ._per_sample import check_t_rows, rows_direction

            check_t_rows(t)
            sign = rows_direction(t)
            return sign * t.detach(), sign
        if t.ndim != 1:
            raise InvalidArgumentError(
                f"t must be 1-D (the times at which to report the solution), got shape "
                f"{tuple(t.shape)}; {_T_EXAMPLE}"
            )
        if not t.is_floating_point():
            raise InvalidTypeError(
                f"t must be a floating-point tensor, got dtype {t.dtype}; use t.float() "
                f"or t.double() ({_T_EXAMPLE})"
            )
        times = t.tolist()  # (floats: no graph to detach from)
        if not times:
            raise InvalidArgumentError(
                f"t must hold at least one time, got an empty tensor; {_T_EXAMPLE}"
            )
    if len(times) == 1:
        if not math.isfinite(times[0]):
            raise InvalidArgumentError(f"t must hold finite times, got {times}")
        return times, 1.0
    if times[1] < times[0]:
        sign = -1.0
        times = [-x for x in times]
    else:
        sign = 1.0
    if not all(map(operator.lt, times, itertools.islice(times, 1, None))) or not (
        math.isfinite(times[0]) and math.isfinite(times[-1])
    ):
        shown = [sign * x for x in times]
        if not all(math.isfinite(x) for x in shown):
            raise InvalidArgumentError(f"t must hold finite times, got {shown}")
        msg = "t must be strictly increasing or strictly decreasing (no repeated times), got "
        raise InvalidArgumentError(msg + (str(shown) if len(shown) <= 10 else f"{shown[:10]} ..."))
    return times, sign


def is_finite(y: Any) -> bool:
    """Whether a tensor (or tuple of them) holds only finite values: one pass of the fused
    kernel where it can read the tensor, else one reduction (NaN and inf propagate into a sum),
    element-wise only where that is not finite."""
    if y is None:
        return True
    for x in (y,) if isinstance(y, torch.Tensor) else y:
        fast = kernels.all_finite(x)
        if fast is not None:
            if not fast:
                return False
            continue
        x = x.detach()
        summed_finite = not x.is_complex() and (x.numel() == 0 or math.isfinite(float(x.sum())))
        if not summed_finite and not bool(torch.isfinite(x).all()):
            return False
    return True


# --------------------------------------------------------------------------- step budget

_STEP_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "neuralode_step_budget", default=None
)


@contextlib.contextmanager
def step_budget(max_num_steps: int) -> Iterator[None]:
    """Cap every adaptive solve started inside the block (forward and adjoint, on every engine)
    at ``max_num_steps`` steps from one output time to the next, whatever its options say: a
    solve that needs more raises :class:`~neuralode.TooManyStepsError` instead of running on.
    :func:`neuralode.diagnose` runs its probes under one, so that no model can make it hang."""
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 1:
        raise InvalidArgumentError(
            f"max_num_steps must be a positive integer, got {max_num_steps!r}"
        )
    token = _STEP_BUDGET.set(max_num_steps)
    try:
        yield
    finally:
        _STEP_BUDGET.reset(token)


def budget_of(limit: int) -> int:
    """``limit``, or less where a :func:`step_budget` is in force."""
    budget = _STEP_BUDGET.get()
    return limit if budget is None else min(limit, budget)


# --------------------------------------------------------------------------- the plan


def norm_for(norm: Callable | None, shapes: list[torch.Size] | None) -> Callable:
    """The error norm on the flat internal state: the controller's own (given the state in its
    user form), or the root mean square (the largest over a tuple state's parts)."""
    if norm is None:
        return RMS_NORM if shapes is None else mixed_norm([math.prod(s) for s in shapes])
    if shapes is None:
        return norm
    sizes = [math.prod(s) for s in shapes]

    def parts(x: torch.Tensor) -> Any:
        return norm(tuple(p.reshape(s) for p, s in zip(torch.split(x, sizes), shapes, strict=True)))

    return parts


def adaptive_config(
    ctrl: StepSizeController,
    sign: float,
    shapes: list[torch.Size] | None,
    method: Method,
    norm: Any = None,
) -> AdaptiveConfig:
    """What the loops read of an adaptive controller, in the internal time direction; a
    controller that leaves its floor after accepted steps to the method gets the method's."""
    floor = method.accept_floor
    if getattr(ctrl, "accept_floor", 1.0) is None and floor != 1.0:
        ctrl = cast(StepSizeController, ctrl.replace(accept_floor=floor))
    return AdaptiveConfig(
        rtol=ctrl.rtol,
        atol=ctrl.atol,
        norm=norm_for(ctrl.norm, shapes) if norm is None else norm,
        controller=ctrl,
        first_step=ctrl.first_step,
        max_num_steps=budget_of(ctrl.max_num_steps),
        step_t=tuple(sign * x for x in ctrl.step_t) if ctrl.step_t else (),
        jump_t=tuple(sign * x for x in ctrl.jump_t) if ctrl.jump_t else (),
    )


@dataclasses.dataclass
class Plan:
    """Everything the loops need, derived once from a solve's objects."""

    func: Callable
    method: Method
    controller: AbstractStepSizeController
    lane: Lane
    sign: float
    times: Any  # internal, increasing: a list, or a (batch, n) tensor of per-sample times
    shapes: list[torch.Size] | None
    dtype: torch.dtype
    device: torch.device
    cfg: AdaptiveConfig | None
    step_size: float | None
    interp: str
    stats: SolveStats
    event: Any = None  # an EventSearch where the solve stops at an event

    def evaluator(self, backward: bool = False) -> Evaluator:
        ev = Evaluator(
            self.func, self.sign, self.dtype, self.device, self.stats, self.shapes, backward
        )
        if not backward:  # a recomputation in a backward pass is no step of the solve
            ev.callbacks = StepCallbacks.of(
                self.func, self.sign, ev.unflatten, self.cfg is not None, self.method.name
            )
        return ev

    def run(self, ev: Evaluator, y0: torch.Tensor, record=None, trajectory=None):
        return self.lane.run(self, ev, y0, record, trajectory)


# --------------------------------------------------------------------------- gradient methods


class GradientMethod(abc.ABC):
    """How gradients flow through a solve. A subclass implements :meth:`solve`; registered in
    :data:`GRADIENT_METHODS` it is also reachable by name (``odeint(..., gradient=name)``,
    blocks, ``--gradient``)."""

    name: ClassVar[str]
    needs_params: ClassVar[bool] = True  # whether it must be told the parameters

    @abc.abstractmethod
    def solve(self, plan: Plan, y0: torch.Tensor, params: tuple[torch.Tensor, ...]) -> Any:
        """The stacked solution at the plan's times, differentiable by this method."""

    def params_of(self, func: Any) -> tuple[torch.Tensor, ...]:
        """The tensors to differentiate: ``func``'s (an ``nn.Module``) that require grad."""
        if not self.needs_params:
            return ()
        if not isinstance(func, nn.Module):
            raise InvalidArgumentError(
                f"gradient={self.name!r} needs func to be an nn.Module so that its parameters can "
                "be found"
            )
        return tuple(p for p in func.parameters() if p.requires_grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Direct(GradientMethod):
    """Backpropagate through the solver's operations (any method, any lane)."""

    name = "direct"
    needs_params = False

    def solve(self, plan: Plan, y0: torch.Tensor, params: tuple[torch.Tensor, ...]) -> Any:
        return torch.stack(plan.run(plan.evaluator(), y0))


GRADIENT_METHODS: Registry[type[GradientMethod]] = Registry(
    "gradient method",
    "a new one is a GradientMethod subclass registered with register_gradient_method",
)
"""The gradient methods by name: classes, instantiated without arguments where a name is given."""


def register_gradient_method(method: type[GradientMethod] | GradientMethod, *,
                             replace: bool = False) -> Any:  # fmt: skip
    """Make a gradient method (a :class:`GradientMethod` subclass, or an instance of one)
    reachable by its ``name`` from ``odeint(..., gradient=name)``, blocks and ``--gradient``."""
    cls = method if isinstance(method, type) else type(method)
    if not (isinstance(cls, type) and issubclass(cls, GradientMethod)):
        raise InvalidTypeError(
            f"register_gradient_method takes a GradientMethod subclass, got {method!r}"
        )
    entry: Any = method if isinstance(method, type) else _Instance(method)  # (that very object)
    GRADIENT_METHODS.register(cls.name, entry, replace=replace)
    return method


class _Instance:
    """A registered instance, called like a class without arguments."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj

    def __repr__(self) -> str:
        return repr(self.obj)


_DIRECT = Direct()
GRADIENT_METHODS.register("direct", Direct)


# --------------------------------------------------------------------------- the solution


@dataclasses.dataclass
class Solution:
    """What :func:`solve` returns.

    Attributes:
        ys: the state at every time of ``ts`` (first dimension), torchdiffeq's layout: a tensor,
            or a tuple of tensors for a tuple state.
        ts: the output times.
        stats: the solve's counters (backward ones fill in when gradients are computed).
        dense: the solution between the output times (a callable, see
            :class:`~._dense.DenseOutput`) where it was asked for with ``dense=True``, else
            ``None``.
        event_t: the event's time where the solve stopped at an event (``ts`` is then
            ``[t[0], event_t]`` and ``ys`` the states there), else ``None``.
    """

    ys: Any
    ts: torch.Tensor
    stats: SolveStats
    dense: Any = None
    event_t: torch.Tensor | None = None


def flat(y0: Any) -> torch.Tensor:
    if isinstance(y0, torch.Tensor):
        return y0
    return torch.cat([y.reshape(-1) for y in y0])


def unflat(sol: torch.Tensor, shapes: list[torch.Size] | None, batched: bool = True) -> Any:
    """A flat solution back in the state's form: torchdiffeq's slices and views (so that the
    result's ``grad_fn`` chain is torchdiffeq's)."""
    if shapes is None:
        return sol
    lead = sol.shape[:1] if batched else ()
    out, start = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(sol[..., start : start + n].view(*lead, *s))
        start += n
    return tuple(out)


# --------------------------------------------------------------------------- solve

_DEFAULTS: dict[str, Any] = {}


def _default(kind: str) -> Any:
    obj = _DEFAULTS.get(kind)
    if obj is None:
        from ._methods import Dopri5

        defaults: dict[str, type] = {"method": Dopri5, "lane": Joint, "gradient": Direct}
        obj = _DEFAULTS[kind] = defaults[kind]()
    return obj


def _check_objects(method, controller, gradient, lane) -> None:
    for value, cls, name, what, example in (
        (method, Method, "method", "a Method", "Dopri5() or Kvaerno5()"),
        (controller, AbstractStepSizeController, "controller", "a step-size controller",
         "PIController(rtol=1e-5) or ConstantStepSize(0.1)"),
        (gradient, GradientMethod, "gradient", "a GradientMethod", "Direct() or Adjoint()"),
        (lane, Lane, "lane", "a Lane", "Joint() or PerSample()"),
    ):  # fmt: skip
        if not isinstance(value, cls):
            raise InvalidTypeError(
                f"{name} must be {what} object such as {example}, got {value!r}"
                + ("; names are for odeint(...)" if isinstance(value, str) else "")
            )


def solve(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    method: Method | None = None,
    controller: AbstractStepSizeController | None = None,
    gradient: GradientMethod | None = None,
    lane: Lane | None = None,
    dense: bool = False,
    event_fn: Callable | None = None,
    stats: SolveStats | None = None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, from objects (the object API; diffrax's
    ``diffeqsolve`` is its model, :func:`odeint` the torchdiffeq-compatible form of the same).

    Args:
        func: ``func(t, y)`` returning ``dy/dt`` in the state's form.
        y0: the initial state, a floating-point tensor or a tuple of them.
        t: output times, 1-D and strictly monotonic (``t[0]`` is the start); with
            ``lane=PerSample()`` also ``(batch, n)``, every sample its own times.
        method: a :class:`Method` (default ``Dopri5()``): ``RK4()``, ``Tsit5()``,
            ``Kvaerno5(linear_solver="dense")``, ``ExplicitRK(tableau)``, ...
        controller: how steps are chosen (default ``PIController()`` for an adaptive method,
            ``ConstantStepSize()`` for a fixed-step one): tolerances, norm, step bounds, step
            budget, ``step_t``/``jump_t``.
        gradient: ``Direct()`` (default), ``Checkpoint()`` or ``Adjoint(...)``.
        lane: ``Joint()`` (default) or ``PerSample()``.
        dense: also return the solution between the output times (``Solution.dense``).
        event_fn: ``event_fn(t, y)``: stop where it crosses zero (``Solution.event_t``; the
            direction of time is that of ``t``, whose other times are not outputs then).
        stats: a :class:`SolveStats` to fill (a new one by default; always ``Solution.stats``).

    Returns:
        A :class:`Solution` with ``ys``, ``ts``, ``stats`` and ``dense``.
    """
    method = _default("method") if method is None else method
    if controller is None:
        controller = PIController() if getattr(method, "adaptive", False) else ConstantStepSize()
    gradient = _default("gradient") if gradient is None else gradient
    lane = _default("lane") if lane is None else lane
    _check_objects(method, controller, gradient, lane)
    check_func(func)
    check_y0(y0)
    if stats is not None and not isinstance(stats, SolveStats):
        raise InvalidTypeError(f"stats must be a SolveStats or None, got {type(stats).__name__}")
    times, sign = check_times(t, per_sample=lane.name == "per_sample")
    return run(func, y0, t, times, sign, method, controller, gradient, lane, stats, dense,
               event_fn)  # fmt: skip


def run(
    func: Callable,
    y0: Any,
    t: torch.Tensor,
    times: Any,
    sign: float,
    method: Method,
    controller: AbstractStepSizeController,
    gradient: GradientMethod,
    lane: Lane,
    stats: SolveStats | None,
    dense: bool = False,
    event_fn: Callable | None = None,
) -> Solution:
    """:func:`solve` on inputs already checked (``times, sign`` from :func:`check_times`)."""
    if stats is None:
        stats = SolveStats()
    for rec in ACTIVE.get():
        rec.solves.append(stats)
    is_tuple = type(y0) is not torch.Tensor
    shapes = [y.shape for y in y0] if is_tuple else None
    ref = y0[0] if is_tuple else y0
    lane.check(method, controller, y0, times, gradient)
    stats.method, stats.backend = method.name, "native"
    stats.solves += 1
    if type(times) is list:  # (an event's time span is added where it is found)
        stats.time_span += times[-1] - times[0] if event_fn is None else 0.0
    elif event_fn is None:
        stats.time_span += float((times[:, -1] - times[:, 0]).abs().max())
    cfg = None
    resolution = None
    if controller.adaptive:
        controller = adaptive_controller(controller)
        if not method.adaptive:
            raise InvalidArgumentError(
                f"method {method.name!r} has no error estimate, so it cannot adapt its steps; "
                "use ConstantStepSize(step_size=...) (options={'step_size': ...}), or an adaptive "
                "method such as dopri5"
            )
        check_tolerance_shape(controller.rtol, "rtol", y0)
        check_tolerance_shape(controller.atol, "atol", y0)
        resolution = check_resolution(controller.rtol, controller.atol, ref, method)
        method = method.for_tolerance(controller.rtol)
        cfg = adaptive_config(controller, sign, shapes, method)
    elif method.implicit:
        raise InvalidArgumentError(
            f"the implicit method {method.name!r} needs an adaptive controller (its steps are "
            "retried where Newton's iteration fails), e.g. PIController(rtol=1e-6, atol=1e-8)"
        )
    plan = Plan(
        func=func,
        method=method,
        controller=controller,
        lane=lane,
        sign=sign,
        times=times,
        shapes=shapes,
        dtype=ref.dtype,
        device=ref.device,
        cfg=cfg,
        step_size=getattr(controller, "step_size", None),
        interp=getattr(controller, "interp", "linear"),
        stats=stats,
    )
    if event_fn is not None:
        plan.event = _event_search(event_fn, plan, gradient, lane, t)
        plan.times = [times[0], math.inf]
    y_flat = y0 if shapes is None else flat(y0)
    try:
        params = gradient.params_of(func)
        needs_grad = torch.is_grad_enabled() and (
            y_flat.requires_grad or any(p.requires_grad for p in params)
        )
        if dense:
            from ._dense import dense_solve

            sol, dense_out = dense_solve(plan, y_flat, gradient)
        elif gradient.needs_params and not needs_grad:
            # nothing to differentiate (e.g. adjoint_params=() and a y0 without grad): record no
            # graph, so that no gradient reaches parameters left out, as in torchdiffeq
            with torch.no_grad():
                sol = _DIRECT.solve(plan, y_flat, ())
            dense_out = None
        else:
            sol = gradient.solve(plan, y_flat, params)
            dense_out = None
        if type(times) is list:
            if not is_finite(sol):
                bad = first_nonfinite_time(sol, t)
                if bad is not None:
                    raise NonFiniteStateError(
                        bad, detail=" (first output time with a non-finite state)"
                    )
        elif not is_finite(sol):  # per-sample times: no single time to name
            raise NonFiniteStateError(None, detail=" (per-sample times)")
    except SolverError as err:
        explained = explain(err, func, t, y0, resolution)  # (only on the failure path)
        if explained is err:
            raise
        raise explained from err
    if plan.event is not None:
        event_t = torch.tensor(sign * plan.event.time, dtype=t.dtype, device=t.device)
        stats.time_span += abs(plan.event.time - times[0])
        ts = torch.stack([t.reshape(-1)[0].detach(), event_t])
        return Solution(unflat(sol, shapes), ts, stats, dense_out, event_t)
    return Solution(unflat(sol, shapes), t, stats, dense_out)


def _event_search(event_fn: Callable, plan: Plan, gradient: Any, lane: Lane, t: torch.Tensor):
    from ._events import EventSearch

    if not callable(event_fn):
        raise InvalidTypeError(
            f"event_fn must be callable as event_fn(t, y) or None, got {type(event_fn).__name__}"
        )
    if lane.name != "joint":
        raise InvalidArgumentError(
            "an event stops the whole batch at one time: it needs the joint lane "
            "(batch_mode='joint', the default), not batch_mode='per_sample'"
        )
    if plan.cfg is None or not isinstance(gradient, Direct):
        raise InvalidArgumentError(
            "an event search takes an adaptive method on the joint lane with direct gradients "
            "(odeint(..., event_fn=...)); odeint_adjoint with an event is solved by torchdiffeq"
        )
    tol = tightest(plan.cfg.atol)
    state = functools.partial(unflat, shapes=plan.shapes, batched=False)
    return EventSearch(event_fn, plan.sign, state, tol, t)
