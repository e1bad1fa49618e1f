"""Step-size control: the initial step, accept/reject and the next step, and clipping steps to
given times.

One formula serves both batch lanes: the joint lane passes Python floats (one step size for the
whole state), the per-sample lane passes tensors of shape ``(batch,)`` (a step size per sample).
:class:`_FloatOps` and :class:`_TensorOps` are the two arithmetics the formulas are written in.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["PIController", "StepBoundaries", "StepSizeController", "initial_step"]


class _FloatOps:
    """Arithmetic on Python floats (the joint lane)."""

    @staticmethod
    def where(cond: bool, a: float, b: float) -> float:
        return a if cond else b

    @staticmethod
    def minimum(a: float, b: float) -> float:
        return min(a, b)

    @staticmethod
    def maximum(a: float, b: float) -> float:
        return max(a, b)

    @staticmethod
    def both(a: bool, b: bool) -> bool:
        return a and b

    @staticmethod
    def either(a: bool, b: bool) -> bool:
        return a or b


class _TensorOps:
    """The same arithmetic elementwise on tensors (the per-sample lane)."""

    @staticmethod
    def where(cond: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
        return torch.where(cond, a, b)

    @staticmethod
    def minimum(a: Any, b: Any) -> torch.Tensor:
        return torch.clamp(a, max=b) if not isinstance(b, torch.Tensor) else torch.minimum(a, b)

    @staticmethod
    def maximum(a: Any, b: Any) -> torch.Tensor:
        return torch.clamp(a, min=b) if not isinstance(b, torch.Tensor) else torch.maximum(a, b)

    @staticmethod
    def both(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a & b

    @staticmethod
    def either(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a | b


def _ops(x: Any) -> type[_FloatOps] | type[_TensorOps]:
    return _TensorOps if isinstance(x, torch.Tensor) else _FloatOps


def initial_step(
    order: int,
    max_step: float,
    d0: Any,
    d1: Any,
    d2_at: Callable[[Any], Any],
) -> Any:
    """Hairer's initial step heuristic, as torchdiffeq (exponent ``1 / order``).

    ``d0`` and ``d1`` are the scaled norms of ``y0`` and ``f(t0, y0)``; ``d2_at(h0)`` evaluates
    the dynamics once at ``t0 + h0`` and returns the scaled norm of the change of slope divided
    by ``h0``. Floats for one step size, tensors of shape ``(batch,)`` for one per sample."""
    xp = _ops(d0)
    small = xp.either(d0 < 1e-5, d1 < 1e-5)
    h0 = xp.where(small, 1e-6, 0.01 * d0 / xp.maximum(d1, 1e-300))
    h0 = xp.minimum(h0, max_step)
    d2 = d2_at(h0)
    flat = xp.both(d1 <= 1e-15, d2 <= 1e-15)
    h1 = xp.where(
        flat,
        xp.maximum(h0 * 1e-3, 1e-6),
        (0.01 / xp.maximum(xp.maximum(d1, d2), 1e-300)) ** (1.0 / order),
    )
    return xp.minimum(100 * h0, h1)


class StepSizeController(abc.ABC):
    """Decides the next step size from the error ratio of the last attempt (a ratio of at most
    one accepts it). Subclasses implement :meth:`factor` once; it serves floats (the joint lane)
    and tensors (the per-sample lane) alike."""

    min_step: float = 0.0
    max_step: float = math.inf

    @abc.abstractmethod
    def factor(self, ratio: Any, prev_ratio: Any, order: int) -> Any:
        """The factor by which the step size changes after an attempt with error ``ratio``."""

    def accept(self, ratio: Any, dt: Any) -> Any:
        """Whether an attempt is accepted (a step at ``min_step`` is always taken, as in
        torchdiffeq)."""
        if type(ratio) is float:  # the joint lane, every step
            return ratio <= 1.0 or dt <= self.min_step
        return (ratio <= 1.0) | (dt <= self.min_step)

    def clamp(self, dt: Any) -> Any:
        xp = _ops(dt)
        return xp.minimum(xp.maximum(dt, self.min_step), self.max_step)

    def next_step(self, dt: Any, ratio: Any, prev_ratio: Any, order: int) -> Any:
        return self.clamp(dt * self.factor(ratio, prev_ratio, order))

    def remember(self, ratio: Any) -> Any:
        """The ratio kept for the next decision after an accepted step."""
        return _ops(ratio).maximum(ratio, 1e-4)


@dataclasses.dataclass
class PIController(StepSizeController):
    """torchdiffeq's controller: integral (``pcoeff == 0``, the default) or
    proportional–integral, with its options of the same names."""

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    min_step: float = 0.0
    max_step: float = math.inf

    # the joint lane's floats take these shortcuts (a few microseconds a step)
    def clamp(self, dt: Any) -> Any:
        if type(dt) is float:
            return min(max(dt, self.min_step), self.max_step)
        return super().clamp(dt)

    def remember(self, ratio: Any) -> Any:
        return max(ratio, 1e-4) if type(ratio) is float else super().remember(ratio)

    def factor(self, ratio: Any, prev_ratio: Any, order: int) -> Any:
        k = float(order)
        if not isinstance(ratio, torch.Tensor):
            if ratio == 0.0:
                return self.ifactor
            f = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / k)
            if self.pcoeff:
                f *= prev_ratio ** (self.pcoeff / k)
            return min(self.ifactor, max(f, 1.0 if ratio < 1.0 else self.dfactor))
        f = self.safety * ratio.clamp(min=1e-300) ** (-(self.icoeff + self.pcoeff) / k)
        if self.pcoeff:
            f = f * prev_ratio ** (self.pcoeff / k)
        lower = torch.where(ratio < 1.0, 1.0, self.dfactor)
        f = torch.clamp(torch.maximum(f, lower.to(f.dtype)), max=self.ifactor)
        return torch.where(ratio == 0, self.ifactor, f)


class StepBoundaries:
    """Clips steps so that they end exactly on ``step_t`` and ``jump_t`` (torchdiffeq's
    options). At a jump the stages at the step's end are evaluated just before it and the next
    step starts just after it (torchdiffeq's ``perturb``)."""

    __slots__ = ("_i", "jumps", "times")

    def __init__(self, step_t: Sequence[float], jump_t: Sequence[float], t0: float) -> None:
        self.times = sorted({*step_t, *jump_t})
        self.jumps = frozenset(jump_t)
        self._i = bisect.bisect_right(self.times, t0)

    def __bool__(self) -> bool:
        return bool(self.times)

    def clip(self, t_now: float, dt: float) -> tuple[float, float | None]:
        """``(dt, boundary)``: the step shortened to end on the next boundary it would pass,
        and that boundary (``None`` when the step ends before it)."""
        if self._i < len(self.times) and t_now + dt >= self.times[self._i]:
            hit = self.times[self._i]
            return hit - t_now, hit
        return dt, None

    def passed(self) -> None:
        """An accepted step ended on the boundary :meth:`clip` returned."""
        self._i += 1
