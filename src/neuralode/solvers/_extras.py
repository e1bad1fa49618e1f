"""torchdiffeq's other two entry points: :func:`odeint_event` (solve until an event) and
:func:`odeint_dense` (dopri5's dense output as a function of ``t``), with torchdiffeq's
signatures and return values and neuralode's checks, counters and step budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError, SolverError
from ._adapter import odeint, translate
from ._backends import InstrumentedFunc
from ._messages import Status, failure
from ._methods import METHODS
from ._solve import Direct, budget_of, check_func, check_times, check_y0, run
from ._stats import ACTIVE, SolveStats

__all__ = ["odeint_dense", "odeint_event"]


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

    check_func(func)
    check_y0(y0)
    if event_fn is None or not callable(event_fn):
        raise InvalidTypeError(
            "event_fn is required and must be callable as event_fn(t, y): "
            "odeint_event(func, y0, t0, event_fn=...)"
        )
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
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    stats: SolveStats | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Solve from ``t0`` to ``t1`` with dopri5 and return its dense output, a function
    ``y(t)`` for any ``t`` in ``[t0, t1]`` — torchdiffeq's ``odeint_dense``, same signature
    (and ``stats``) and return value, solved by the native engine (its dense output is
    dopri5's, as torchdiffeq's) with neuralode's input checks, clear errors, counters and step
    budget (``options["max_num_steps"]``, which torchdiffeq's version lacks). A complex state
    goes to torchdiffeq, with the same checks and budget."""
    check_func(func)
    if not isinstance(y0, torch.Tensor):
        raise InvalidTypeError(
            f"odeint_dense needs a tensor state y0 (as torchdiffeq's), got {type(y0).__name__}"
        )
    check_y0(y0)
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
    if stats is not None and not isinstance(stats, SolveStats):
        raise InvalidTypeError(f"stats must be a SolveStats or None, got {type(stats).__name__}")
    dopri5, ctrl, lane = translate(METHODS.get("dopri5"), options, rtol, atol)
    if lane.name != "joint":
        raise InvalidArgumentError("odeint_dense solves the whole state jointly (no batch_mode)")
    if y0.is_complex():
        return _torchdiffeq_dense(func, y0, t0, t1, rtol, atol, ctrl, options, stats)
    t = torch.stack([t0.detach().reshape(()), t1.detach().reshape(())])
    times, sign = check_times(t)
    solution = run(func, y0, t, times, sign, dopri5, ctrl, Direct(), lane, stats, dense=True)
    dense = solution.dense

    def dense_output_fn(t_eval: torch.Tensor) -> torch.Tensor:
        return dense(t_eval)

    return dense_output_fn


def _torchdiffeq_dense(func, y0, t0, t1, rtol, atol, ctrl, options, stats):
    """torchdiffeq's own odeint_dense (complex states), counted and with a step budget."""
    import torchdiffeq

    opts = {k: v for k, v in (options or {}).items() if k != "max_num_steps"}
    stats = SolveStats() if stats is None else stats
    for rec in ACTIVE.get():
        rec.solves.append(stats)
    stats.method, stats.backend = "dopri5", "torchdiffeq"
    stats.solves += 1
    limit = budget_of(ctrl.max_num_steps)
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
