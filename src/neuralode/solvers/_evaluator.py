"""How the loops call the user's dynamics: the :class:`Evaluator` (the flat internal state,
the time direction, counting, shape checks on every call) and torchdiffeq's step callbacks
(:class:`StepCallbacks`)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from ._stats import SolveStats

__all__ = [
    "CALLBACK_NAMES",
    "Evaluator",
    "StepCallbacks",
    "callback_names",
    "warn_unknown_callbacks",
    "warn_unsupported_callbacks",
]


# --------------------------------------------------------------------------- the evaluator


class Evaluator:
    """Calls the user's dynamics on the flat internal state, counting evaluations.

    Handles the time direction (``sign``), tuple states (``shapes``: the state is one flat vector
    internally), checks the shape of every derivative returned and casts it to the state's
    dtype.
    """

    def __init__(
        self,
        func: Callable,
        sign: float,
        dtype: torch.dtype,
        device: torch.device,
        stats: SolveStats,
        shapes: Sequence[torch.Size] | None = None,
        backward: bool = False,
        count: bool = True,
        float_time: bool = False,
    ) -> None:
        self.func = func
        self.sign = sign
        self.dtype = dtype
        self.device = device
        self.stats = stats
        self.shapes = None if shapes is None else list(shapes)
        self.numels = None if shapes is None else [math.prod(s) for s in shapes]
        self.float_time = float_time  # internal callers (the adjoint) take the time as a float
        self.checked = False
        # the plain case (a tensor state forwards in time, counted forward), once the first
        # derivative was checked: the fused kernels then call ``func`` themselves
        self.fast = False
        self._counter = None if not count else ("nfe_backward" if backward else "nfe_forward")
        self.callbacks: StepCallbacks | None = None  # torchdiffeq's step callbacks, if any
        # the derivative depends on the first ``coupled`` elements of the state only (None: all);
        # the adjoint's parameter adjoints do not feed back, so implicit methods skip them
        self.coupled: int | None = None
        # keywords of the time tensor: none where they are the defaults (a little faster)
        default = dtype is torch.get_default_dtype() and device.type == "cpu"
        self.time_kw: dict[str, Any] = {} if default else {"dtype": dtype, "device": device}

    def neighbour(self, s: float, toward: float) -> float:
        """The time next to ``s`` in the direction of ``toward``, as the dynamics receive it: in
        the state's (real) dtype, as torchdiffeq perturbs a time just before or after a jump (it
        casts the time to the state's dtype, then takes the next representable value). In
        float32 the float64 neighbour of 0.5 would round back to 0.5, on the jump's far side."""
        real = self.dtype.to_real() if self.dtype.is_complex else self.dtype
        if real is torch.float64:
            return math.nextafter(s, toward)
        here = torch.tensor(s, dtype=real)
        return float(torch.nextafter(here, torch.tensor(toward, dtype=real)))

    def unflatten(self, y: torch.Tensor) -> Any:
        if self.shapes is None or self.numels is None:
            return y
        parts = torch.split(y, self.numels, dim=-1)
        return tuple(p.reshape(s) for p, s in zip(parts, self.shapes, strict=True))

    def flatten(self, dy: Any) -> torch.Tensor:
        if self.shapes is None:
            return dy
        return torch.cat([d.reshape(-1) for d in dy])

    def __call__(self, s: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fast and type(s) is float:  # a tensor state forwards in time, checked once
            dy = self.func(torch.scalar_tensor(s, **self.time_kw), y)
            if type(dy) is torch.Tensor and dy.shape == y.shape and dy.dtype is self.dtype:
                self.stats.nfe_forward += 1
                return dy
            return self.after(dy, y)
        if self.float_time:
            t = s
        elif type(s) is float:
            t = torch.scalar_tensor(s * self.sign, **self.time_kw)
        else:  # per-sample times
            t = cast(torch.Tensor, s * self.sign).to(self.dtype)
        return self.after(self.func(t, y if self.shapes is None else self.unflatten(y)), y)

    def at(self, s: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """The dynamics at one time ``s`` for many calls (an implicit stage's Newton
        iterations): ``at(s)(y)`` is ``self(s, y)``, with the time tensor made once instead of
        once per call (about 2 µs a call). The tensor is passed as it is to every call: a
        dynamics that writes into its ``t`` would see its own writes."""
        if self.float_time or type(s) is not float:
            return functools.partial(self, s)
        t = torch.scalar_tensor(s * self.sign, **self.time_kw)
        func, after, shapes = self.func, self.after, self.shapes
        if self.fast:  # a tensor state forwards in time, checked once (as in ``__call__``)
            stats, dtype = self.stats, self.dtype

            def plain(y: torch.Tensor) -> torch.Tensor:
                dy = func(t, y)
                if type(dy) is torch.Tensor and dy.shape == y.shape and dy.dtype is dtype:
                    stats.nfe_forward += 1
                    return dy
                return after(dy, y)

            return plain
        return lambda y: after(func(t, y if shapes is None else self.unflatten(y)), y)

    def after(self, dy: Any, y: torch.Tensor) -> torch.Tensor:
        """A derivative checked (its shape on every call: a later derivative of another shape
        is a bug), counted, flattened, cast to the state's dtype and turned with the time."""
        shapes = self.shapes
        if shapes is None:
            if type(dy) is not torch.Tensor or dy.shape != y.shape or not self.checked:
                self._check(dy, y)
        elif (
            not self.checked
            or len(dy) != len(shapes)
            or any(getattr(d, "shape", None) != s for d, s in zip(dy, shapes, strict=False))
        ):
            self._check(dy, y)
        if self._counter is not None:
            setattr(self.stats, self._counter, getattr(self.stats, self._counter) + 1)
        if shapes is not None:
            dy = self.flatten(dy)
        if dy.dtype is not self.dtype:  # the state keeps its dtype, as in torchdiffeq
            dy = dy.to(self.dtype)
        if self.sign < 0:
            dy = -dy
        return dy

    def _check(self, dy: Any, y: torch.Tensor) -> None:
        if self.shapes is None:
            if not isinstance(dy, torch.Tensor):
                raise InvalidTypeError(f"func(t, y) must return a tensor, got {type(dy).__name__}")
            got: tuple[Any, ...] = tuple(dy.shape)
            want: tuple[Any, ...] = tuple(y.shape)
        else:
            if not isinstance(dy, (tuple, list)) or len(dy) != len(self.shapes):
                raise InvalidArgumentError(
                    f"func(t, y) must return a tuple of {len(self.shapes)} tensors for a tuple "
                    f"state, got {type(dy).__name__}"
                )
            got = tuple(tuple(d.shape) for d in dy)
            want = tuple(tuple(s) for s in self.shapes)
        if got != want:
            later = " (on a later call than the first)" if self.checked else ""
            raise InvalidArgumentError(
                f"func(t, y) returned dy/dt of shape {got} but the state y has shape {want}"
                f"{later}; the dynamics must return a derivative of the same shape as the state "
                "on every call (check the output size of the last layer)"
            )
        for d in (dy,) if self.shapes is None else dy:
            if d.device != y.device:  # (checked on the first call only)
                raise InvalidArgumentError(
                    f"func(t, y) returned dy/dt on {d.device} but the state y is on "
                    f"{y.device}; the dynamics must return their derivative on the device of "
                    "the state"
                )
        self.checked = True
        self.fast = (
            self.shapes is None
            and self.sign == 1.0
            and not self.float_time
            and self._counter == "nfe_forward"
        )


# --------------------------------------------------------------------------- step callbacks

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
_FIXED_GRID = frozenset({"callback_step"})
_KNOWN = frozenset(CALLBACK_NAMES) | {n + "_adjoint" for n in CALLBACK_NAMES}
_CLASS_CALLBACKS: dict[type, frozenset[str]] = {}


def callback_names(func: Any) -> frozenset[str]:
    """The ``callback_*`` attributes of ``func``: its class's (looked up once per class) and
    its own (the instance's ``__dict__``)."""
    cls = type(func)
    names = _CLASS_CALLBACKS.get(cls)
    if names is None:
        names = frozenset(n for n in dir(cls) if n.startswith("callback_"))
        _CLASS_CALLBACKS[cls] = names
    own = getattr(func, "__dict__", None)
    if own is None:  # no instance dictionary (__slots__): ask for everything
        return frozenset(n for n in dir(func) if n.startswith("callback_"))
    try:
        plain = "callback_" not in "".join(own)  # (the common case, without a loop)
    except TypeError:  # a key that is not a string
        plain = False
    if plain:
        return names
    extra = [n for n in own if isinstance(n, str) and n.startswith("callback_")]
    return names.union(extra) if extra else names


def warn_unknown_callbacks(func: Any, names: frozenset[str] | None = None) -> None:
    """A ``callback_*`` attribute that is none of torchdiffeq's names is probably misspelt
    (torchdiffeq ignores it silently; we say so)."""
    unknown = sorted((callback_names(func) if names is None else names) - _KNOWN)
    if unknown:
        warnings.warn(
            f"func defines {unknown}, which no solver calls; the step callbacks are named "
            f"{', '.join(CALLBACK_NAMES)} (and the same with _adjoint for the adjoint's "
            "backward solve)",
            stacklevel=4,
        )


def warn_unsupported_callbacks(
    func: Any, method: str, supported: frozenset[str], names: frozenset[str] | None = None
) -> None:
    """torchdiffeq's warning, word for word, for callbacks that ``method`` never calls."""
    names = callback_names(func) if names is None else names
    if not names:
        return
    unsupported = {n for n in names & set(CALLBACK_NAMES) if callable(getattr(func, n, None))}
    unsupported -= supported
    if unsupported:
        warnings.warn(f"Solver '{method}' does not support callbacks {unsupported}", stacklevel=4)
    warn_unknown_callbacks(func, names)


class StepCallbacks:
    """torchdiffeq's step callbacks for the native engine.

    torchdiffeq calls ``func.callback_step(t0, y0, dt)`` before every step attempt, and for
    adaptive methods ``func.callback_accept_step`` / ``func.callback_reject_step`` after it,
    with ``t0`` and ``dt`` as tensors and ``y0`` as the state in the user's form (a tuple state
    as a tuple), ``t0`` in the user's time direction. The adjoint's backward solve calls the
    ``*_adjoint`` variants with the augmented state ``(t adjoint, y, adjoint of y, *parameter
    adjoints)``. A callback the method does not call is reported with torchdiffeq's warning."""

    __slots__ = ("_accept", "_reject", "_step", "sign", "state")

    def __init__(self, step, accept, reject, sign: float, state: Callable[[torch.Tensor], Any]):
        self._step, self._accept, self._reject = step, accept, reject
        self.sign = sign  # internal time * sign = user time
        self.state = state  # the flat internal state as the callback sees it

    @classmethod
    def of(
        cls,
        func: Any,
        sign: float,
        state: Callable[[torch.Tensor], Any],
        adaptive: bool,
        method: str,
        adjoint: bool = False,
    ) -> StepCallbacks | None:
        """The callbacks of ``func`` (``*_adjoint`` ones for the adjoint's backward solve), or
        ``None`` when it defines none (then the loops pay nothing)."""
        names = callback_names(func)
        if not names:  # (the common case: nothing to warn about either)
            return None
        if not adjoint:
            supported = frozenset(CALLBACK_NAMES) if adaptive else _FIXED_GRID
            warn_unsupported_callbacks(func, method, supported, names)
        suffix = "_adjoint" if adjoint else ""
        found = {}
        for name in CALLBACK_NAMES:
            cb = getattr(func, name + suffix, None) if name + suffix in names else None
            found[name] = cb if callable(cb) else None
        if not adaptive:
            found["callback_accept_step"] = found["callback_reject_step"] = None
        if all(cb is None for cb in found.values()):
            return None
        return cls(
            found["callback_step"],
            found["callback_accept_step"],
            found["callback_reject_step"],
            sign,
            state,
        )

    def _call(self, cb: Callable | None, t0: float, y0: torch.Tensor, dt: float) -> None:
        if cb is not None:
            t = torch.tensor(self.sign * t0, dtype=torch.float64, device=y0.device)
            cb(t, self.state(y0), torch.tensor(dt, dtype=torch.float64, device=y0.device))

    def step(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        self._call(self._step, t0, y0, dt)

    def accept(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        self._call(self._accept, t0, y0, dt)

    def reject(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        self._call(self._reject, t0, y0, dt)
