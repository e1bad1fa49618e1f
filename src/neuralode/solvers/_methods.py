"""Methods: what one step of a solver computes.

A :class:`Method` is stateless and shared; for a solve it makes a :class:`Stepper`, which holds
the solve's kernels (and, for implicit methods, its Newton state) and offers the loop four
things: a step attempt, its error ratio, the slope at the step's end and the dense output inside
an accepted step. The loops in ``_loops`` compose a stepper with a step-size controller and know
nothing else about the method.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from . import _kernels as kernels
from ._controller import initial_step
from ._tableau import TABLEAUX, ButcherTableau

__all__ = ["METHODS", "ExplicitRK", "Method", "Stepper", "get_method", "register_method"]


class Stepper(abc.ABC):
    """One solve's view of a method. ``ev`` is the solve's :class:`Evaluator`."""

    method: Method

    def __init__(self, method: Method, ev, k: kernels.Kernels) -> None:
        self.method, self.ev, self.kernels = method, ev, k
        self.tab = getattr(method, "tableau", None)

    @abc.abstractmethod
    def step(self, t: Any, y: torch.Tensor, f0: torch.Tensor, dt: Any, last_node=None):
        """Attempt a step from ``(t, y)`` with slope ``f0``: ``(y1, stages)``. ``last_node``
        is the time at which stages at the step's end are evaluated (just before a jump)."""

    @abc.abstractmethod
    def error_ratio(self, y: torch.Tensor, y1: torch.Tensor, ks, dt: Any) -> Any:
        """The scaled error of the attempt: at most 1 accepts it; ``inf`` where the attempt
        failed (an implicit method's Newton iteration did not converge)."""

    def end_slope(self, t1: float, y1: torch.Tensor, ks, last_node=None):
        """``(f1, time)``: the slope at the end of an accepted step for its dense output, and
        the time it was evaluated at (``None`` where a stage served)."""
        if self.method.reuses_last_stage:
            return ks[-1], None
        time = t1 if last_node is None else last_node
        return self.ev(time, y1), time

    @abc.abstractmethod
    def dense(self, y0, y1, ks, f1, dt: Any, theta: Any) -> torch.Tensor:
        """The solution at ``t + theta * dt`` inside an accepted step."""

    def initial_step(self, t0: float, y0: torch.Tensor, f0: torch.Tensor, max_step: float):
        """Hairer's heuristic (one evaluation), as torchdiffeq."""
        k = self.kernels
        with torch.no_grad():
            d0, d1 = k.start_norms(y0, f0)

            def d2_at(h0):
                f1 = self.ev(t0 + h0, k.axpy(y0, f0, h0))
                return k.slope_change(y0, f0, f1, h0)

            return initial_step(self.method.order, max_step, d0, d1, d2_at)

    def checkpoint(self) -> Any:
        """What a recomputation of the last accepted step needs to reproduce it exactly (the
        checkpointed gradient keeps it with the step); ``None`` for explicit methods."""
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 (explicit methods keep nothing)
        """Put back what :meth:`checkpoint` returned, before recomputing that step."""


class Method(abc.ABC):
    """A one-step method: its name, order, whether it adapts its step, and its stepper."""

    name: str
    order: int
    adaptive: bool
    reuses_last_stage: bool = False
    implicit: bool = False
    lands_on_outputs: bool = False  # steps end on every output time instead of interpolating
    # whether a reused last stage is exactly f(t1, y1) (else a recomputed step must be given it)
    exact_slope: bool = True

    stepper_class: type[Stepper]

    def stepper(self, ev, k: kernels.Kernels) -> Stepper:
        """A stepper for one solve with kernels ``k``."""
        return self.stepper_class(self, ev, k)

    def graph_bytes_per_step(self, y0: torch.Tensor) -> int:
        """Roughly what direct backpropagation records per accepted step, besides autograd's
        own nodes (for the graph-size warning)."""
        return 3 * self.stages * y0.numel() * y0.element_size()

    stages: int = 1
    option_keys: frozenset[str] = frozenset()  # options of its own, besides the adaptive ones

    def with_options(self, options: Any) -> Method:
        """The method configured by the solve's options (itself where none concern it)."""
        return self

    nodes: tuple[float, ...] = ()  # where the stages are evaluated, as fractions of the step

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ExplicitRK(Method):
    """An explicit Runge–Kutta method given by a validated :class:`ButcherTableau`."""

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name
        self.order = tableau.order
        self.adaptive = tableau.adaptive
        self.reuses_last_stage = tableau.reuses_last_stage
        self.stages = tableau.stages
        self.nodes = tableau.c


class _ExplicitStepper(Stepper):
    def step(self, t, y, f0, dt, last_node=None):
        return self.kernels.rk_stages(self.ev, self.tab, t, y, f0, dt, last_node)

    def error_ratio(self, y, y1, ks, dt):
        return self.kernels.error_ratio(self.tab, ks, y, y1, dt)

    def dense(self, y0, y1, ks, f1, dt, theta):
        if type(theta) is float and theta >= 1.0:
            return y1
        return self.kernels.dense(self.tab, y0, y1, ks, f1, dt, theta)


ExplicitRK.stepper_class = _ExplicitStepper

METHODS: dict[str, Method] = {name: ExplicitRK(tab) for name, tab in TABLEAUX.items()}
"""The native methods by name (torchdiffeq's names for the explicit ones)."""


def register_method(method: Method) -> Method:
    """Make ``method`` available by its name to ``odeint(method=...)`` on the native engine."""
    METHODS[method.name] = method
    return method


def get_method(method: str | Method) -> Method:
    if isinstance(method, Method):
        return method
    return METHODS[method]
