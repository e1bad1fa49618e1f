"""Step-size controllers: what step control means, as objects.

An adaptive controller (:class:`StepSizeController`, concretely :class:`PIController`) owns
everything that decides the steps: the tolerances ``rtol``/``atol`` and the error ``norm``, the
first, smallest and largest step, the step budget ``max_num_steps``, the times steps must end on
(``step_t``) or stop and restart at (``jump_t``), and the formula that turns an attempt's error
into the next step size. :class:`ConstantStepSize` is the fixed grid (torchdiffeq's
``step_size`` and ``interp``). Each validates itself on construction; :data:`CONTROLLERS`
registers them by name.

One formula serves both lanes: the joint lane passes Python floats (one step size for the whole
state), the per-sample lane tensors of shape ``(batch,)`` (a step size per sample).
:class:`_FloatOps` and :class:`_TensorOps` are the two arithmetics the formulas are written in.
"""

from __future__ import annotations

import abc
import bisect
import copy
import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from ..registry import Registry

__all__ = [
    "CONTROLLERS",
    "DEFAULT_MAX_NUM_STEPS",
    "PROJECTION_FACTOR",
    "AbstractStepSizeController",
    "ConstantStepSize",
    "PIController",
    "StepBoundaries",
    "StepSizeController",
    "check_resolution",
    "check_tolerance",
    "check_tolerance_shape",
    "dtype_resolution",
    "initial_step",
    "projection_interval",
    "tightest",
]

DEFAULT_MAX_NUM_STEPS = 100_000
"""The default step budget of an adaptive solve: the most steps from one output time to the
next (torchdiffeq's is 2**31, which never ends a hopeless solve). A solve that needs more
raises a ``SolverError`` that says how to raise it."""
PROJECTION_FACTOR = 10
"""A solve stops early once it would need more than this many times its step budget."""


def projection_interval(limit: int) -> int:
    """How often (in steps) a loop projects the steps it still needs: every tenth of its
    budget, at least every 1,000 steps."""
    return max(1000, limit // 10)


_TOL_HINT = "typical values are 1e-3 for training and 1e-5 for evaluation"


# --------------------------------------------------------------------------- value checks


def tightest(tol: Any) -> float:
    """A tolerance's smallest value (itself where it is a number; a tensor's smallest element,
    read from the device)."""
    return float(tol.min()) if isinstance(tol, torch.Tensor) else float(tol)


def check_tolerance(value: Any, name: str) -> Any:
    """A positive, finite tolerance: a float, or a real tensor (one per element, or one
    element); returns it as a float where it is one number."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise InvalidArgumentError(
                f"{name} must not require gradient; pass {name}.detach()", argument=name
            )
        v = value.detach()
        if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise InvalidTypeError(
                f"{name} must be a float or a real tensor, got dtype {v.dtype}", argument=name
            )
        if v.numel() == 0 or not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
            raise InvalidArgumentError(
                f"{name} must be positive and finite, got {v.tolist()}; {_TOL_HINT}",
                argument=name,
            )
        return float(v) if v.numel() == 1 else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(
            f"{name} must be a positive float or tensor, got {type(value).__name__}",
            argument=name,
        )
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(
            f"{name} must be positive and finite, got {value!r}; {_TOL_HINT}", argument=name
        )
    return float(value)


def _real(value: Any, name: str) -> float:
    """A real number given as a Python number or a one-element real tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.detach())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise InvalidTypeError(f"{name} must be a real number, got {value!r}", argument=name)


def _positive(value: Any, name: str, finite: bool = True) -> float:
    v = _real(value, name)
    if not v > 0:
        raise InvalidArgumentError(f"{name} must be positive, got {v!r}", argument=name)
    if finite and not math.isfinite(v):
        raise InvalidArgumentError(
            f"{name} must be finite, got {v!r}; it is a step length in the units of t, e.g. 0.1",
            argument=name,
        )
    return v


def _times(value: Any, name: str) -> tuple[float, ...]:
    if value is None:
        return ()
    if type(value) in (tuple, list) and all(type(x) in (float, int) for x in value):
        times = tuple(float(x) for x in value)  # (the common case, without a tensor round trip)
    else:
        try:
            times = tuple(float(x) for x in torch.as_tensor(value).detach().reshape(-1).tolist())
        except (TypeError, ValueError, RuntimeError):
            raise InvalidTypeError(
                f"{name} must be a 1-D tensor or sequence of times, got {value!r}", argument=name
            ) from None
    if not all(math.isfinite(x) for x in times):
        raise InvalidArgumentError(f"{name} must hold finite times, got {times}", argument=name)
    return times


