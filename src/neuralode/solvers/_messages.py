"""Messages of solver failures, shared by every engine and loop."""

from __future__ import annotations

from typing import Any

import torch

from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = ["STIFF_REMEDIES", "step_underflow_message", "too_many_steps_message"]

STIFF_REMEDIES = (
    "an implicit method for stiff equations, method='kvaerno3' (or 'trbdf2'), which takes "
    "gradients by every gradient method (direct, checkpoint, adjoint); "
    "when training, a regularizer that keeps the learned dynamics non-stiff (KineticEnergy, "
    "JacobianFrobenius) and small initial weights of the dynamics. Looser tolerances and "
    "fixed-step methods do not help: an explicit method's step is bounded by stability, not "
    "accuracy"
)
"""What works on stiff dynamics (checked by the tests on dh/dt = -1e6 (h - cos t), with
gradients)."""


def too_many_steps_message(limit: int, where: str, event: bool, rtol: Any) -> str:
    """The message of a solve that ran out of its step budget, with its likely causes."""
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
    r = float(rtol.min()) if isinstance(rtol, torch.Tensor) else float(rtol)
    if r < 1e-10:
        causes.append(f"rtol={r:g} asks for more accuracy than the solve can deliver")
    return (
        f"the solver took more than max_num_steps={limit} steps{default}{where} without "
        f"finishing. Likely causes: {'; '.join(causes)}. If the solve really needs more steps, "
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
