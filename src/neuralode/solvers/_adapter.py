"""torchdiffeq's interface on the native engine: the one place where names and ``options`` dicts
become objects.

:func:`odeint` and :func:`odeint_adjoint` keep torchdiffeq's signatures. A call is checked, its
method name looked up in :data:`~._methods.METHODS`, its ``options`` translated through
:data:`OPTIONS` (one table: every torchdiffeq option and the object parameter it sets) into a
method, a step-size controller and a lane, and solved by :func:`~._solve.run`, which sees only
objects. What the native engine does not implement (Adams and scipy methods, events, gradients
with respect to ``t``, complex states, ``grid_constructor``/``perturb``) goes to torchdiffeq
unchanged, as does every call on another backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _backends
from ._adjoint import Adjoint
from ._backends import AbstractBackend, AdjointRequest, SolveRequest, TorchdiffeqBackend
from ._controller import (
    CONTROLLERS,
    AbstractStepSizeController,
    ConstantStepSize,
    PIController,
    StepSizeController,
    check_tolerance,
    parameters,
)
from ._loops import LANES, Joint, Lane
from ._methods import METHODS, Method
from ._solve import (
    _DIRECT,
    GRADIENT_METHODS,
    Direct,
    GradientMethod,
    check_func,
    check_times,
    check_y0,
    run,
)
from ._stats import SolveStats

__all__ = ["OPTIONS", "NativeBackend", "odeint", "odeint_adjoint", "translate"]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the table

_ADAPTIVE, _FIXED, _BOTH = "adaptive", "fixed", "both"

OPTIONS: dict[str, tuple[str, str | None, str]] = {
    # torchdiffeq option: (the object it configures, its parameter, the methods that take it)
    "first_step": ("controller", "first_step", _ADAPTIVE),
    "safety": ("controller", "safety", _ADAPTIVE),
    "ifactor": ("controller", "ifactor", _ADAPTIVE),
    "dfactor": ("controller", "dfactor", _ADAPTIVE),
    "pcoeff": ("controller", "pcoeff", _ADAPTIVE),
    "icoeff": ("controller", "icoeff", _ADAPTIVE),
    "accept_floor": ("controller", "accept_floor", _ADAPTIVE),  # ours (PIController's doc)
    "min_step": ("controller", "min_step", _ADAPTIVE),
    "max_step": ("controller", "max_step", _ADAPTIVE),
    "max_num_steps": ("controller", "max_num_steps", _ADAPTIVE),
    "step_t": ("controller", "step_t", _ADAPTIVE),
    "jump_t": ("controller", "jump_t", _ADAPTIVE),
    "norm": ("controller", "norm", _BOTH),  # a fixed grid has no error norm: ignored there
    "step_size": ("controller", "step_size", _FIXED),
    "interp": ("controller", "interp", _FIXED),
    "controller": ("controller", None, _ADAPTIVE),  # a StepSizeController, or a CONTROLLERS name
    "batch_mode": ("lane", None, _ADAPTIVE),  # a name in LANES
    "dtype": ("ignored", None, _ADAPTIVE),  # torchdiffeq's dtype of time: times are float64
    "grid_constructor": ("torchdiffeq", None, _FIXED),  # handed to torchdiffeq
    "perturb": ("torchdiffeq", None, _FIXED),
    # an implicit method's own parameters (Method.parameters) set the method: linear_solver,
    # newton_tol, max_newton_iters, error_factor
}
"""torchdiffeq's ``options`` and what each sets on the engine's objects."""

# what an options['controller'] object replaces (refused beside it)
_CONTROLLER_OWN = ("safety", "ifactor", "dfactor", "pcoeff", "icoeff", "accept_floor",
                   "min_step", "max_step")  # fmt: skip
_FALL_THROUGH = frozenset(k for k, (target, _, _) in OPTIONS.items() if target == "torchdiffeq")


def valid_options(method: Method, adjoint: bool = False) -> frozenset[str]:
    """The option keys ``method`` takes (and for the adjoint's backward solve)."""
    kind = _ADAPTIVE if method.adaptive else _FIXED
    keys = {k for k, (_, _, takes) in OPTIONS.items() if takes in (kind, _BOTH)}
    if adjoint:
        keys.discard("batch_mode")
    return frozenset(keys) | method.parameters


def _checked(options: Any, method: str, valid: Iterable[str], name: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidTypeError(f"{name} must be a dict, got {type(options).__name__}")
    valid = sorted(valid)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidArgumentError(
            f"unknown {name} {unknown} for method {method!r}; valid keys are: {', '.join(valid)}"
        )
    return dict(options)


def _method(method: Any, name: str = "method") -> Method | None:
    """The native method a call names (``None``: one the native engine does not have)."""
    if method is None:
        method = "dopri5"
    if isinstance(method, str):  # (before the ABC check below: the common case)
        return METHODS.find(method)
    if isinstance(method, Method):
        return method
    raise InvalidTypeError(
        f"{name} must be a method name (e.g. 'dopri5') or a Method object, got "
        f"{type(method).__name__}"
    )


_DEFAULT_CONTROLLERS: dict[tuple, AbstractStepSizeController] = {}


def _default_controller(adaptive: bool, rtol: Any, atol: Any) -> AbstractStepSizeController:
    """The controller of a call without options (the common case: cached per tolerances)."""
    key = (adaptive, rtol, atol) if type(rtol) is float and type(atol) is float else None
    ctrl = _DEFAULT_CONTROLLERS.get(key) if key is not None else None
    if ctrl is None:
        check_tolerance(rtol, "rtol")
        check_tolerance(atol, "atol")
        ctrl = PIController(rtol=rtol, atol=atol) if adaptive else ConstantStepSize()
        if key is not None and len(_DEFAULT_CONTROLLERS) < 256:
            _DEFAULT_CONTROLLERS[key] = ctrl
    return ctrl


_JOINT = Joint()


def translate(
    method: Method,
    options: Mapping[str, Any] | None,
    rtol: Any,
    atol: Any,
    name: str = "options",
    adjoint: bool = False,
) -> tuple[Method, AbstractStepSizeController, Lane]:
    """A native method and torchdiffeq's options as the objects the engine takes: ``(method,
    controller, lane)``. A value's error names the option it came from."""
    if not options:
        if options is not None and not isinstance(options, Mapping):
            raise InvalidTypeError(f"{name} must be a dict, got {type(options).__name__}")
        return method, _default_controller(method.adaptive, rtol, atol), _JOINT
    opts = _checked(options, method.name, valid_options(method, adjoint), name)
    on_method: dict[str, Any] = {}
    on_controller: dict[str, Any] = {}
    lane: Lane = _JOINT
    own: Any = None
    for key, value in opts.items():
        if key in method.parameters:
            on_method[key] = value
            continue
        target, param, _ = OPTIONS[key]
        if target == "controller" and param is not None:
            if value is not None and not (key == "norm" and not method.adaptive):
                on_controller[param] = value
        elif key == "controller":
            own = value
        elif key == "batch_mode" and value is not None:
            if not isinstance(value, str) or value not in LANES:
                raise InvalidArgumentError(
                    f"{name}['batch_mode'] must be one of {', '.join(map(repr, LANES.names()))}, "
                    f"got {value!r}"
                )
            lane = LANES.get(value)()
    ctrl: AbstractStepSizeController
    try:
        if on_method:
            method = method.configured(**on_method)
        if own is not None:
            ctrl = _with_own_controller(own, on_controller, rtol, atol, name)
        elif method.adaptive:
            ctrl = PIController(rtol=rtol, atol=atol, **on_controller)
        else:
            check_tolerance(rtol, "rtol")
            check_tolerance(atol, "atol")
            ctrl = ConstantStepSize(**on_controller)
    except (InvalidArgumentError, InvalidTypeError) as err:
        if err.argument in opts:
            raise err.renamed(f"{name}[{err.argument!r}]") from None
        raise
    return method, ctrl, lane


def _with_own_controller(own: Any, on_controller: dict, rtol, atol, name) -> StepSizeController:
    """``options['controller']``: an object of one's own, given the call's tolerances and the
    options that are not its own parameters; or a name in :data:`CONTROLLERS`, its class made
    with the call's tolerances and the options (names fit where objects do not: a JSON or YAML
    configuration)."""
    if isinstance(own, str):
        return _named_controller(own, on_controller, rtol, atol, name)
    if not isinstance(own, StepSizeController):
        raise InvalidTypeError(
            f"{name}['controller'] must be a StepSizeController (e.g. PIController(...)) or the "
            f"name of one in CONTROLLERS (e.g. 'pid'), got {type(own).__name__}"
        )
    both = [k for k in _CONTROLLER_OWN if on_controller.get(k) is not None]
    if both:
        raise InvalidArgumentError(
            f"{name}['controller'] replaces the options {both}: give them to the controller "
            f"object instead (e.g. PIController({both[0]}=...))"
        )
    return cast(StepSizeController, own.replace(rtol=rtol, atol=atol, **on_controller))


def _named_controller(own: str, on_controller: dict, rtol, atol, name) -> StepSizeController:
    try:
        cls: Any = CONTROLLERS.get(own)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"{name}['controller']: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, StepSizeController)):
        raise InvalidArgumentError(
            f"{name}['controller'] names {own!r} ({getattr(cls, '__name__', cls)}), which does not "
            "adapt its steps; for a fixed grid use a fixed-step method with "
            "options={'step_size': ...}"
        )
    extra = sorted(set(on_controller) - parameters(cls))
    if extra:
        raise InvalidArgumentError(
            f"{name}['controller'] {own!r} ({cls.__name__}) takes no {extra}; its parameters "
            f"are: {', '.join(sorted(parameters(cls)))}"
        )
    return cls(rtol=rtol, atol=atol, **on_controller)


def _gradient(gradient: Any) -> GradientMethod:
    cls = GRADIENT_METHODS.find(gradient) if isinstance(gradient, str) else None
    if cls is Direct:
        return _DIRECT  # (stateless)
    if isinstance(gradient, GradientMethod):
        return gradient
    if cls is None or gradient == "adjoint":
        names = ", ".join(repr(n) for n in GRADIENT_METHODS.names() if n != "adjoint")
        raise InvalidArgumentError(
            f"gradient must be one of {names}, got {gradient!r}; for the continuous adjoint "
            "call odeint_adjoint"
        )
    return cls()


# ----------------------------------------------------------------------------- odeint


def odeint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | Method | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Callable | None = None,
    backend: str | AbstractBackend | None = None,
    stats: SolveStats | None = None,
    gradient: str | GradientMethod = "direct",
) -> Any:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    Same arguments and return value as ``torchdiffeq.odeint``; code written for torchdiffeq
    ports by changing the import. Gradients flow by direct backpropagation through the solver.

    Args:
        func: callable ``func(t, y)`` returning ``dy/dt`` with the shape of ``y``.
        y0: initial state, a floating-point tensor or a tuple of them.
        t: 1-D strictly increasing or decreasing tensor of output times; ``t[0]`` is the start.
            With ``options={"batch_mode": "per_sample"}`` also ``(batch, n)``: every sample its
            own times.
        rtol: relative tolerance (a float or a tensor), used by adaptive methods.
        atol: absolute tolerance (a float or a tensor), used by adaptive methods.
        method: ``"dopri5"`` (default), ``"rk4"``, ``"euler"``, ... — any method name of
            torchdiffeq, neuralode's ``"tsit5"`` and the implicit ``"kvaerno3"``,
            ``"kvaerno5"``, ``"trbdf2"``, a name registered with ``register_method``, or a
            :class:`~neuralode.solvers.Method` object.
        options: method options, as in torchdiffeq (e.g. ``{"step_size": 0.1}``); an unknown
            key is an error, not a warning. :data:`OPTIONS` lists what each sets.
        event_fn: optional ``event_fn(t, y)``; the solve stops where it crosses zero and
            ``(event_t, solution)`` is returned, as in torchdiffeq.
        backend: engine name (``"native"``, neuralode's own engine, or ``"torchdiffeq"``) or
            instance; ``None`` picks the default (``"native"``; see ``set_default_backend``).
        stats: optional :class:`SolveStats` filled with NFE and step counters; backward
            counters keep counting when gradients are computed later.
        gradient: ``"direct"`` (backpropagate through the solver's operations),
            ``"checkpoint"`` (native engine: the exact gradient of the discrete solve, keeping
            only the accepted states and recomputing each step in the backward pass), the name
            of a gradient method registered with ``register_gradient_method``, or a
            :class:`~neuralode.solvers.GradientMethod` object.

    Returns:
        A tensor (or tuple of tensors) whose first dimension indexes ``t``.

    Raises:
        TypeError, ValueError: for invalid arguments, before any work is done.
        NonFiniteStateError: if the state becomes NaN or infinite.
        SolverError: if the solver cannot proceed (step size underflow, too many steps).
    """
    engine: AbstractBackend | None = (
        _NATIVE if backend is None and _backends._DEFAULT[0] == "native" else None
    )
    if engine is None:
        engine = _backends.get_backend(backend)
    check_func(func)
    check_y0(y0)
    per_sample = (
        options is not None
        and isinstance(options, Mapping)
        and options.get("batch_mode") == "per_sample"
    )
    times, sign = check_times(t, per_sample)
    _check_stats(stats)
    grad = _gradient(gradient)
    native = _method(method) if engine is _NATIVE else None
    reason = _not_native(native, method, y0, t, options, rtol, atol, event_fn, grad)
    if engine is not _NATIVE or reason is not None or native is None:
        d = _delegation()
        call = d.Call(func, y0, t, times, rtol, atol, method, options, event_fn, stats, grad)
        if engine is not _NATIVE:
            return d.solve_on(engine, call)
        return d.delegate(reason, native, call)
    native, ctrl, lane = translate(native, options, rtol, atol)
    solution = run(func, y0, t, times, sign, native, ctrl, grad, lane, stats, event_fn=event_fn)
    return solution.ys if event_fn is None else (solution.event_t, solution.ys)


def odeint_adjoint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | Method | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | torch.Tensor | None = None,
    adjoint_atol: float | torch.Tensor | None = None,
    adjoint_method: str | Method | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Iterable[torch.Tensor] | None = None,
    backend: str | AbstractBackend | None = None,
    stats: SolveStats | None = None,
) -> Any:
    """Like :func:`odeint`, with gradients by the adjoint method in O(1) memory.

    Same arguments, defaults and return value as ``torchdiffeq.odeint_adjoint``: ``func`` must
    be an ``nn.Module`` unless ``adjoint_params`` lists the tensors to differentiate (``()``
    for none); ``adjoint_rtol``, ``adjoint_atol`` and ``adjoint_method`` default to the
    forward solve's, and ``adjoint_options`` to its ``options`` (less ``norm``). The backward
    error norm is torchdiffeq's: all of the augmented state by default,
    ``adjoint_options={"norm": "seminorm"}`` leaves the parameter adjoints out (fewer backward
    steps, the same accuracy of the state), a callable is a norm of one's own. The result's
    ``grad_fn.adjoint_options`` holds the options and the norm the backward pass will use, as
    torchdiffeq's does.
    """
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise InvalidArgumentError(
            "func must be an nn.Module so that the adjoint can find its parameters; otherwise "
            "pass them explicitly with adjoint_params=(...) (adjoint_params=() if there are none)"
        )
    if adjoint_params is not None:
        adjoint_params = tuple(adjoint_params)
        for i, p in enumerate(adjoint_params):
            if not isinstance(p, torch.Tensor):
                raise InvalidTypeError(
                    f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}; pass e.g. "
                    "adjoint_params=tuple(model.parameters())"
                )
    a_rtol = rtol if adjoint_rtol is None else check_tolerance(adjoint_rtol, "adjoint_rtol")
    a_atol = atol if adjoint_atol is None else check_tolerance(adjoint_atol, "adjoint_atol")
    a_method = method if adjoint_method is None else adjoint_method
    same_method = adjoint_method is None or adjoint_method == method
    if not same_method and options is not None and adjoint_options is None:
        raise InvalidArgumentError(
            "adjoint_method differs from method, so adjoint_options cannot be inferred from "
            "options; pass adjoint_options as well (e.g. adjoint_options={})"
        )
    engine = _backends.get_backend(backend)
    check_func(func)
    check_y0(y0)
    times, sign = check_times(t, isinstance(options, Mapping) and "batch_mode" in options)
    _check_stats(stats)
    native = _method(method) if engine is _NATIVE else None
    a_native = _method(a_method, "adjoint_method") if engine is _NATIVE else None
    reason = _not_native(native, method, y0, t, options, rtol, atol, event_fn, None)
    if reason is None and a_native is None:
        reason = f"adjoint method {a_method!r} is not native"
    if engine is not _NATIVE or reason is not None or native is None:
        d = _delegation()
        request = AdjointRequest(a_rtol, a_atol, _name(a_method), adjoint_options, adjoint_params)
        call = d.Call(func, y0, t, times, rtol, atol, method, options, event_fn, stats, Direct(),
                      request)  # fmt: skip
        return (
            d.solve_on(engine, call) if engine is not _NATIVE else d.delegate(reason, native, call)
        )
    native, ctrl, lane = translate(native, options, rtol, atol)
    if lane.name != "joint":
        raise InvalidArgumentError(
            "batch_mode='per_sample' supports direct backpropagation only; use odeint, or "
            "batch_mode='joint' with the adjoint"
        )
    same_tol = adjoint_rtol is None and adjoint_atol is None
    adjoint = _adjoint(options, a_native, a_rtol, a_atol, adjoint_options, adjoint_params,
                       same_method, same_tol)  # fmt: skip
    return run(func, y0, t, times, sign, native, ctrl, adjoint, lane, stats).ys


def _adjoint(options, a_method, a_rtol, a_atol, adjoint_options, params, same, same_tol):
    """torchdiffeq's adjoint arguments as an :class:`Adjoint` object."""
    norm: Any = None
    seminorm = False  # torchdiffeq's default: the whole augmented state
    if adjoint_options is None:
        # torchdiffeq: the forward options, less the norm (which the backward norm wraps)
        view = {k: v for k, v in (options or {}).items() if k != "norm"}
        a_ctrl = None
        if not (same and same_tol):
            a_ctrl = translate(a_method, view, a_rtol, a_atol, "adjoint_options", True)[1]
        a_method = None if same else a_method
    else:
        opts = _checked(adjoint_options, a_method.name, valid_options(a_method, True),
                        "adjoint_options")  # fmt: skip
        choice = opts.pop("norm", None)
        if isinstance(choice, str):
            if choice not in ("seminorm", "full"):
                raise InvalidArgumentError(
                    "adjoint_options['norm'] must be 'seminorm', 'full' or a callable, got "
                    f"{choice!r}"
                )
            seminorm = choice == "seminorm"
        elif choice is not None:
            norm = choice
        view = dict(opts)
        a_method, a_ctrl, _ = translate(a_method, opts, a_rtol, a_atol, "adjoint_options", True)
    adjoint = Adjoint(method=a_method, controller=a_ctrl, seminorm=seminorm, norm=norm,
                      params=params)  # fmt: skip
    adjoint.options_view = view
    return adjoint


def _name(method: Any) -> str:
    return "dopri5" if method is None else method if isinstance(method, str) else method.name


def _check_stats(stats: Any) -> None:
    if stats is not None and not isinstance(stats, SolveStats):
        raise InvalidTypeError(
            f"stats must be a neuralode.SolveStats (or None), got {type(stats).__name__}; "
            "e.g. stats = neuralode.SolveStats(); odeint(..., stats=stats)"
        )


def _not_native(native, method, y0, t, options, rtol, atol, event_fn, gradient) -> str | None:
    """Why the native engine hands this call to torchdiffeq (``None``: it does not;
    ``gradient`` is ``None`` for the adjoint)."""
    if native is None:
        return f"method {method!r} is not native"
    if event_fn is not None and not (isinstance(gradient, Direct) and native.adaptive):
        return "event handling" + (" with the adjoint" if gradient is None else "")
    if t.requires_grad:
        return "gradient with respect to t"
    if type(y0) is not torch.Tensor or y0.is_complex():
        ys = y0 if isinstance(y0, tuple) else (y0,)
        if any(y.is_complex() for y in ys):
            return "complex state"
        for tol in (rtol, atol):
            if isinstance(tol, torch.Tensor) and tol.numel() > 1:
                return "per-element tolerances with a tuple state"
    if options and not _FALL_THROUGH.isdisjoint(options):
        return "grid_constructor/perturb options"
    return None


def _delegation():
    from . import _delegate

    return _delegate


class NativeBackend(AbstractBackend):
    """neuralode's own engine, as a backend (``backend="native"``, the default). Methods or
    features it does not implement (Adams methods, scipy, events, gradients with respect to
    ``t``) are delegated to torchdiffeq unchanged."""

    name = "native"

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(METHODS.names()) | _TORCHDIFFEQ.methods

    def valid_options(self, method: str) -> frozenset[str]:
        native = _method(method)
        if native is None:
            return _TORCHDIFFEQ.valid_options(method)
        return valid_options(native)

    def valid_adjoint_options(self, method: str) -> frozenset[str]:
        native = _method(method)
        if native is None:
            return _TORCHDIFFEQ.valid_adjoint_options(method)
        return valid_options(native, adjoint=True)

    def is_adaptive(self, method: str | Method) -> bool:
        native = _method(method)
        if native is None:
            return _TORCHDIFFEQ.is_adaptive(str(method))
        return native.adaptive

    def solve(self, request: SolveRequest, stats: SolveStats) -> Any:
        r = request
        kw: dict[str, Any] = dict(rtol=r.rtol, atol=r.atol, method=r.method, options=r.options,
                                  event_fn=r.event_fn, backend=self, stats=stats)  # fmt: skip
        if r.adjoint is None:
            return odeint(r.func, r.y0, r.t, gradient=r.gradient, **kw)
        a = r.adjoint
        return odeint_adjoint(r.func, r.y0, r.t, adjoint_rtol=a.rtol, adjoint_atol=a.atol,
                              adjoint_method=a.method, adjoint_options=a.options,
                              adjoint_params=a.params, **kw)  # fmt: skip


_TORCHDIFFEQ: TorchdiffeqBackend = _backends.BACKENDS.get("torchdiffeq")  # type: ignore[assignment]
_NATIVE = NativeBackend()
_backends.register_backend(_NATIVE)
