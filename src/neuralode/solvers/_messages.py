"""Messages of solver failures, shared by every engine and loop."""

from __future__ import annotations

from typing import Any

import torch

from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = ["too_many_steps_message"]


def too_many_steps_message(limit: int, where: str, event: bool, rtol: Any) -> str:
    """The message of a solve that ran out of its step budget, with its likely causes."""
    default = " (the default limit)" if limit == DEFAULT_MAX_NUM_STEPS else ""
    causes = []
    if event:
        causes.append("the event function never crosses zero on this trajectory")
    causes += [
        "the dynamics are stiff (their fastest time scale is far below the interval: use looser "
        "tolerances, a regularizer such as KineticEnergy, or smaller initial weights)",
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
