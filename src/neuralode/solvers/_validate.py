"""Eager validation of solver inputs: every failure names the bad value and the fix."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from ._stats import SolveStats

__all__ = [
    "DEFAULT_MAX_NUM_STEPS",
    "check_dtype_resolution",
    "check_func",
    "check_method",
    "check_options",
    "check_stats",
    "check_t",
    "check_tolerance",
    "check_tolerance_shape",
    "check_y0",
]

_T_EXAMPLE = "e.g. t = torch.linspace(0.0, 1.0, 10)"

DEFAULT_MAX_NUM_STEPS = 100_000
"""The default step budget of one adaptive solve (torchdiffeq's is 2**31, which never ends a
hopeless solve). A solve that needs more raises a ``SolverError`` that says how to raise it."""


def check_func(func: Any, name: str = "func") -> None:
    if not callable(func):
        raise InvalidTypeError(
            f"{name} must be callable as {name}(t, y) and return dy/dt, got {type(func).__name__}"
        )


def check_y0(y0: Any) -> bool:
    """Check the initial state; return True when it is a tuple of tensors."""
    if isinstance(y0, torch.Tensor):
        tensors, is_tuple = (y0,), False
    elif isinstance(y0, tuple) and len(y0) > 0:
        tensors, is_tuple = y0, True
    else:
        raise InvalidTypeError(
            "y0 must be a floating-point tensor or a non-empty tuple of them, "
            f"got {type(y0).__name__}"
        )
    for i, y in enumerate(tensors):
        where = f"y0[{i}]" if is_tuple else "y0"
        if not isinstance(y, torch.Tensor):
            raise InvalidTypeError(f"{where} must be a tensor, got {type(y).__name__}")
        if not (y.is_floating_point() or y.is_complex()):
            raise InvalidTypeError(
                f"{where} must be a floating-point tensor, got dtype {y.dtype}; "
                f"convert it first, e.g. {where}.float() or {where}.double()"
            )
    return is_tuple


def check_t(t: Any, per_sample: bool = False) -> None:
    """``t`` is 1-D; with ``per_sample`` it may also be 2-D, a row of times per sample (see
    :func:`check_t_rows`)."""
    if not isinstance(t, torch.Tensor):
        raise InvalidTypeError(
            f"t must be a 1-D floating-point tensor of times ({_T_EXAMPLE}), got {type(t).__name__}"
        )
    if t.ndim == 2 and t.is_floating_point():
        if not per_sample:
            raise InvalidArgumentError(
                f"t must be 1-D (times shared by the batch, {_T_EXAMPLE}), got shape "
                f"{tuple(t.shape)}; a 2-D t, every sample its own times, needs "
                "options={'batch_mode': 'per_sample'} on the native engine"
            )
        check_t_rows(t)
        return
    if t.ndim != 1:
        raise InvalidArgumentError(
            f"t must be 1-D (the times at which to report the solution), got shape "
            f"{tuple(t.shape)}; {_T_EXAMPLE}"
        )
    if not t.is_floating_point():
        raise InvalidTypeError(
            f"t must be a floating-point tensor, got dtype {t.dtype}; use t.float() "
            f"or t.double() ({_T_EXAMPLE})"
        )
    if t.numel() == 0:
        raise InvalidArgumentError(
            f"t must hold at least one time, got an empty tensor; {_T_EXAMPLE}"
        )
    if t.numel() > 1:
        times = t.detach().tolist()
        if not all(math.isfinite(x) for x in times):
            raise InvalidArgumentError(f"t must hold finite times, got {times}")
        inc = all(b > a for a, b in itertools.pairwise(times))
        if not (inc or all(b < a for a, b in itertools.pairwise(times))):
            shown = times if len(times) <= 10 else f"{times[:10]} ..."
            raise InvalidArgumentError(
                "t must be strictly increasing or strictly decreasing (no repeated times), "
                f"got {shown}"
            )


def rows_direction(t: torch.Tensor) -> float:
    """Per-sample times: ``1.0`` where the rows increase, ``-1.0`` where they decrease (the
    sign of the first step that is not zero; rows of one repeated time have no direction)."""
    steps = t.detach().diff(dim=1).reshape(-1)
    moving = steps.nonzero()
    return -1.0 if len(moving) and float(steps[moving[0, 0]]) < 0 else 1.0


def check_t_rows(t: torch.Tensor) -> None:
    """Per-sample times: row ``b`` holds sample ``b``'s output times, its first the sample's
    start, all rows strictly increasing (or all strictly decreasing). A shorter series is padded
    by repeating its last time; its outputs there repeat its last state."""
    if t.shape[1] == 0 or t.shape[0] == 0:
        raise InvalidArgumentError(
            f"t must hold at least one time per sample, got shape {tuple(t.shape)}"
        )
    rows = t.detach().cpu().double()
    if not bool(torch.isfinite(rows).all()):
        raise InvalidArgumentError(
            "t must hold finite times (pad a shorter series by repeating its last time, not "
            "with NaN)"
        )
    if t.shape[1] == 1:
        return
    steps = rows.diff(dim=1) * rows_direction(rows)
    # strictly monotone, then (padding) constant to the end of the row; a row of one time
    # repeated is a series observed only at its start
    padded = (steps == 0).cumsum(dim=1) > 0
    bad = (steps < 0) | (padded & (steps != 0))
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0])
        raise InvalidArgumentError(
            f"per-sample times must be strictly increasing in every row (or decreasing in every "
            f"row), a shorter row padded at its end by repeating its last time; row {row} is "
            f"{rows[row].tolist()}"
        )


def check_tolerance(value: Any, name: str) -> None:
    hint = "typical values are 1e-3 for training and 1e-5 for evaluation"
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise InvalidArgumentError(f"{name} must not require gradient; pass {name}.detach()")
        v = value.detach()
        if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise InvalidTypeError(f"{name} must be a float or a real tensor, got dtype {v.dtype}")
        if v.numel() == 0 or not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
            raise InvalidArgumentError(
                f"{name} must be positive and finite, got {v.tolist()}; {hint}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(
            f"{name} must be a positive float or tensor, got {type(value).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be positive and finite, got {value!r}; {hint}")


def check_method(method: str | None, methods: Iterable[str], name: str = "method") -> str:
    if method is None:
        return "dopri5"
    if not isinstance(method, str) or method not in methods:
        valid = ", ".join(sorted(methods))
        raise InvalidArgumentError(f"unknown {name} {method!r}; valid methods are: {valid}")
    return method


def check_options(
    options: Mapping[str, Any] | None,
    method: str,
    valid_keys: Iterable[str],
    name: str = "options",
) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidTypeError(f"{name} must be a dict, got {type(options).__name__}")
    valid = sorted(valid_keys)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidArgumentError(
            f"unknown {name} {unknown} for method {method!r}; valid keys are: {', '.join(valid)}"
        )
    opts = dict(options)
    for key in ("step_size", "first_step", "max_step", "min_step"):
        if opts.get(key) is not None:
            v = _real(opts[key], f"{name}[{key!r}]")
            if key == "min_step" and not (math.isfinite(v) and v >= 0):
                raise InvalidArgumentError(
                    f"{name}['min_step'] must be non-negative and finite, got {v!r}"
                )
            if key != "min_step" and not v > 0:
                raise InvalidArgumentError(f"{name}[{key!r}] must be positive, got {v!r}")
            if key in ("step_size", "first_step") and not math.isfinite(v):
                raise InvalidArgumentError(
                    f"{name}[{key!r}] must be finite, got {v!r}; it is a step length in the "
                    "units of t, e.g. 0.1"
                )
    lo, hi = opts.get("min_step"), opts.get("max_step")
    if lo is not None and hi is not None and _real(lo, "") > _real(hi, ""):
        raise InvalidArgumentError(f"{name}: min_step ({lo}) must not exceed max_step ({hi})")
    bounds = {  # key: (low, high, what a sensible value looks like)
        "safety": (0.0, 1.0, "a factor in (0, 1], e.g. 0.9"),
        "dfactor": (0.0, 1.0, "the smallest step factor after a rejection, in (0, 1], e.g. 0.2"),
        "ifactor": (1.0, math.inf, "the largest growth factor of the step, >= 1, e.g. 10"),
    }  # fmt: skip
    for key, (low, high, hint) in bounds.items():
        if opts.get(key) is not None:
            v = _real(opts[key], f"{name}[{key!r}]")
            ok = low < v <= high if key != "ifactor" else low <= v < high
            if not ok:
                raise InvalidArgumentError(f"{name}[{key!r}] must be {hint}; got {v!r}")
    for key in ("pcoeff", "icoeff"):
        if opts.get(key) is not None:
            v = _real(opts[key], f"{name}[{key!r}]")
            if not math.isfinite(v):
                raise InvalidArgumentError(f"{name}[{key!r}] must be finite, got {v!r}")
    v = opts.get("max_num_steps")
    if v is not None:
        n = _real(v, f"{name}['max_num_steps']")
        if not (math.isfinite(n) and n == int(n) and n >= 1):
            raise InvalidArgumentError(
                f"{name}['max_num_steps'] must be a whole number of at least 1, got {v!r} "
                f"(the default is {DEFAULT_MAX_NUM_STEPS})"
            )
        opts["max_num_steps"] = int(n)
    return opts


def _real(value: Any, where: str) -> float:
    """A real number given as a Python number or a one-element real tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.detach())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise InvalidTypeError(f"{where} must be a real number, got {value!r}")


