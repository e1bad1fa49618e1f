"""A transparent wrapper around the user's dynamics that counts, checks shapes and remembers
where a solve was when it failed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _kernels as kernels
from ._stats import SolveStats

__all__ = ["InstrumentedFunc", "first_nonfinite_time"]

_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def _shapes(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        return y.shape
    return tuple(v.shape for v in y)


class InstrumentedFunc(nn.Module):
    """Wraps ``func(t, y)``.

    * counts evaluations into ``stats.nfe_forward`` until :meth:`end_forward` is called and into
      ``stats.nfe_backward`` afterwards (the adjoint's backward solve);
    * checks that ``func`` returns a derivative of the state's shape;
    * remembers the last time and derivative, so that a failed solve can say where it failed;
    * counts accepted and rejected steps through torchdiffeq's step callbacks (for fixed-grid
      methods every step is an accepted one), chaining any callbacks the user's ``func``
      defines itself.

    If ``func`` is an ``nn.Module`` it is registered as a submodule, so ``parameters()`` of the
    wrapper are exactly the parameters of ``func`` (which is what the adjoint needs).
    """

    def __init__(
        self,
        func: Callable,
        y0: Any,
        stats: SolveStats,
        callbacks: frozenset[str] = frozenset(),
        adjoint_callbacks: frozenset[str] = frozenset(),
        fixed_grid: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(func, nn.Module):
            self.func = func
        else:
            object.__setattr__(self, "func", func)
        self.stats = stats
        self._expected = _shapes(y0)
        self._is_tuple = not isinstance(y0, torch.Tensor)
        self.backward_phase = False
        self.last_t: torch.Tensor | None = None
        self.last_dy: Any = None
        self._fixed_grid = fixed_grid
        for name in _CALLBACKS:
            if name in callbacks:
                setattr(self, name, self._make_callback(name, backward=False))
            if name in adjoint_callbacks:
                setattr(self, name + "_adjoint", self._make_callback(name, backward=True))

    def _make_callback(self, name: str, backward: bool) -> Callable:
        user_name = name + "_adjoint" if backward else name
        user_cb = getattr(self.func, user_name, None)
        suffix = "_backward" if backward else ""
        stats = self.stats
        if name == "callback_accept_step":
            counter: str | None = "steps_accepted" + suffix
        elif name == "callback_reject_step":
            counter = "steps_rejected" + suffix
        elif self._fixed_grid:  # callback_step of a fixed-grid method: every step is accepted
            counter = "steps_accepted" + suffix
        else:
            counter = None

        def callback(t0: Any, y0: Any, dt: Any) -> None:
            if counter is not None:
                setattr(stats, counter, (getattr(stats, counter) or 0) + 1)
            if user_cb is not None:
                user_cb(t0, y0, dt)

        return callback

    def end_forward(self) -> None:
        self.backward_phase = True
        self.last_t = None
        self.last_dy = None

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        dy = self.func(t, y)
        if self._is_tuple:
            if not isinstance(dy, (tuple, list)) or len(dy) != len(self._expected):
                raise InvalidArgumentError(
                    f"func(t, y) must return a tuple of {len(self._expected)} tensors for a "
                    f"tuple state, got {type(dy).__name__}"
                )
            got = tuple(getattr(v, "shape", None) for v in dy)
        else:
            if not isinstance(dy, torch.Tensor):
                raise InvalidTypeError(f"func(t, y) must return a tensor, got {type(dy).__name__}")
            got = dy.shape
        if not self.backward_phase and got != self._expected:
            raise InvalidArgumentError(
                f"func(t, y) returned dy/dt of shape {_fmt(got)} but the state y has shape "
                f"{_fmt(self._expected)}; the dynamics must return a derivative of the same shape "
                "as the state (check the output size of the last layer)"
            )
        if self.backward_phase:
            self.stats.nfe_backward += 1
        else:
            self.stats.nfe_forward += 1
            self.last_t = t
            self.last_dy = dy
        return dy


def _fmt(shape: Any) -> str:
    if isinstance(shape, torch.Size):
        return str(tuple(shape))
    return "(" + ", ".join(str(tuple(s)) if s is not None else "?" for s in shape) + ")"


def _finite(y: torch.Tensor) -> bool:
    y = y.detach()
    fast = kernels.all_finite(y)  # a small CPU state: one pass of the fused kernel
    if fast is not None:
        return fast
    if y.is_complex():  # a complex sum is not a float: ask element-wise
        return bool(torch.isfinite(y).all())
    # NaN and inf propagate into the sum: one cheap reduction settles the common case
    if y.numel() == 0 or math.isfinite(float(y.sum())):
        return True
    return bool(torch.isfinite(y).all())


def _all_finite(y: Any) -> bool:
    if isinstance(y, torch.Tensor):
        return _finite(y)
    return all(_finite(v) for v in y)


def first_nonfinite_time(solution: Any, t: torch.Tensor) -> float | None:
    """Return the first output time whose state is not finite, or None if all are finite.

    A single host synchronisation when everything is finite.
    """
    if _all_finite(solution):
        return None
    tensors = (solution,) if isinstance(solution, torch.Tensor) else tuple(solution)
    n = t.numel()
    bad = torch.zeros(n, dtype=torch.bool, device=t.device)
    for s in tensors:
        if s.ndim == 0 or s.shape[0] != n:
            continue
        bad |= ~torch.isfinite(s.detach().reshape(n, -1)).all(dim=1).to(t.device)
    idx = torch.nonzero(bad)
    if idx.numel() == 0:
        return None
    return float(t[int(idx[0])].detach())


def is_finite(y: Any) -> bool:
    return y is None or _all_finite(y)
