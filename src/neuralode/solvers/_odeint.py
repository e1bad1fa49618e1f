"""The public solve functions, call-compatible with torchdiffeq's."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import (
    InvalidArgumentError,
    InvalidTypeError,
    NonFiniteStateError,
    SolverError,
)
from . import _validate as v
from ._backends import AbstractBackend, SolveRequest, get_backend
from ._gradients import GRADIENT_METHODS
from ._instrument import first_nonfinite_time, is_finite
from ._messages import Status, failure
from ._methods import Method
from ._stats import SolveStats

__all__ = ["odeint", "odeint_adjoint", "odeint_dense", "odeint_event", "step_budget"]


def _prepare(
    func: Callable,
    y0: Any,
    t: torch.Tensor,
    rtol: Any,
    atol: Any,
    method: str | None,
    options: Mapping[str, Any] | None,
    event_fn: Callable | None,
    backend: str | AbstractBackend | None,
) -> tuple[AbstractBackend, SolveRequest]:
    engine = get_backend(backend)
    v.check_func(func)
    v.check_y0(y0)
    per_sample = isinstance(options, Mapping) and options.get("batch_mode") == "per_sample"
    v.check_t(t, per_sample=per_sample)
    if t.ndim == 2:
        if engine.name != "native":
            raise InvalidArgumentError(
                f"per-sample times (a 2-D t) need backend='native', not {engine.name!r}"
            )
        if not isinstance(y0, torch.Tensor) or y0.ndim == 0 or y0.shape[0] != t.shape[0]:
            shape = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
            raise InvalidArgumentError(
                f"per-sample times of shape {tuple(t.shape)} need a tensor state with "
                f"{t.shape[0]} samples in its first dimension, got {shape}"
            )
    v.check_tolerance(rtol, "rtol")
    v.check_tolerance(atol, "atol")
    v.check_tolerance_shape(rtol, "rtol", y0)
    v.check_tolerance_shape(atol, "atol", y0)
    method_object = None
    if isinstance(method, Method):  # an advanced user's own method object (native engine)
        if engine.name != "native":
            raise InvalidArgumentError(
                f"a method object ({method!r}) needs backend='native'; the {engine.name} "
                "backend takes method names"
            )
        method_object, method = method, method.name
        keys = engine.valid_options(method_object)
    else:
        method = v.check_method(method, engine.methods)
        keys = engine.valid_options(method)
    opts = _within_budget(engine, method_object or method, v.check_options(options, method, keys))
    v.check_event_fn(event_fn)
    request = SolveRequest(
        func=func, y0=y0, t=t, rtol=rtol, atol=atol, method=method, options=opts, event_fn=event_fn
    )
    request.method_object = method_object
    return engine, request


_STEP_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "neuralode_step_budget", default=None
)


@contextlib.contextmanager
def step_budget(max_num_steps: int) -> Iterator[None]:
    """Cap every adaptive solve started inside the block (forward and adjoint) at
    ``max_num_steps`` steps, whatever its options say: a solve that needs more raises
    :class:`~neuralode.TooManyStepsError` instead of running on. :func:`neuralode.diagnose`
    runs its probes under one, so that no model can make it hang."""
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 1:
        raise InvalidArgumentError(
            f"max_num_steps must be a positive integer, got {max_num_steps!r}"
        )
    token = _STEP_BUDGET.set(max_num_steps)
    try:
        yield
    finally:
        _STEP_BUDGET.reset(token)


def _within_budget(engine: AbstractBackend, method: Any, opts: dict[str, Any]) -> dict[str, Any]:
    budget = _STEP_BUDGET.get()
    if budget is not None and engine.is_adaptive(method):
        opts["max_num_steps"] = min(opts.get("max_num_steps") or v.DEFAULT_MAX_NUM_STEPS, budget)
    return opts


def _run(engine: AbstractBackend, request: SolveRequest, stats: SolveStats | None) -> Any:
    v.check_stats(stats)
    if stats is None:
        stats = SolveStats()
    stats.method = request.method
    stats.backend = engine.name
    stats.solves += 1
    if request.event_fn is None:
        times = request.t.detach()
        stats.time_span += float((times[..., -1] - times[..., 0]).abs().max())
    resolution = None
    if engine.is_adaptive(request.method_object or request.method):
        resolution = v.check_dtype_resolution(request.rtol, request.atol, request.y0)
        if resolution is not None:
            warnings.warn(resolution, UserWarning, stacklevel=3)
    try:
        out = engine.solve(request, stats)
        solution = out[1] if request.event_fn is not None else out
        times = request.t if request.event_fn is None else None
        if times is not None and times.ndim == 2:  # per-sample times: no single time to name
            if not is_finite(solution):
                raise NonFiniteStateError(None, detail=" (per-sample times)")
        elif times is not None:
            bad = first_nonfinite_time(solution, times)
            if bad is not None:
                raise NonFiniteStateError(
                    bad, detail=" (first output time with a non-finite state)"
                )
        elif not is_finite(solution):  # event mode: the solution ends at the event time
            raise NonFiniteStateError(None)
    except SolverError as err:
        explained = _explain(err, request, resolution)
        if explained is err:
            raise
        raise explained from err
    return out


def _explain(err: SolverError, request: SolveRequest, resolution: str | None) -> Exception:
    """A failure whose cause is in the input, said as such (only on the failure path)."""
    t0 = float(request.t[0])
    if not is_finite(request.y0):
        return NonFiniteStateError.at_start(t0)
    if resolution is not None:
        return SolverError(f"the solve failed ({type(err).__name__}) because {resolution}")
    if isinstance(err, NonFiniteStateError) and (err.time is None or not math.isfinite(err.time)):
        # no finite time to name ("t ≈ nan"): are the dynamics broken at the start already?
        with torch.no_grad():
            try:
                at_start = request.func(request.t[0], request.y0)
            except Exception:
                at_start = None
        if at_start is not None and not is_finite(at_start):
            return NonFiniteStateError.dynamics_at_start(t0)
        return NonFiniteStateError(None, detail=f" (after t = {t0:.6g})")
    return err


def odeint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    event_fn: Callable | None = None,
    backend: str | AbstractBackend | None = None,
    stats: SolveStats | None = None,
    gradient: str = "direct",
) -> Any:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    Same arguments and return value as ``torchdiffeq.odeint``; code written for torchdiffeq
    ports by changing the import. Gradients flow by direct backpropagation through the solver.

    Args:
        func: callable ``func(t, y)`` returning ``dy/dt`` with the shape of ``y``.
        y0: initial state, a floating-point tensor or a tuple of them.
        t: 1-D strictly increasing or decreasing tensor of output times; ``t[0]`` is the start.
        rtol, atol: relative and absolute tolerances (floats or tensors), used by adaptive
            methods.
        method: ``"dopri5"`` (default), ``"rk4"``, ``"euler"``, ... — any method name of
            torchdiffeq.
        options: method options, as in torchdiffeq (e.g. ``{"step_size": 0.1}``); an unknown
            key is an error, not a warning.
        event_fn: optional ``event_fn(t, y)``; the solve stops where it crosses zero and
            ``(event_t, solution)`` is returned, as in torchdiffeq.
        backend: engine name (``"native"``, neuralode's own engine, or ``"torchdiffeq"``) or
            instance; ``None`` picks the default (``"native"``; see ``set_default_backend``).
        stats: optional :class:`SolveStats` filled with NFE and step counters; backward
            counters keep counting when gradients are computed later.
        gradient: ``"direct"`` (backpropagate through the solver's operations),
            ``"checkpoint"`` (native engine: the exact gradient of the discrete solve, keeping
            only the accepted states and recomputing each step in the backward pass), or the
            name of a gradient method registered with ``register_gradient_method``.

    Returns:
        A tensor (or tuple of tensors) whose first dimension indexes ``t``.

    Raises:
        TypeError, ValueError: for invalid arguments, before any work is done.
        NonFiniteStateError: if the state becomes NaN or infinite.
        SolverError: if the solver cannot proceed (step size underflow, too many steps).
    """
    engine, request = _prepare(func, y0, t, rtol, atol, method, options, event_fn, backend)
    if gradient == "adjoint" or gradient not in GRADIENT_METHODS:
        names = ", ".join(repr(n) for n in GRADIENT_METHODS if n != "adjoint")
        raise InvalidArgumentError(
            f"gradient must be one of {names}, got {gradient!r}; for the continuous adjoint "
            "call odeint_adjoint"
        )
    request.gradient = gradient
    return _run(engine, request, stats)


