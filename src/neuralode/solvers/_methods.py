"""Methods: what one step of a solver computes.

A :class:`Method` is an immutable object shared by every solve; for one solve it makes a
:class:`Stepper`, which holds the solve's kernels (and, for implicit methods, its Newton state)
and offers the loop four things: a step attempt, its error ratio, the slope at the step's end and
the dense output inside an accepted step. The loops compose a stepper with a step-size controller
and know nothing else about the method.

Every explicit method is :class:`ExplicitRK` with a validated Butcher tableau; the named classes
(:class:`Dopri5`, :class:`RK4`, ...) are those with torchdiffeq's tableaux. :data:`METHODS`
registers a default instance of each under its torchdiffeq name.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from ..registry import Registry
from . import _kernels as kernels
from ._tableau import TABLEAUX, ButcherTableau

__all__ = [
    "METHODS",
    "RK4",
    "AdaptiveHeun",
    "Bosh3",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRK",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "Method",
    "Midpoint",
    "Stepper",
    "Tsit5",
    "register_method",
]


class Stepper(abc.ABC):
    """One solve's view of a method. ``ev`` is the solve's evaluator of the dynamics (the
    lane's: an ``Evaluator``, or on the per-sample lane a counting one with a ``mask``)."""

    method: Method
    # whether the last attempted step failed (an implicit method's Newton iteration did not
    # converge; per sample on the per-sample lane): an explicit step never does
    failed: Any = False

    def __init__(self, method: Method, ev: Any, k: kernels.Kernels) -> None:
        self.method, self.ev, self.kernels = method, ev, k
        self.tab = getattr(method, "tableau", None)

    @abc.abstractmethod
    def step(
        self, t: Any, y: torch.Tensor, f0: torch.Tensor, dt: Any, last_node: Any = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Attempt a step from ``(t, y)`` with slope ``f0``: ``(y1, stages)``. ``last_node``
        is the time at which stages at the step's end are evaluated (just before a jump)."""

    @abc.abstractmethod
    def error_ratio(
        self, y: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor], dt: Any
    ) -> Any:
        """The scaled error of the attempt: at most 1 accepts it; ``inf`` where the attempt
        failed (an implicit method's Newton iteration did not converge)."""

    def end_slope(
        self, t1: Any, y1: torch.Tensor, ks: list[torch.Tensor], last_node: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """``(f1, time)``: the slope at the end of an accepted step for its dense output, and
        the time it was evaluated at (``None`` where a stage served)."""
        if self.method.reuses_last_stage:
            return ks[-1], None
        time = t1 if last_node is None else last_node
        return self.ev(time, y1), time

    @abc.abstractmethod
    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        ks: list[torch.Tensor],
        f1: torch.Tensor,
        dt: Any,
        theta: Any,
    ) -> torch.Tensor:
        """The solution at ``t + theta * dt`` inside an accepted step."""

    def initial_step(self, t0: Any, y0: torch.Tensor, f0: torch.Tensor) -> Any:
        """Hairer's heuristic (one evaluation), as torchdiffeq."""
        return self.kernels.initial_step(self.ev, self.method.order, t0, y0, f0)

    def checkpoint(self) -> Any:
        """What a recomputation of the last accepted step needs to reproduce it exactly (the
        checkpointed gradient keeps it with the step); ``None`` for explicit methods."""
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 (explicit methods keep nothing)
        """Put back what :meth:`checkpoint` returned, before recomputing that step."""


class Method(abc.ABC):
    """A one-step method: its name, order, whether it adapts its step, and its stepper.

    A method is immutable; :meth:`configured` returns a copy with other parameters (those
    named in ``parameters``, which torchdiffeq-style ``options`` may set by name)."""

    name: str
    order: int
    adaptive: bool
    reuses_last_stage: bool = False
    implicit: bool = False
    lands_on_outputs: bool = False  # steps end on every output time instead of interpolating
    # the smallest factor of the step after an accepted one, for a controller that leaves it to
    # the method (PIController.accept_floor None): 1 is torchdiffeq's rule, a step never
    # shrinks after it was accepted
    accept_floor: float = 1.0
    # how many units of roundoff of the state the step's error estimate carries (an implicit
    # method forms it from stage differences divided by the step): rtol must stay above that
    rounding_gain: float = 1.0
    # whether a reused last stage is exactly f(t, y) (else a recomputed step must be given it)
    exact_slope: bool = True
    stages: int = 1
    nodes: tuple[float, ...] = ()  # where the stages are evaluated, as fractions of the step
    parameters: ClassVar[frozenset[str]] = frozenset()  # what configured() may change

    stepper_class: type[Stepper]
    # the stepper on the per-sample lane, where it differs (an implicit method's per-sample
    # Newton iteration); explicit steppers take per-sample step sizes as they are
    per_sample_stepper_class: type[Stepper] | None = None

    def stepper(self, ev: Any, k: kernels.Kernels) -> Stepper:
        """A stepper for one solve with kernels ``k``."""
        return self.stepper_class(self, ev, k)

    def per_sample_stepper(self, ev: Any, k: kernels.Kernels) -> Stepper:
        """A stepper for one solve on the per-sample lane (``t`` and ``dt`` of shape
        ``(batch,)``)."""
        return (self.per_sample_stepper_class or self.stepper_class)(self, ev, k)

    def graph_bytes_per_step(self, y0: torch.Tensor) -> int:
        """Roughly what direct backpropagation records per accepted step, besides autograd's
        own nodes (for the graph-size warning)."""
        return 3 * self.stages * y0.numel() * y0.element_size()

    def configured(self, **parameters: Any) -> Method:
        """The method with ``parameters`` changed (itself where there are none)."""
        if not parameters:
            return self
        unknown = sorted(set(parameters) - self.parameters)
        if unknown:
            raise InvalidArgumentError(
                f"method {self.name!r} takes no parameters {unknown}; it takes "
                f"{sorted(self.parameters) or 'none'}"
            )
        return self._configured(**parameters)

    def _configured(self, **parameters: Any) -> Method:
        return self

    def for_tolerance(self, rtol: Any) -> Method:
        """The method as it steps at the relative tolerance ``rtol`` (a float or a tensor):
        itself, unless its error test depends on the tolerance (an implicit method's
        ``proportional``)."""
        return self

    def least_rtol(self, unit: float) -> float:
        """The smallest ``rtol`` whose steps this method resolves in a dtype of unit roundoff
        ``unit``: :attr:`rounding_gain` units of it (at least one)."""
        return unit * max(self.rounding_gain, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ExplicitRK(Method):
    """An explicit Runge–Kutta method given by a validated :class:`ButcherTableau`."""

    def __init__(self, tableau: ButcherTableau) -> None:
        if not isinstance(tableau, ButcherTableau):
            raise InvalidTypeError(
                f"ExplicitRK takes a ButcherTableau, got {type(tableau).__name__}"
            )
        self.tableau = tableau
        self.name = tableau.name
        self.order = tableau.order
        self.adaptive = tableau.adaptive
        self.reuses_last_stage = tableau.reuses_last_stage
        self.stages = tableau.stages
        self.nodes = tableau.c


class _ExplicitStepper(Stepper):
    """The kernels' primitives with the tableau bound (partials: no frame of their own on
    every step)."""

    def __init__(self, method: Method, ev, k: kernels.Kernels) -> None:
        super().__init__(method, ev, k)
        self.step = functools.partial(k.rk_stages, ev, self.tab)  # type: ignore[method-assign]
        self.error_ratio = functools.partial(k.error_ratio, self.tab)  # type: ignore[method-assign]
        self.dense = functools.partial(k.dense, self.tab)  # type: ignore[method-assign]

    def step(self, t, y, f0, dt, last_node=None):  # (replaced per instance)
        return self.kernels.rk_stages(self.ev, self.tab, t, y, f0, dt, last_node)

    def error_ratio(self, y, y1, ks, dt):
        return self.kernels.error_ratio(self.tab, y, y1, ks, dt)

    def dense(self, y0, y1, ks, f1, dt, theta):
        return self.kernels.dense(self.tab, y0, y1, ks, f1, dt, theta)


ExplicitRK.stepper_class = _ExplicitStepper


def _named(cls_name: str, tableau_name: str, doc: str) -> type[ExplicitRK]:
    """An explicit method with torchdiffeq's tableau of that name, as a class of its own."""

    def __init__(self) -> None:
        ExplicitRK.__init__(self, TABLEAUX[tableau_name])

    def __repr__(self) -> str:
        return f"{cls_name}()"

    return type(cls_name, (ExplicitRK,), {"__init__": __init__, "__repr__": __repr__,
                                          "__doc__": doc, "__module__": __name__})  # fmt: skip


Euler = _named("Euler", "euler", "Euler's method (order 1, fixed step).")
Midpoint = _named("Midpoint", "midpoint", "The explicit midpoint method (order 2, fixed step).")
Heun2 = _named("Heun2", "heun2", "Heun's method (order 2, fixed step).")
Heun3 = _named("Heun3", "heun3", "Heun's third-order method (fixed step).")
RK4 = _named("RK4", "rk4", "The classic fourth-order method in its 3/8 form (torchdiffeq's rk4).")
AdaptiveHeun = _named("AdaptiveHeun", "adaptive_heun", "Heun–Euler 2(1), adaptive.")
Fehlberg2 = _named("Fehlberg2", "fehlberg2", "Runge–Kutta–Fehlberg 2(1), adaptive.")
Bosh3 = _named("Bosh3", "bosh3", "Bogacki–Shampine 3(2), adaptive.")
Dopri5 = _named("Dopri5", "dopri5", "Dormand–Prince 5(4), adaptive (torchdiffeq's default).")
Dopri8 = _named("Dopri8", "dopri8", "Dormand–Prince 8(7), adaptive.")
Tsit5 = _named("Tsit5", "tsit5", "Tsitouras 5(4), adaptive.")

METHODS: Registry[Method] = Registry(
    "method", "a new one is a Method object registered with register_method(method)"
)
"""The native methods by name (torchdiffeq's names for the explicit ones): a default instance
of each; options that configure one go through :meth:`Method.configured`."""

for _cls in (Euler, Midpoint, Heun2, Heun3, RK4, AdaptiveHeun, Fehlberg2, Bosh3, Dopri5,
             Dopri8, Tsit5):  # fmt: skip
    _m: Method = _cls()  # type: ignore[call-arg]  # (each class has its own tableau)
    METHODS.register(_m.name, _m)


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` available by its name to ``odeint(method=...)``, blocks and the command
    line (``--method``)."""
    if not isinstance(method, Method):
        raise InvalidTypeError(
            f"register_method takes a Method object (e.g. ExplicitRK(tableau)), got "
            f"{type(method).__name__}"
        )
    return METHODS.register(method.name, method, replace=replace)
