"""Exceptions raised by neuralode."""

from __future__ import annotations

__all__ = ["NonFiniteStateError", "SolverError", "StepSizeUnderflowError", "TooManyStepsError"]


class SolverError(RuntimeError):
    """An ODE solve could not be completed."""


class TooManyStepsError(SolverError):
    """An adaptive solve ran out of its step budget (``max_num_steps``)."""


class StepSizeUnderflowError(SolverError):
    """The adaptive step size became too small to advance the time."""


class NonFiniteStateError(SolverError, FloatingPointError):
    """The state (or its derivative) became NaN or infinite during a solve."""

    def __init__(self, time: float | None, detail: str = "", message: str | None = None) -> None:
        self.time = time
        where = "during the solve" if time is None else f"at t ≈ {time:.6g}"
        if message is None:
            message = (
                f"the ODE state became NaN or infinite {where}{detail}. What usually helps: "
                "a smaller learning rate, a tighter tolerance (smaller rtol/atol), "
                "smaller initial weights of the dynamics (e.g. ODEFunc(..., small_init=True)), "
                "gradient clipping, or a regularizer such as KineticEnergy."
            )
        super().__init__(message)

    @classmethod
    def dynamics_at_start(cls, time: float) -> NonFiniteStateError:
        """The dynamics are not finite at the initial state itself."""
        return cls(
            time,
            message=(
                f"the dynamics return NaN or infinite values at the start (t = {time:.6g}) for "
                "a finite y0, before any step: the dynamics themselves are broken — weights "
                "that hold NaN/inf (training diverged: reload the last good checkpoint and "
                "lower the learning rate), or an operation undefined at y0 (log, sqrt or a "
                "division by zero)"
            ),
        )

    @classmethod
    def at_start(cls, time: float) -> NonFiniteStateError:
        """The initial state itself is not finite: the cause is upstream of the solver."""
        return cls(
            time,
            message=(
                f"the initial state y0 holds NaN or infinite values (at t = {time:.6g}), so the "
                "solve cannot start: the cause is upstream of the solver — the input data, or "
                "the layers that compute y0 (weights that diverged, e.g. after too large a "
                "learning rate)"
            ),
        )
