"""torchdiffeq's step callbacks for the native engine.

torchdiffeq calls ``func.callback_step(t0, y0, dt)`` before every step attempt, and for adaptive
methods ``func.callback_accept_step`` / ``func.callback_reject_step`` after it, with ``t0`` and
``dt`` as tensors and ``y0`` as the state in the user's form (a tuple state as a tuple), ``t0``
in the user's time direction. The adjoint's backward solve calls the ``*_adjoint`` variants with
the augmented state ``(t adjoint, y, adjoint of y, *parameter adjoints)``. A callback the method
does not call is reported with torchdiffeq's warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CALLBACK_NAMES", "StepCallbacks", "warn_unknown_callbacks"]

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
_FIXED_GRID = frozenset({"callback_step"})


def _user_callback(func: Any, name: str) -> Callable | None:
    cb = getattr(func, name, None)
    return cb if callable(cb) else None


class StepCallbacks:
    """The callbacks ``func`` defines, called at torchdiffeq's moments with its arguments."""

    __slots__ = ("_accept", "_reject", "_step", "sign", "state")

    def __init__(
        self,
        step: Callable | None,
        accept: Callable | None,
        reject: Callable | None,
        sign: float,
        state: Callable[[torch.Tensor], Any],
    ) -> None:
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
        suffix = "_adjoint" if adjoint else ""
        found = {name: _user_callback(func, name + suffix) for name in CALLBACK_NAMES}
        if not adjoint:
            unsupported = {n for n, cb in found.items() if cb is not None} - (
                set(CALLBACK_NAMES) if adaptive else _FIXED_GRID
            )
            if unsupported:  # torchdiffeq's warning, word for word
                warnings.warn(
                    f"Solver '{method}' does not support callbacks {unsupported}", stacklevel=4
                )
            warn_unknown_callbacks(func)
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


def warn_unknown_callbacks(func: Any) -> None:
    """A ``callback_*`` attribute that is none of torchdiffeq's names is probably misspelt
    (torchdiffeq ignores it silently; we say so)."""
    known = set(CALLBACK_NAMES) | {n + "_adjoint" for n in CALLBACK_NAMES}
    unknown = sorted(n for n in dir(func) if n.startswith("callback_") and n not in known)
    if unknown:
        warnings.warn(
            f"func defines {unknown}, which no solver calls; the step callbacks are named "
            f"{', '.join(CALLBACK_NAMES)} (and the same with _adjoint for the adjoint's "
            "backward solve)",
            stacklevel=4,
        )
