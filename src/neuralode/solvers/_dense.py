"""Dense output: the solution between the output times, from the accepted steps' own
interpolants (``solve(..., dense=True)``)."""

from __future__ import annotations

import bisect
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _kernels as kernels
from ._evaluator import Evaluator
from ._loops import grid_interp
from ._methods import Stepper
from ._solve import Direct, GradientMethod, Plan, unflat

__all__ = ["DenseOutput", "dense_solve"]


class DenseOutput:
    """The solution between the output times, from the accepted steps' own interpolants (the
    method's dense output; the grid's linear or cubic interpolation for a fixed grid): call it
    with a time (a float or a one-element tensor) for the state there, or with a 1-D tensor of
    times for the states there (first dimension indexes them). Times in ``[t[0], t[-1]]``."""

    def __init__(
        self, plan: Plan, ev: Evaluator, y0: torch.Tensor, steps: list[tuple[Any, ...]]
    ) -> None:
        self._plan, self._ev, self._y0, self._steps = plan, ev, y0, steps
        self._starts = [s[0] for s in steps]
        self._stepper: Stepper | None = None
        if plan.cfg is not None:
            k = plan.cfg.kernels(y0) if not torch.is_grad_enabled() else None
            self._stepper = plan.method.stepper(ev, k or kernels.TorchKernels(None, None, None))
        self.t0 = plan.sign * plan.times[0]
        self.t1 = plan.sign * plan.times[-1]

    def _at(self, t: float) -> torch.Tensor:
        s = self._plan.sign * t
        lo, hi = self._plan.times[0], self._plan.times[-1]
        slack = 1e-12 * max(1.0, abs(lo), abs(hi))
        if not (lo - slack <= s <= hi + slack):
            raise InvalidArgumentError(
                f"the dense output covers t in [{self.t0:g}, {self.t1:g}], got t = {t:g}"
            )
        if not self._steps:
            return self._y0
        k = min(max(bisect.bisect_right(self._starts, s) - 1, 0), len(self._steps) - 1)
        step = self._steps[k]
        theta = min(max((s - step[0]) / step[1], 0.0), 1.0)
        if self._stepper is None:  # a fixed grid: (t0, dt, y0, y1, f0)
            t0, dt, y0, y1, f0 = step
            return grid_interp(self._ev, self._plan.interp, t0, t0 + dt, y0, y1, f0,
                               t0 + theta * dt)  # fmt: skip
        _, dt, y0, y1, ks, f1 = step
        return self._stepper.dense(y0, y1, ks, f1, dt, theta)

    def __call__(self, t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.ndim == 1:
            states = torch.stack([self._at(x) for x in t.detach().tolist()])
            return unflat(states, self._plan.shapes)
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            return unflat(self._at(float(t)), self._plan.shapes, batched=False)
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return unflat(self._at(float(t)), self._plan.shapes, batched=False)
        raise InvalidTypeError(
            "the dense output takes a time (a float or a one-element tensor) or a 1-D tensor "
            f"of times, got {t!r}"
        )


def dense_solve(plan: Plan, y0: torch.Tensor, gradient: GradientMethod):
    if not isinstance(gradient, Direct):
        raise InvalidArgumentError(
            "dense output keeps every step's stages: it is computed with the Direct() gradient "
            "method only (backpropagate through it, or solve again for other gradients)"
        )
    ev = plan.evaluator()
    steps: list[tuple] = []
    sol = torch.stack(plan.run(ev, y0, trajectory=steps))
    return sol, DenseOutput(plan, ev, y0, steps)