def odeint_adjoint(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor,
    *,
    adjoint_rtol: float | torch.Tensor | None = None,
    adjoint_atol: float | torch.Tensor | None = None,
    adjoint_method: str | None = None,
    adjoint_options: Mapping[str, Any] | None = None,
    adjoint_params: Iterable[torch.Tensor] | None = None,
    **solve: Any,
) -> Any:
    """Like :func:`odeint`, with gradients by the adjoint method in O(1) memory.

    Same arguments and return value as ``torchdiffeq.odeint_adjoint``: :func:`odeint`'s
    keywords (``rtol``, ``atol``, ``method``, ``options``, ``event_fn``, ``backend``,
    ``stats``; its signature is the one place they are declared) and the ``adjoint_*`` ones.
    ``func`` must be an ``nn.Module`` unless ``adjoint_params`` lists the tensors to
    differentiate (``()`` for none). ``adjoint_options={"norm": "seminorm"}`` ignores the
    parameter adjoints in the backward error estimate (fewer backward steps, same accuracy of
    the state).
    """
    kw = _keywords(
        "odeint_adjoint",
        solve,
        tuple(_SOLVE_DEFAULTS),
        "adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options, adjoint_params",
    )
    rtol, atol, stats = kw["rtol"], kw["atol"], kw["stats"]
    engine, request = _prepare(
        func, y0, t, rtol, atol, kw["method"], kw["options"], kw["event_fn"], kw["backend"]
    )
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
    if adjoint_rtol is not None:
        v.check_tolerance(adjoint_rtol, "adjoint_rtol")
    if adjoint_atol is not None:
        v.check_tolerance(adjoint_atol, "adjoint_atol")
    if adjoint_method is None and request.method_object is not None:
        a_method = request.method_object  # the same method object solves the adjoint equations
    else:
        a_method = request.method if adjoint_method is None else adjoint_method
        a_method = v.check_method(a_method, engine.methods, name="adjoint_method")
    a_opts: dict[str, Any] | None = None
    if a_method not in (request.method, request.method_object) and adjoint_options is None:
        if request.options:
            raise InvalidArgumentError(
                "adjoint_method differs from method, so adjoint_options cannot be inferred from "
                "options; pass adjoint_options as well (e.g. adjoint_options={})"
            )
        a_opts = {}
    if adjoint_options is not None:
        a_opts = v.check_options(
            adjoint_options,
            a_method,
            engine.valid_adjoint_options(a_method),
            name="adjoint_options",
        )
        a_opts = _within_budget(engine, a_method, a_opts)
        norm = a_opts.get("norm")
        if isinstance(norm, str) and norm not in ("seminorm", "full"):
            raise InvalidArgumentError(
                f"adjoint_options['norm'] must be 'seminorm', 'full' or a callable, got {norm!r}"
            )
    request.adjoint = True
    request.adjoint_rtol = request.rtol if adjoint_rtol is None else adjoint_rtol
    request.adjoint_atol = request.atol if adjoint_atol is None else adjoint_atol
    request.adjoint_method = a_method
    request.adjoint_options = a_opts
    request.adjoint_params = adjoint_params
    return _run(engine, request, stats)


