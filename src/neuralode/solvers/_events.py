"""Events on the native engine: a solve that stops where ``event_fn(t, y)`` crosses zero.

The joint lane checks the event after every accepted step; a change of sign is located by
bisection on that step's dense output, down to ``atol`` in time (torchdiffeq's ``find_event``),
and the state there is the dense output at the event time (differentiable, as torchdiffeq's).
The event time itself is returned without a gradient; :func:`~neuralode.odeint_event`
re-routes gradients through it as torchdiffeq does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["EventSearch"]


class EventSearch:
    """One solve's search for the crossing of ``event_fn`` (internal times: user time times
    ``sign``; ``state`` turns the flat internal state into the user's form)."""

    def __init__(
        self,
        event_fn: Callable,
        sign: float,
        state: Callable[[torch.Tensor], Any],
        tol: float,
        time_like: torch.Tensor,
    ) -> None:
        self.event_fn, self.sign, self.state = event_fn, sign, state
        self.tol = max(float(tol), 1e-300)
        self.time_like = time_like  # the dtype and device of the times given to event_fn
        self.sign0: torch.Tensor | None = None
        self.time: float | None = None  # internal time of the event, once found

    def value(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """``event_fn`` at internal time ``s`` (checked: one finite element)."""
        t = torch.tensor(self.sign * s, dtype=self.time_like.dtype, device=self.time_like.device)
        with torch.no_grad():
            e = self.event_fn(t, self.state(y))
        if not isinstance(e, torch.Tensor) or e.numel() != 1 or not bool(torch.isfinite(e).all()):
            raise InvalidArgumentError(
                f"event_fn(t, y) returned {e!r} at t ≈ {self.sign * s:.6g}, not one finite "
                "value: the solve looks for where it crosses zero, so it must return a finite "
                "scalar tensor (check for a division by zero or a log of a negative value)",
                argument="event_fn",
            )
        return e.reshape(())

    def start(self, s0: float, y0: torch.Tensor) -> bool:
        """The event's sign at the start; ``True`` where it is zero there already (the event
        is at the start, as torchdiffeq reports it)."""
        e0 = self.value(s0, y0)
        self.sign0 = torch.sign(e0)
        if bool(e0 == 0):
            self.time = s0
            return True
        return False

    def search(self, stepper, s0: float, dt: float, y, y1, ks, f1) -> torch.Tensor | None:
        """After an accepted step from ``s0``: the state at the crossing inside it, or
        ``None`` where the event's sign has not changed."""
        s1 = s0 + dt
        if bool(torch.sign(self.value(s1, y1)) == self.sign0):
            return None
        lo, hi = s0, s1
        with torch.no_grad():
            for _ in range(max(0, math.ceil(math.log2(max((hi - lo) / self.tol, 1.0))))):
                mid = 0.5 * (lo + hi)
                y_mid = stepper.dense(y, y1, ks, f1, dt, (mid - s0) / dt)
                if bool(torch.sign(self.value(mid, y_mid)) == self.sign0):
                    lo = mid
                else:
                    hi = mid
        self.time = 0.5 * (lo + hi)
        return stepper.dense(y, y1, ks, f1, dt, (self.time - s0) / dt)