def check_tolerance_shape(value: Any, name: str, y0: Any) -> None:
    """A tolerance tensor must broadcast to the state (element-wise tolerances)."""
    if not isinstance(value, torch.Tensor) or value.numel() == 1:
        return
    # a tuple state is solved as one flat vector
    flat = (sum(y.numel() for y in y0),) if isinstance(y0, tuple) else ()
    target = tuple(y0.shape) if isinstance(y0, torch.Tensor) else flat
    try:
        ok = torch.broadcast_shapes(tuple(value.shape), target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to the state's shape "
            f"{target}; pass a float, a one-element tensor, or a tensor that broadcasts to the "
            "state (one tolerance per element)",
            argument=name,
        )


_RESOLVED: set[tuple] = set()  # tolerances known to be within their dtype's resolution
_FINFO = {d: torch.finfo(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def dtype_resolution(rtol: Any, atol: Any, ref: torch.Tensor, method: Any = None) -> str | None:
    """A message when a tolerance is below what the state's dtype can resolve, else None.

    ``rtol`` below the dtype's unit roundoff (half its epsilon) cannot be met: each step's error
    estimate is itself rounded at that level, so the step size collapses or the answer is off
    by far more than asked. ``atol`` below the smallest normal number is likewise meaningless.
    A ``method`` whose estimate carries its rounding amplified (an implicit one: see
    :attr:`~._methods.Method.rounding_gain`) needs the larger ``rtol`` its
    :meth:`~._methods.Method.least_rtol` gives.
    """
    if not ref.is_floating_point():
        return None
    info = _FINFO.get(ref.dtype) or torch.finfo(ref.dtype)
    unit = info.eps / 2
    floor = unit if method is None else method.least_rtol(unit)
    key = (rtol, atol, ref.dtype, floor) if type(rtol) is float and type(atol) is float else None
    if key is not None and key in _RESOLVED:
        return None
    r, a = tightest(rtol), tightest(atol)
    if r >= floor and a >= info.tiny:
        if key is not None and len(_RESOLVED) < 1024:
            _RESOLVED.add(key)
        return None
    wider = "float64" if ref.dtype == torch.float32 else "float32 or float64"
    bad = f"rtol={r:g}" if r < floor else f"atol={a:g}"
    if floor > unit and r < floor:
        scale = 10.0 ** math.floor(math.log10(floor))
        least = math.ceil(floor / scale) * scale  # the floor rounded up to one digit
        return (
            f"{bad} is below the resolution of the method {method.name!r} in the state's dtype "
            f"{ref.dtype}: its error estimate is formed from differences of its stages, which "
            f"carry the dtype's rounding (unit roundoff {unit:.2g}), so below rtol "
            f"{least:.0e} its steps collapse and the solve cannot even start. Use rtol >= "
            f"{least:.0e} with {ref.dtype}, or solve in a wider dtype ({wider})"
        )
    return (
        f"{bad} is below the resolution of the state's dtype {ref.dtype} (unit roundoff "
        f"{unit:.2g}, smallest normal {info.tiny:.2g}): the solver cannot meet it, so steps "
        f"collapse or the result is silently inaccurate. Use rtol >= {4 * unit:.0e} with "
        f"{ref.dtype}, or solve in a wider dtype ({wider})"
    )


def check_resolution(rtol: Any, atol: Any, ref: torch.Tensor, method: Any) -> str | None:
    """:func:`dtype_resolution` for a solve by ``method``: an error for an implicit method,
    which could never take a step, else a warning; returns the message (None: no problem)."""
    resolution = dtype_resolution(rtol, atol, ref, method)
    if resolution is not None and method.implicit:
        if repr(method.name) not in resolution:  # (the message on the dtype alone)
            resolution += (
                f". With the implicit method {method.name!r} the solve cannot even start: "
                "its Newton iteration stops at a fraction of the tolerance"
            )
        bad = "atol" if resolution.startswith("atol") else "rtol"
        raise InvalidArgumentError(resolution, argument=bad)
    if resolution is not None:
        warnings.warn(resolution, UserWarning, stacklevel=4)
    return resolution


# --------------------------------------------------------------------------- arithmetic


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


def _ops(x: Any) -> Any:
    """The operations for ``x``'s kind: :class:`_TensorOps` for a tensor, else
    :class:`_FloatOps` (typed ``Any``: the same calls take floats or tensors)."""
    return _TensorOps if isinstance(x, torch.Tensor) else _FloatOps


def initial_step(
    order: int,
    d0: Any,
    d1: Any,
    d2_at: Callable[[Any], Any],
) -> Any:
    """Hairer's initial step heuristic, as torchdiffeq (exponent ``1 / order``; its probe is
    not held to ``max_step``, which bounds the steps themselves, as in torchdiffeq).

    ``d0`` and ``d1`` are the scaled norms of ``y0`` and ``f(t0, y0)``; ``d2_at(h0)`` evaluates
    the dynamics once at ``t0 + h0`` and returns the scaled norm of the change of slope divided
    by ``h0``. Floats for one step size, tensors of shape ``(batch,)`` for one per sample."""
    if type(d0) is float and type(d1) is float:  # the joint lane: plain arithmetic
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / max(d1, 1e-300)
        d2 = d2_at(h0)
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(h0 * 1e-3, 1e-6)
        else:
            h1 = (0.01 / max(d1, d2, 1e-300)) ** (1.0 / order)
        return min(100 * h0, h1)
    xp = _ops(d0)
    small = xp.either(d0 < 1e-5, d1 < 1e-5)
    h0 = xp.where(small, 1e-6, 0.01 * d0 / xp.maximum(d1, 1e-300))
    d2 = d2_at(h0)
    flat = xp.both(d1 <= 1e-15, d2 <= 1e-15)
    h1 = xp.where(
        flat,
        xp.maximum(h0 * 1e-3, 1e-6),
        (0.01 / xp.maximum(xp.maximum(d1, d2), 1e-300)) ** (1.0 / order),
    )
    return xp.minimum(100 * h0, h1)


# --------------------------------------------------------------------------- controllers


class AbstractStepSizeController(abc.ABC):
    """How a solve chooses its steps. ``adaptive`` controllers choose them from an error
    estimate (and need a method that has one); the others lay out a grid."""

    adaptive: ClassVar[bool]

    def replace(self, **changes: Any) -> AbstractStepSizeController:
        """A copy with ``changes`` applied and checked."""
        new = copy.copy(self)
        for name, value in changes.items():
            if not hasattr(new, name):
                raise InvalidArgumentError(
                    f"{type(self).__name__} has no parameter {name!r}", argument=name
                )
            setattr(new, name, value)
        new._check()
        return new

    def _check(self) -> None:  # noqa: B027 (a controller without parameters checks nothing)
        """Check (and normalise) the parameters; called on construction and by replace."""


@dataclasses.dataclass(eq=False)
class ConstantStepSize(AbstractStepSizeController):
    """A fixed grid, as torchdiffeq's fixed-step methods: steps of ``step_size`` from ``t[0]``
    with the last one shortened onto ``t[-1]`` (``None``: one step between consecutive output
    times), and outputs between grid points interpolated ``"linear"`` ly or by ``"cubic"``
    Hermite interpolation."""

    step_size: float | None = None
    interp: str = "linear"

    adaptive: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if self.step_size is not None:
            self.step_size = _positive(self.step_size, "step_size")
        if self.interp not in ("linear", "cubic"):
            raise InvalidArgumentError(
                f"interp must be 'linear' or 'cubic', got {self.interp!r}", argument="interp"
            )


@dataclasses.dataclass(eq=False)
class StepSizeController(AbstractStepSizeController):
    """An adaptive controller: accepts an attempt whose error ratio (the ``norm`` of the error
    estimate scaled by ``atol + rtol * |y|``) is at most one, and scales the step size by
    :meth:`factor`. Subclasses implement :meth:`factor` once; it serves floats (the joint lane)
    and tensors (the per-sample lane) alike.

    Args:
        rtol: the relative tolerance (a float, or a tensor broadcasting to the state: one per
            element); torchdiffeq's default.
        atol: the absolute tolerance, likewise.
        norm: the error norm, a function of the scaled error in the state's form (a tuple for a
            tuple state); ``None``: the root mean square (for a tuple state, the largest over
            its parts, as torchdiffeq).
        first_step: the first step's size (``None``: Hairer's heuristic, as torchdiffeq).
        min_step: the smallest step; a step at ``min_step`` is always accepted.
        max_step: the largest step.
        max_num_steps: the step budget: the most steps (accepted or rejected) from one output
            time to the next, as torchdiffeq counts them; a solve that needs more fails with
            the likely causes.
        step_t: times every step ends on (where the dynamics change quickly).
        jump_t: times of discontinuities: steps end just before them and restart after.
    """

    rtol: Any = 1e-7
    atol: Any = 1e-9
    norm: Callable[[Any], Any] | None = None
    first_step: float | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    step_t: Sequence[float] = ()
    jump_t: Sequence[float] = ()

    adaptive: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        self.rtol = check_tolerance(self.rtol, "rtol")
        self.atol = check_tolerance(self.atol, "atol")
        if self.norm is not None and not callable(self.norm):
            raise InvalidTypeError(
                f"norm must be a function of the scaled error or None, got {self.norm!r}",
                argument="norm",
            )
        if self.first_step is not None:
            self.first_step = _positive(self.first_step, "first_step")
        lo = _real(self.min_step, "min_step")
        if not (math.isfinite(lo) and lo >= 0):
            raise InvalidArgumentError(
                f"min_step must be non-negative and finite, got {lo!r}", argument="min_step"
            )
        hi = _positive(self.max_step, "max_step", finite=False)
        if lo > hi:
            raise InvalidArgumentError(
                f"min_step ({lo}) must not exceed max_step ({hi})", argument="min_step"
            )
        self.min_step, self.max_step = lo, hi
        n = _real(self.max_num_steps, "max_num_steps")
        if not (math.isfinite(n) and n == int(n) and n >= 1):
            raise InvalidArgumentError(
                f"max_num_steps must be a whole number of at least 1, got "
                f"{self.max_num_steps!r} (the default is {DEFAULT_MAX_NUM_STEPS})",
                argument="max_num_steps",
            )
        self.max_num_steps = int(n)
        self.step_t = _times(self.step_t, "step_t")
        self.jump_t = _times(self.jump_t, "jump_t")

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
        if type(dt) is float:
            return min(max(dt, self.min_step), self.max_step)
        xp = _ops(dt)
        return xp.minimum(xp.maximum(dt, self.min_step), self.max_step)

    def next_step(self, dt: Any, ratio: Any, prev_ratio: Any, order: int) -> Any:
        return self.clamp(dt * self.factor(ratio, prev_ratio, order))

    def remember(self, ratio: Any) -> Any:
        """The ratio kept for the next decision after an accepted step."""
        if type(ratio) is float:
            return max(ratio, 1e-4)
        return _ops(ratio).maximum(ratio, 1e-4)

    def decide(
        self, ratio: float, dt: float, prev_ratio: float, order: int
    ) -> tuple[bool, float, float]:
        """The joint lane's decision after an attempt, in one call: ``(accepted, next step,
        the ratio kept for the next decision)``."""
        accepted = self.accept(ratio, dt)
        dt_next = self.next_step(dt, ratio, prev_ratio, order)
        return accepted, dt_next, self.remember(ratio) if accepted else prev_ratio


def adaptive_controller(controller: AbstractStepSizeController) -> StepSizeController:
    """``controller``, checked to be what an adaptive solve reads (a :class:`StepSizeController`:
    its ``rtol``, ``atol`` and step-size rules)."""
    if type(controller) is not PIController and not isinstance(controller, StepSizeController):
        raise InvalidTypeError(
            f"{type(controller).__name__} is adaptive, so it must be a StepSizeController (an "
            "adaptive solve reads its rtol, atol and step rules): subclass "
            "neuralode.solvers.StepSizeController or PIController"
        )
    return controller


@dataclasses.dataclass(eq=False)
class PIController(StepSizeController):
    """torchdiffeq's controller: integral (``pcoeff == 0``, the default) or
    proportional–integral, with its options of the same names: the next step is the last one
    times ``safety * ratio^-(icoeff + pcoeff)/k * prev_ratio^(pcoeff/k)`` (``k`` the method's
    order), at most ``ifactor`` and, after a rejection, at least ``dfactor``. The parameters
    of every adaptive controller are :class:`StepSizeController`'s.

    ``accept_floor`` is the smallest factor after an accepted step: torchdiffeq's rule is 1 (a
    step never shrinks after it was accepted). ``None``, the default, leaves it to the method:
    1 for the explicit methods (torchdiffeq's steps exactly), 0 for the implicit ones, whose
    next step may shrink by the safety factor after an accepted one (fewer rejected steps)."""

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    accept_floor: float | None = None

    def _check(self) -> None:
        super()._check()
        bounds = {  # parameter: (low, high, what a sensible value looks like)
            "safety": (0.0, 1.0, "a factor in (0, 1], e.g. 0.9"),
            "dfactor": (0.0, 1.0, "the smallest step factor after a rejection, in (0, 1], "
                        "e.g. 0.2"),
            "ifactor": (1.0, math.inf, "the largest growth factor of the step, >= 1, e.g. 10"),
        }  # fmt: skip
        for name, (low, high, hint) in bounds.items():
            v = _real(getattr(self, name), name)
            ok = low < v <= high if name != "ifactor" else low <= v < high
            if not ok:
                raise InvalidArgumentError(f"{name} must be {hint}; got {v!r}", argument=name)
            setattr(self, name, v)
        for name in ("pcoeff", "icoeff"):
            v = _real(getattr(self, name), name)
            if not math.isfinite(v):
                raise InvalidArgumentError(f"{name} must be finite, got {v!r}", argument=name)
            setattr(self, name, v)
        if self.accept_floor is not None:
            v = _real(self.accept_floor, "accept_floor")
            if not 0.0 <= v <= 1.0:
                raise InvalidArgumentError(
                    "accept_floor must be the smallest step factor after an accepted step, in "
                    f"[0, 1] (torchdiffeq's rule: 1), or None for the method's; got {v!r}",
                    argument="accept_floor",
                )
            self.accept_floor = v

    _inline: ClassVar[bool] = True  # decide() inlines the methods below (no subclass changed them)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = ("factor", "accept", "clamp", "next_step", "remember")
        cls._inline = all(getattr(cls, n) is getattr(PIController, n) for n in names)

    def decide(
        self, ratio: float, dt: float, prev_ratio: float, order: int
    ) -> tuple[bool, float, float]:
        if not self._inline:  # a subclass with a formula of its own
            return super().decide(ratio, dt, prev_ratio, order)
        # accept, factor, clamp and remember written out for the joint lane's floats
        accepted = ratio <= 1.0 or dt <= self.min_step
        if ratio == 0.0:
            f = self.ifactor
        else:
            f = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / order)
            if self.pcoeff:
                f *= prev_ratio ** (self.pcoeff / order)
            floor = self.accept_floor
            f = min(self.ifactor, max(f, (1.0 if floor is None else floor) if ratio < 1.0
                                      else self.dfactor))  # fmt: skip
        dt_next = min(max(dt * f, self.min_step), self.max_step)
        return accepted, dt_next, max(ratio, 1e-4) if accepted else prev_ratio

    def factor(self, ratio: Any, prev_ratio: Any, order: int) -> Any:
        k = float(order)
        floor = 1.0 if self.accept_floor is None else self.accept_floor
        if not isinstance(ratio, torch.Tensor):
            if ratio == 0.0:
                return self.ifactor
            f = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / k)
            if self.pcoeff:
                f *= prev_ratio ** (self.pcoeff / k)
            return min(self.ifactor, max(f, floor if ratio < 1.0 else self.dfactor))
        f = self.safety * ratio.clamp(min=1e-300) ** (-(self.icoeff + self.pcoeff) / k)
        if self.pcoeff:
            f = f * prev_ratio ** (self.pcoeff / k)
        lower = torch.where(ratio < 1.0, floor, self.dfactor)
        f = torch.clamp(torch.maximum(f, lower.to(f.dtype)), max=self.ifactor)
        return torch.where(ratio == 0, self.ifactor, f)


def parameters(cls: type) -> frozenset[str]:
    """The parameters a controller class takes (its dataclass fields)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


CONTROLLERS: Registry[type[AbstractStepSizeController]] = Registry(
    "step-size controller", "register a subclass of StepSizeController with CONTROLLERS.register"
)
CONTROLLERS.register("pid", PIController)
CONTROLLERS.register("constant", ConstantStepSize)


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
