"""Solver failures: one table from a failure's status to its exception and message, shared by
every engine and loop (:func:`failure`)."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import NonFiniteStateError, SolverError, StepSizeUnderflowError, TooManyStepsError
from ._controller import DEFAULT_MAX_NUM_STEPS, tightest

__all__ = [
    "STIFF_REMEDIES",
    "Status",
    "explain",
    "failure",
    "first_nonfinite_time",
    "step_underflow_message",
    "too_many_steps_message",
]

STIFF_REMEDIES = (
    "an implicit method for stiff equations, method='kvaerno5' (or 'kvaerno3', 'trbdf2'), "
    "which takes "
    "gradients by every gradient method (direct, checkpoint, adjoint); "
    "when training, a regularizer that keeps the learned dynamics non-stiff (KineticEnergy, "
    "JacobianFrobenius) and small initial weights of the dynamics. Looser tolerances and "
    "fixed-step methods do not help: an explicit method's step is bounded by stability, not "
    "accuracy"
)
"""What works on stiff dynamics (checked by the tests on dh/dt = -1e6 (h - cos t), with
gradients)."""


def too_many_steps_message(
    limit: int, where: str, event: bool, rtol: Any, projected: tuple[int, float] | None = None
) -> str:
    """The message of a solve that ran out of its step budget (or, ``projected = (steps taken,
    steps still needed)``, that would have), with its likely causes."""
    default = " (the default limit)" if limit == DEFAULT_MAX_NUM_STEPS else ""
    causes = []
    if event:
        causes.append("the event function never crosses zero on this trajectory")
    causes += [
        f"the dynamics are stiff (their fastest time scale is far below the interval): "
        f"{STIFF_REMEDIES}",
        "the right-hand side is discontinuous in t (pass the times of the jumps as "
        "options={'jump_t': ...})",
    ]
    r = tightest(rtol)
    if r < 1e-10:
        causes.append(f"rtol={r:g} asks for more accuracy than the solve can deliver")
    if projected is not None:
        taken, needed = projected
        head = (
            f"after {taken} steps{where} the solver would need about {needed:.2g} more at the "
            f"step sizes it takes now, far beyond max_num_steps={limit}{default}, so it stopped "
            "early"
        )
    else:
        goal = "the event" if event else "the next output time"
        head = f"the solver took more than max_num_steps={limit} steps{default}{where} without "
        head += f"reaching {goal} (the limit counts the steps from one output time to the next)"
    return (
        f"{head}. Likely causes: {'; '.join(causes)}. If the solve really needs more steps, "
        "raise the limit with options={'max_num_steps': N}."
    )


def step_underflow_message(where: str, implicit: bool = False) -> str:
    """The message of a step size that became too small to advance the time (an implicit
    method is not sent to itself)."""
    if implicit:
        return (
            f"the step size shrank to nothing{where}, with an implicit method. Likely causes: "
            "the solution blows up there (a finite-time singularity: check the dynamics' "
            "scale, or integrate over a shorter interval); the right-hand side is "
            "discontinuous there (pass the time as options={'jump_t': ...}); or it is not "
            "differentiable there, so that the Newton iteration cannot converge."
        )
    return (
        f"the step size shrank to nothing{where}. Likely causes: the solution blows up there "
        "(a finite-time singularity: check the dynamics' scale, or integrate over a shorter "
        "interval); the right-hand side is discontinuous there (pass the time as "
        f"options={{'jump_t': ...}}); or the dynamics are stiff: {STIFF_REMEDIES}."
    )


class Status(enum.Enum):
    """Why a solve stopped without finishing."""

    MAX_STEPS = "max_steps"  # the step budget ran out
    STEP_UNDERFLOW = "step_underflow"  # the step size shrank to nothing
    NONFINITE = "nonfinite"  # the state or a derivative became NaN or infinite
    EVENT_NEVER = "event_never"  # an event solve's time ran to infinity without an event


def _too_many_steps(
    where: str = "",
    limit: int = DEFAULT_MAX_NUM_STEPS,
    rtol: Any = 1e-7,
    event: bool = False,
    projected: tuple[int, float] | None = None,
    **_: Any,
) -> SolverError:
    return TooManyStepsError(too_many_steps_message(limit, where, event, rtol, projected))


def _underflow(where: str = "", implicit: bool = False, **_: Any) -> SolverError:
    return StepSizeUnderflowError(step_underflow_message(where, implicit))


def _nonfinite(time: float | None = None, detail: str = "", **_: Any) -> SolverError:
    return NonFiniteStateError(time, detail=detail)


def _event_never(time: float | None = None, **_: Any) -> SolverError:
    return TooManyStepsError(
        f"the event never triggered: the solve reached t ≈ {time:.6g} and could go no further "
        "without event_fn(t, y) crossing zero (the solution settled, and the step size grew "
        "without bound). Check that "
        "event_fn changes sign on this trajectory — its value at the start and where the "
        "solution goes — or give the search an end: solve to a final time with odeint first"
    )


_TABLE: dict[Status, Callable[..., SolverError]] = {
    Status.MAX_STEPS: _too_many_steps,
    Status.STEP_UNDERFLOW: _underflow,
    Status.NONFINITE: _nonfinite,
    Status.EVENT_NEVER: _event_never,
}


def failure(status: Status, **context: Any) -> SolverError:
    """The exception of a failed solve: ``context`` may give ``where`` (" near t ≈ ..."),
    ``limit`` and ``rtol`` (the step budget and tolerance), ``projected`` (steps taken and
    still needed, where the budget would run out), ``event`` (an event solve),
    ``implicit`` (an implicit method failed), ``time`` and ``detail`` (of a non-finite
    state)."""
    return _TABLE[status](**context)


def first_nonfinite_time(solution: Any, t: torch.Tensor) -> float | None:
    """The first output time whose state is not finite, or None if all are finite (one host
    synchronisation when everything is finite)."""
    from ._solve import is_finite

    if is_finite(solution):
        return None
    tensors = (solution,) if isinstance(solution, torch.Tensor) else tuple(solution)
    n = t.numel()
    bad = torch.zeros(n, dtype=torch.bool, device=t.device)
    for s in tensors:
        if s.ndim == 0 or s.shape[0] != n:
            continue
        bad |= ~torch.isfinite(s.detach().reshape(n, -1)).all(dim=1).to(t.device)
    idx = torch.nonzero(bad)
    if idx.numel() == 0:
        return None
    return float(t[int(idx[0])].detach())


def explain(
    err: SolverError, func: Callable, t: torch.Tensor, y0: Any, resolution: str | None
) -> Exception:
    """A failure whose cause is in the input, said as such (only on the failure path)."""
    from ._solve import is_finite

    t0 = float(t.reshape(t.shape[0], -1)[0, 0] if t.ndim == 2 else t[0])
    if not is_finite(y0):
        return NonFiniteStateError.at_start(t0)
    if resolution is not None:
        return SolverError(f"the solve failed ({type(err).__name__}) because {resolution}")
    if isinstance(err, NonFiniteStateError) and (err.time is None or not math.isfinite(err.time)):
        # no finite time to name ("t ≈ nan"): are the dynamics broken at the start already?
        with torch.no_grad():
            try:
                at_start = func(t.reshape(-1)[0] if t.ndim == 1 else t[:, 0], y0)
            except Exception:
                at_start = None
        if at_start is not None and not is_finite(at_start):
            return NonFiniteStateError.dynamics_at_start(t0)
        return NonFiniteStateError(None, detail=f" (after t = {t0:.6g})")
    return err
