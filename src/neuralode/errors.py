"""Everything neuralode raises on purpose derives from :class:`NeuralODEError`.

Each class also derives from the built-in exception a Python user would expect (a bad argument
is a ``ValueError``, a failed solve a ``RuntimeError``), so ``except ValueError`` keeps working.
The ``neuralode`` command prints these as one line and exits with the class's ``exit_code``;
anything else is a bug and gets a traceback.

==========================  =========  ========================================================
class                       exit code  meaning
==========================  =========  ========================================================
InvalidArgumentError        2          a bad option, argument or input value (``ValueError``)
InvalidTypeError            2          an argument of the wrong type (``TypeError``)
DataError                   2          a dataset is missing, corrupt or could not be downloaded
CheckpointError             2          a checkpoint or run folder is missing, corrupt or another's
RunFolderBusy               2          another process holds the run folder
ExperimentMismatch          2          an experiment folder holds results of other settings
TrainingDiverged            3          the loss became NaN/inf; the last good checkpoint is kept
SolverError (and subclasses) 4         an ODE solve failed outside training
==========================  =========  ========================================================
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "DataError",
    "ExperimentMismatch",
    "InvalidArgumentError",
    "InvalidTypeError",
    "NeuralODEError",
    "NonFiniteStateError",
    "RunFolderBusy",
    "SolverError",
    "StepSizeUnderflowError",
    "TooManyStepsError",
    "TrainingDiverged",
]


class NeuralODEError(Exception):
    """The base class of every exception neuralode raises on purpose."""

    exit_code = 1


class _ArgumentError(NeuralODEError):
    """An error about one named argument: ``argument`` is its name where one is at fault (an
    adapter that took the value from another name, such as torchdiffeq's ``options`` dict,
    says so with :meth:`renamed`)."""

    def __init__(self, message: str = "", argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument

    def renamed(self, name: str) -> _ArgumentError:
        """The same error, with its argument called ``name`` in the message."""
        message = str(self)
        if self.argument and message.startswith(self.argument):
            message = name + message[len(self.argument) :]
        else:
            message = f"{name}: {message}"
        return type(self)(message, argument=name)


class InvalidArgumentError(_ArgumentError, ValueError):
    """A bad option, argument or input value; the message names it and the fix."""

    exit_code = 2


class InvalidTypeError(_ArgumentError, TypeError):
    """An argument of the wrong type."""

    exit_code = 2


class DataError(NeuralODEError, RuntimeError):
    """A dataset is missing, corrupt or could not be downloaded."""

    exit_code = 2


class CheckpointError(NeuralODEError, RuntimeError):
    """A checkpoint is missing, corrupt or belongs to another run."""

    exit_code = 2


class RunFolderBusy(NeuralODEError, RuntimeError):
    """Another process holds the run folder's lock."""

    exit_code = 2


class ExperimentMismatch(NeuralODEError, RuntimeError):
    """An experiment folder holds results made with other settings than the rerun's."""

    exit_code = 2


class TrainingDiverged(NeuralODEError, RuntimeError):
    """The loss became NaN or infinite; the report says why, the last good checkpoint is kept."""

    exit_code = 3

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class SolverError(NeuralODEError, RuntimeError):
    """An ODE solve could not be completed."""

    exit_code = 4


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