_ODEINT_PARAMETERS = inspect.signature(odeint).parameters
_SOLVE_DEFAULTS = {
    name: p.default
    for name, p in _ODEINT_PARAMETERS.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "gradient"
}


def _keywords(
    function: str, given: dict[str, Any], accepted: tuple[str, ...], also: str = ""
) -> dict[str, Any]:
    """``given`` completed with :func:`odeint`'s defaults; a keyword outside ``accepted`` is a
    ``TypeError`` that names the valid ones."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        more = f" and {also}" if also else ""
        raise InvalidTypeError(
            f"{function}() got unexpected keyword arguments {unknown}; it takes "
            f"{', '.join(accepted)}{more}"
        )
    return {**{k: _SOLVE_DEFAULTS[k] for k in accepted}, **given}


# help() and inspect show torchdiffeq's full signature, odeint's keywords first
odeint_adjoint.__signature__ = inspect.signature(odeint_adjoint).replace(
    parameters=[
        *(p for p in _ODEINT_PARAMETERS.values() if p.name in ("func", "y0", "t")),
        *(_ODEINT_PARAMETERS[n] for n in ("rtol", "atol", "method", "options", "event_fn")),
        *(
            p
            for p in inspect.signature(odeint_adjoint).parameters.values()
            if p.name.startswith("adjoint_")
        ),
        _ODEINT_PARAMETERS["backend"],
        _ODEINT_PARAMETERS["stats"],
    ]
)


def odeint_event(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t0: torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Solve from ``t0`` until ``event_fn(t, y)`` crosses zero; return ``(event_t, solution)``
    with gradients that flow through the event time — torchdiffeq's ``odeint_event``, same
    signature and return value.

    ``odeint_interface`` is :func:`odeint` by default (or :func:`odeint_adjoint`, or
    torchdiffeq's own); ``kwargs`` go to it (``rtol``, ``atol``, ``method``, ``options``,
    ``backend``, ``stats``, ...), so the solve gets neuralode's checks, counters and default
    step budget (an event that never triggers ends with a ``SolverError``).
    """
    import torchdiffeq

    v.check_func(func)
    v.check_y0(y0)
    v.check_event_fn(event_fn)
    if event_fn is None:
        raise InvalidTypeError("event_fn is required: odeint_event(func, y0, t0, event_fn=...)")
    if not isinstance(t0, torch.Tensor) or t0.numel() != 1 or not t0.is_floating_point():
        raise InvalidTypeError(
            f"t0 must be a one-element floating-point tensor, e.g. torch.tensor(0.0), got {t0!r}"
        )
    return torchdiffeq.odeint_event(
        func,
        y0,
        t0,
        event_fn=event_fn,
        reverse_time=reverse_time,
        odeint_interface=odeint if odeint_interface is None else odeint_interface,
        **kwargs,
    )


