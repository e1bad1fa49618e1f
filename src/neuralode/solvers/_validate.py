"""Eager validation of solver inputs: every failure names the bad value and the fix."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = [
    "check_func",
    "check_method",
    "check_options",
    "check_t",
    "check_tolerance",
    "check_y0",
]

_T_EXAMPLE = "e.g. t = torch.linspace(0.0, 1.0, 10)"


def check_func(func: Any, name: str = "func") -> None:
    if not callable(func):
        raise TypeError(
            f"{name} must be callable as {name}(t, y) and return dy/dt, got {type(func).__name__}"
        )


def check_y0(y0: Any) -> bool:
    """Check the initial state; return True when it is a tuple of tensors."""
    if isinstance(y0, torch.Tensor):
        tensors, is_tuple = (y0,), False
    elif isinstance(y0, tuple) and len(y0) > 0:
        tensors, is_tuple = y0, True
    else:
        raise TypeError(
            "y0 must be a floating-point tensor or a non-empty tuple of them, "
            f"got {type(y0).__name__}"
        )
    for i, y in enumerate(tensors):
        where = f"y0[{i}]" if is_tuple else "y0"
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{where} must be a tensor, got {type(y).__name__}")
        if not (y.is_floating_point() or y.is_complex()):
            raise TypeError(
                f"{where} must be a floating-point tensor, got dtype {y.dtype}; "
                f"convert it first, e.g. {where}.float() or {where}.double()"
            )
    return is_tuple


def check_t(t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"t must be a 1-D floating-point tensor of times ({_T_EXAMPLE}), got {type(t).__name__}"
        )
    if t.ndim != 1:
        raise ValueError(
            f"t must be 1-D (the times at which to report the solution), got shape "
            f"{tuple(t.shape)}; {_T_EXAMPLE}"
        )
    if not t.is_floating_point():
        raise TypeError(
            f"t must be a floating-point tensor, got dtype {t.dtype}; use t.float() "
            f"or t.double() ({_T_EXAMPLE})"
        )
    if t.numel() == 0:
        raise ValueError(f"t must hold at least one time, got an empty tensor; {_T_EXAMPLE}")
    if t.numel() > 1:
        times = t.detach().tolist()
        if not all(math.isfinite(x) for x in times):
            raise ValueError(f"t must hold finite times, got {times}")
        inc = all(b > a for a, b in itertools.pairwise(times))
        if not (inc or all(b < a for a, b in itertools.pairwise(times))):
            shown = times if len(times) <= 10 else f"{times[:10]} ..."
            raise ValueError(
                "t must be strictly increasing or strictly decreasing (no repeated times), "
                f"got {shown}"
            )


def check_tolerance(value: Any, name: str) -> None:
    hint = "typical values are 1e-3 for training and 1e-5 for evaluation"
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise ValueError(f"{name} must not require gradient; pass {name}.detach()")
        v = value.detach()
        if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float or a real tensor, got dtype {v.dtype}")
        if v.numel() == 0 or not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
            raise ValueError(f"{name} must be positive and finite, got {v.tolist()}; {hint}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive float or tensor, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}; {hint}")


def check_method(method: str | None, methods: Iterable[str], name: str = "method") -> str:
    if method is None:
        return "dopri5"
    if not isinstance(method, str) or method not in methods:
        valid = ", ".join(sorted(methods))
        raise ValueError(f"unknown {name} {method!r}; valid methods are: {valid}")
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
        raise TypeError(f"{name} must be a dict, got {type(options).__name__}")
    valid = sorted(valid_keys)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown {name} {unknown} for method {method!r}; valid keys are: {', '.join(valid)}"
        )
    for key in ("step_size", "first_step", "max_step"):
        v = options.get(key)
        if isinstance(v, numbers.Real) and not v > 0:
            raise ValueError(f"{name}[{key!r}] must be positive, got {v!r}")
    v = options.get("min_step")
    if isinstance(v, numbers.Real) and v < 0:
        raise ValueError(f"{name}['min_step'] must be non-negative, got {v!r}")
    v = options.get("max_num_steps")
    if isinstance(v, numbers.Real) and v < 1:
        raise ValueError(f"{name}['max_num_steps'] must be at least 1, got {v!r}")
    return dict(options)


def check_event_fn(event_fn: Callable | None) -> None:
    if event_fn is not None and not callable(event_fn):
        raise TypeError(
            f"event_fn must be callable as event_fn(t, y) or None, got {type(event_fn).__name__}"
        )
