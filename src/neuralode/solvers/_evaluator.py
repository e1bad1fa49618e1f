"""The evaluator: calls the user's dynamics on the flat internal state of a solve."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from ._callbacks import StepCallbacks
from ._stats import SolveStats

__all__ = ["Evaluator"]


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
        self._counter = None if not count else ("nfe_backward" if backward else "nfe_forward")
        self.callbacks: StepCallbacks | None = None  # torchdiffeq's step callbacks, if any
        # the derivative depends on the first ``coupled`` elements of the state only (None: all);
        # the adjoint's parameter adjoints do not feed back, so implicit methods skip them
        self.coupled: int | None = None
        # keywords of the time tensor: none where they are the defaults (a little faster)
        default = dtype == torch.get_default_dtype() and torch.device(device).type == "cpu"
        self._time_kw = {} if default else {"dtype": dtype, "device": device}

    def unflatten(self, y: torch.Tensor) -> Any:
        if self.shapes is None:
            return y
        parts = torch.split(y, self.numels, dim=-1)
        return tuple(p.reshape(s) for p, s in zip(parts, self.shapes, strict=True))

    def flatten(self, dy: Any) -> torch.Tensor:
        if self.shapes is None:
            return dy
        return torch.cat([d.reshape(-1) for d in dy])

    def __call__(self, s: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.float_time:
            t = s
        elif isinstance(s, torch.Tensor):  # per-sample times
            t = (s * self.sign).to(self.dtype)
        else:
            t = torch.scalar_tensor(s * self.sign, **self._time_kw)
        dy = self.func(t, y if self.shapes is None else self.unflatten(y))
        if not self.checked:
            self._check(dy, y)
        elif self.shapes is None:  # every call: a later derivative of another shape is a bug
            if type(dy) is not torch.Tensor or dy.shape != y.shape:
                self._check(dy, y)
        elif len(dy) != len(self.shapes) or any(
            getattr(d, "shape", None) != s for d, s in zip(dy, self.shapes, strict=False)
        ):
            self._check(dy, y)
        if self._counter is not None:
            setattr(self.stats, self._counter, getattr(self.stats, self._counter) + 1)
        if self.shapes is not None:
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
            got, want = tuple(dy.shape), tuple(y.shape)
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
            if d.device != y.device:
                raise _device_error(d, y)
        self.checked = True


def _device_error(dy: torch.Tensor, y: torch.Tensor) -> ValueError:
    return ValueError(
        f"func(t, y) returned dy/dt on {dy.device} but the state y is on {y.device}; the "
        "dynamics must return their derivative on the device of the state"
    )