def odeint_dense(
    func: Callable,
    y0: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    **solve: Any,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Solve from ``t0`` to ``t1`` with dopri5 and return its dense output, a function
    ``y(t)`` for any ``t`` in ``[t0, t1]`` — torchdiffeq's ``odeint_dense``, same signature
    (the keywords ``rtol``, ``atol``, ``method``, ``options`` of :func:`odeint`, and ``stats``)
    and return value, run by torchdiffeq with neuralode's input checks, clear errors, counters
    and default step budget (``options["max_num_steps"]``, which torchdiffeq's version lacks).
    """
    kw = _keywords("odeint_dense", solve, ("rtol", "atol", "method", "options", "stats"))
    rtol, atol, method, options, stats = (
        kw[k] for k in ("rtol", "atol", "method", "options", "stats")
    )
    import torchdiffeq

    from ._instrument import InstrumentedFunc

    if not isinstance(y0, torch.Tensor):
        raise InvalidTypeError(
            f"odeint_dense needs a tensor state y0 (as torchdiffeq's), got {type(y0).__name__}"
        )
    for name, value in (("t0", t0), ("t1", t1)):
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise InvalidTypeError(f"{name} must be a one-element tensor, got {value!r}")
    if not float(t1) > float(t0):
        raise InvalidArgumentError(
            f"odeint_dense integrates forward: t1 ({float(t1)}) must exceed t0"
        )
    if method not in (None, "dopri5"):
        raise InvalidArgumentError(
            f"odeint_dense supports method='dopri5' only (as torchdiffeq), got {method!r}"
        )
    # the checks of odeint, and a step_budget in force, on the equivalent solve over [t0, t1]
    t = torch.stack([t0.reshape(()), t1.reshape(())])
    engine, request = _prepare(func, y0, t, rtol, atol, "dopri5", options, None, "torchdiffeq")
    opts = dict(request.options)
    v.check_stats(stats)
    stats = SolveStats() if stats is None else stats
    stats.method, stats.backend = "dopri5", engine.name
    stats.solves += 1
    limit = opts.pop("max_num_steps", None) or v.DEFAULT_MAX_NUM_STEPS
    counted = InstrumentedFunc(func, y0, stats)
    budget = 6 * limit + 2  # dopri5: six evaluations a step, two for the first step size

    def guarded(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if stats.nfe_forward >= budget:
            raise failure(Status.MAX_STEPS, limit=limit, rtol=rtol)
        return counted(t, y)

    try:
        return torchdiffeq.odeint_dense(
            guarded, y0, t0, t1, rtol=rtol, atol=atol, method="dopri5", options=opts
        )
    except AssertionError as err:
        raise SolverError(f"torchdiffeq's odeint_dense failed: {err}") from err


# help() and inspect show torchdiffeq's signature
odeint_dense.__signature__ = inspect.signature(odeint_dense).replace(
    parameters=[
        *(p for p in inspect.signature(odeint_dense).parameters.values() if p.name != "solve"),
        *(_ODEINT_PARAMETERS[n] for n in ("rtol", "atol", "method", "options", "stats")),
    ]
)
