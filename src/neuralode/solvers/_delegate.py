"""Calls the native engine does not solve itself: handed to torchdiffeq (a method or feature it
lacks), or to another registered backend. They get the native engine's checks, counters,
recording and clear errors; the request they receive is in torchdiffeq's terms."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError, NonFiniteStateError, SolverError
from . import _backends
from ._adapter import _ADAPTIVE, _BOTH, _FIXED, _NATIVE, OPTIONS, _checked, translate
from ._backends import AbstractBackend, AdjointRequest, SolveRequest, TorchdiffeqBackend
from ._controller import (
    AbstractStepSizeController,
    ConstantStepSize,
    PIController,
    check_tolerance,
    parameters,
)
from ._messages import explain, first_nonfinite_time
from ._methods import Method
from ._solve import Direct, GradientMethod, is_finite
from ._stats import ACTIVE, SolveStats

__all__ = ["Call", "delegate", "solve_on"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Call:
    """One call of odeint or odeint_adjoint, in torchdiffeq's terms (inputs checked, ``times``
    from :func:`~._solve.check_times`)."""

    func: Callable
    y0: Any
    t: torch.Tensor
    times: Any
    rtol: Any
    atol: Any
    method: Any
    options: Any
    event_fn: Callable | None
    stats: SolveStats | None
    gradient: GradientMethod
    adjoint: AdjointRequest | None = None


def delegate(reason: str, native: Method | None, call: Call) -> Any:
    """A call the native engine hands to torchdiffeq: checked as the native engine checks it,
    refused where it asks for what only the native engine has."""
    _check_names(call)
    options = call.options
    if not isinstance(call.gradient, Direct):
        raise InvalidArgumentError(
            f"gradient={call.gradient.name!r} is not available here ({reason}); use "
            "gradient='direct' or odeint_adjoint"
        )
    if isinstance(options, Mapping):
        if options.get("controller") is not None:
            raise InvalidArgumentError(
                f"options['controller'] is not available here ({reason}); use torchdiffeq's "
                "options (safety, ifactor, dfactor, pcoeff, icoeff, min_step, max_step)"
            )
        if options.get("batch_mode", "joint") != "joint":
            raise InvalidArgumentError(f"batch_mode='per_sample' is not available here ({reason})")
    if native is not None:  # a native method's options, checked by its objects
        translate(native, options, call.rtol, call.atol)
        if native.name not in _torchdiffeq().methods or isinstance(call.method, Method):
            names = ", ".join(sorted(_torchdiffeq().methods - {"scipy_solver"}))
            hint = ""
            if reason == "complex state":
                hint = ", or solve the real and imaginary parts as one real state of twice the size"
            raise InvalidArgumentError(
                f"{reason} is solved by torchdiffeq, which has no method {native.name!r}: use "
                f"one of its methods ({names}){hint}"
            )
        if isinstance(options, Mapping):
            call.options = {k: v for k, v in options.items() if k != "batch_mode"}
    logger.debug("native backend delegates to torchdiffeq: %s", reason)
    return solve_on(_torchdiffeq(), call, checked=native is not None)


def _check_names(call: Call) -> None:
    """A method name neither engine has: refused with every name the native backend takes
    (its own methods, registered ones included, and torchdiffeq's), not only torchdiffeq's."""
    known = _NATIVE.methods
    named = [("method", call.method)]
    if call.adjoint is not None:
        named.append(("adjoint_method", call.adjoint.method))
    for what, name in named:
        if isinstance(name, str) and name not in known:
            valid = ", ".join(sorted(known))
            raise InvalidArgumentError(f"unknown {what} {name!r}; valid methods are: {valid}")


def solve_on(engine: AbstractBackend, call: Call, checked: bool = False) -> Any:
    """Solve on another engine: the request in torchdiffeq's terms, with the native engine's
    checks, counters, recording and clear errors."""
    c = call
    if not isinstance(c.gradient, Direct):
        raise InvalidArgumentError(
            f"gradient={c.gradient.name!r} needs backend='native'; the {engine.name} backend "
            "backpropagates directly (odeint) or by the adjoint (odeint_adjoint)"
        )
    if isinstance(c.method, Method):
        raise InvalidArgumentError(
            f"a method object ({c.method!r}) needs backend='native'; the {engine.name} backend "
            "takes method names"
        )
    name = "dopri5" if c.method is None else c.method
    if not isinstance(name, str) or name not in engine.methods:
        valid = ", ".join(sorted(engine.methods))
        raise InvalidArgumentError(f"unknown method {name!r}; valid methods are: {valid}")
    if c.t.ndim == 2:
        raise InvalidArgumentError(
            f"per-sample times (a 2-D t) need backend='native', not {engine.name!r}"
        )
    if c.event_fn is not None and not callable(c.event_fn):
        raise InvalidTypeError(
            f"event_fn must be callable as event_fn(t, y) or None, got {type(c.event_fn).__name__}"
        )
    opts = _checked(c.options, name, engine.valid_options(name), "options")
    if not checked:
        _check_values(opts, engine.is_adaptive(name), c.rtol, c.atol)
    adjoint = c.adjoint
    if adjoint is not None and adjoint.method not in engine.methods:
        valid = ", ".join(sorted(engine.methods))
        raise InvalidArgumentError(
            f"unknown adjoint_method {adjoint.method!r}; valid methods are: {valid}"
        )
    if adjoint is not None and adjoint.options is not None:
        a_valid = engine.valid_adjoint_options(adjoint.method)
        a_opts = _checked(adjoint.options, adjoint.method, a_valid, "adjoint_options")
        norm = a_opts.get("norm")
        if isinstance(norm, str) and norm not in ("seminorm", "full"):
            raise InvalidArgumentError(
                f"adjoint_options['norm'] must be 'seminorm', 'full' or a callable, got {norm!r}"
            )
        adjoint = dataclasses.replace(adjoint, options=a_opts)
    request = SolveRequest(func=c.func, y0=c.y0, t=c.t, rtol=c.rtol, atol=c.atol, method=name,
                           options=opts, event_fn=c.event_fn, adjoint=adjoint)  # fmt: skip
    stats = SolveStats() if c.stats is None else c.stats
    for rec in ACTIVE.get():
        rec.solves.append(stats)
    stats.method, stats.backend = name, engine.name
    stats.solves += 1
    if c.event_fn is None and type(c.times) is list:
        stats.time_span += c.times[-1] - c.times[0]
    try:
        out = engine.solve(request, stats)
        solution = out[1] if c.event_fn is not None else out
        if c.event_fn is None:
            bad = first_nonfinite_time(solution, c.t)
            if bad is not None:
                raise NonFiniteStateError(
                    bad, detail=" (first output time with a non-finite state)"
                )
        elif not is_finite(solution):  # event mode: the solution ends at the event time
            raise NonFiniteStateError(None)
    except SolverError as err:
        explained = explain(err, c.func, c.t, c.y0, None)
        if explained is err:
            raise
        raise explained from err
    return out


def _check_values(opts: dict[str, Any], adaptive: bool, rtol: Any, atol: Any) -> None:
    """The values of torchdiffeq options that the engine's controllers also take, checked by
    those controllers (for methods the native engine does not have)."""
    kind = _ADAPTIVE if adaptive else _FIXED
    cls: type[AbstractStepSizeController] = PIController if adaptive else ConstantStepSize
    fields = parameters(cls)
    kw = {
        param: opts[key]
        for key, (target, param, takes) in OPTIONS.items()
        if key in opts and target == "controller" and param in fields and takes in (kind, _BOTH)
        and opts[key] is not None and key != "norm"
    }  # fmt: skip
    try:
        if adaptive:
            PIController(rtol=rtol, atol=atol, **kw)
        else:
            check_tolerance(rtol, "rtol")
            check_tolerance(atol, "atol")
            cls(**kw)
    except (InvalidArgumentError, InvalidTypeError) as err:
        if err.argument in opts:
            raise err.renamed(f"options[{err.argument!r}]") from None
        raise


def _torchdiffeq() -> TorchdiffeqBackend:
    return _backends.BACKENDS.get("torchdiffeq")  # type: ignore[return-value]