def check_stats(stats: Any) -> None:
    if stats is not None and not isinstance(stats, SolveStats):
        raise InvalidTypeError(
            f"stats must be a neuralode.SolveStats (or None), got {type(stats).__name__}; "
            "e.g. stats = neuralode.SolveStats(); odeint(..., stats=stats)"
        )


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
            "state (one tolerance per element)"
        )


def check_dtype_resolution(rtol: Any, atol: Any, y0: Any) -> str | None:
    """A message when a tolerance is below what the state's dtype can resolve, else None.

    ``rtol`` below the dtype's unit roundoff (half its epsilon) cannot be met: each step's error
    estimate is itself rounded at that level, so the step size collapses or the answer is off
    by far more than asked. ``atol`` below the smallest normal number is likewise meaningless.
    """
    ref = y0 if isinstance(y0, torch.Tensor) else y0[0]
    if not ref.is_floating_point():
        return None
    info = torch.finfo(ref.dtype)
    r = float(rtol.min()) if isinstance(rtol, torch.Tensor) else float(rtol)
    a = float(atol.min()) if isinstance(atol, torch.Tensor) else float(atol)
    unit = info.eps / 2
    if r >= unit and a >= info.tiny:
        return None
    wider = "float64" if ref.dtype == torch.float32 else "float32 or float64"
    bad = f"rtol={r:g}" if r < unit else f"atol={a:g}"
    return (
        f"{bad} is below the resolution of the state's dtype {ref.dtype} (unit roundoff "
        f"{unit:.2g}, smallest normal {info.tiny:.2g}): the solver cannot meet it, so steps "
        f"collapse or the result is silently inaccurate. Use rtol >= {4 * unit:.0e} with "
        f"{ref.dtype}, or solve in a wider dtype ({wider})"
    )


def check_event_fn(event_fn: Callable | None) -> None:
    if event_fn is not None and not callable(event_fn):
        raise InvalidTypeError(
            f"event_fn must be callable as event_fn(t, y) or None, got {type(event_fn).__name__}"
        )
