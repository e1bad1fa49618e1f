"""Solve statistics, counted without any help from the user's dynamics function, and the
recording context that collects every solve made inside it (:func:`record`)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["Recording", "SolveStats", "record"]


def _add(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclasses.dataclass
class SolveStats:
    """Counters of one solve (or, summed, of several).

    ``nfe_forward`` counts evaluations of the dynamics during the forward solve and
    ``nfe_backward`` those made while gradients are computed: the adjoint's backward solve.
    With direct backpropagation the backward pass replays the recorded graph and evaluates the
    dynamics zero times, so ``nfe_backward`` stays 0. Step counters are ``None`` where the engine
    does not report them (e.g. torchdiffeq's Adams and scipy methods). In per-sample batch mode
    (native engine) the ``*_per_sample`` lists hold each sample's own counters, and
    ``steps_accepted``/``steps_rejected`` those of the hardest sample. ``time_span`` is the
    total length of the time intervals solved (``|t[-1] - t[0]|`` summed over solves), so that
    ``nfe_forward / time_span`` is the cost per unit time and ``time_span / steps_accepted`` the
    mean step. ``jacobians`` counts the Jacobians an implicit method formed (each also counted
    as one evaluation in ``nfe_forward``; ``None`` for explicit methods).
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    steps_accepted_backward: int | None = None
    steps_rejected_backward: int | None = None
    method: str | None = None
    backend: str | None = None
    solves: int = 0
    time_span: float = 0.0
    nfe_per_sample: list[int] | None = None
    steps_accepted_per_sample: list[int] | None = None
    steps_rejected_per_sample: list[int] | None = None
    jacobians: int | None = None

    @property
    def nfe(self) -> int:
        """Total number of function evaluations, forward and backward."""
        return self.nfe_forward + self.nfe_backward

    def reset(self) -> None:
        """Set every counter back to its initial value."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, field.default)

    def __add__(self, other: SolveStats) -> SolveStats:
        if not isinstance(other, SolveStats):
            return NotImplemented
        return SolveStats(
            nfe_forward=self.nfe_forward + other.nfe_forward,
            nfe_backward=self.nfe_backward + other.nfe_backward,
            steps_accepted=_add(self.steps_accepted, other.steps_accepted),
            steps_rejected=_add(self.steps_rejected, other.steps_rejected),
            steps_accepted_backward=_add(
                self.steps_accepted_backward, other.steps_accepted_backward
            ),
            steps_rejected_backward=_add(
                self.steps_rejected_backward, other.steps_rejected_backward
            ),
            method=self.method if self.method == other.method else None,
            backend=self.backend if self.backend == other.backend else None,
            solves=self.solves + other.solves,
            time_span=self.time_span + other.time_span,
            jacobians=_add(self.jacobians, other.jacobians),
        )

    @staticmethod
    def total(stats: Iterable[SolveStats]) -> SolveStats:
        """Sum of several statistics (an empty iterable gives zero counters)."""
        out = SolveStats()
        first = True
        for s in stats:
            out = dataclasses.replace(s) if first else out + s
            first = False
        return out

    def as_dict(self) -> dict[str, int | str | None]:
        """The counters as a plain dictionary (for metrics files)."""
        d = dataclasses.asdict(self)
        d["nfe"] = self.nfe
        return d

    def __str__(self) -> str:
        parts = [f"nfe forward={self.nfe_forward}", f"backward={self.nfe_backward}"]
        if self.steps_accepted is not None:
            parts.append(f"steps accepted={self.steps_accepted}")
        if self.steps_rejected is not None:
            parts.append(f"rejected={self.steps_rejected}")
        if self.jacobians is not None:
            parts.append(f"jacobians={self.jacobians}")
        if self.steps_accepted_backward is not None:
            parts.append(f"backward steps accepted={self.steps_accepted_backward}")
        if self.steps_rejected_backward is not None:
            parts.append(f"rejected={self.steps_rejected_backward}")
        return ", ".join(parts)


# --------------------------------------------------------------------------- recording

ACTIVE: contextvars.ContextVar[tuple[Recording, ...]] = contextvars.ContextVar(
    "neuralode_recordings", default=()
)
"""The recordings open in this context, innermost last; every solve appends its statistics to
each (``for r in ACTIVE.get(): r.solves.append(stats)``), and every regularized block its
terms."""


class Recording:
    """What :func:`record` collects: the statistics of every solve started inside the block
    (their backward counters fill in when gradients are computed later, even after the block
    has ended) and the regularization terms of every block that integrated them.

    Attributes:
        solves: one :class:`SolveStats` per solve, in order.
        regularization_terms: ``(name, weighted term)`` per regularizer and solve, in order.
    """

    def __init__(self) -> None:
        self.solves: list[SolveStats] = []
        self.regularization_terms: list[tuple[str, torch.Tensor]] = []

    @property
    def stats(self) -> SolveStats:
        """Every solve's counters, summed."""
        return SolveStats.total(self.solves)

    @property
    def nfe_forward(self) -> int:
        return sum(s.nfe_forward for s in self.solves)

    @property
    def nfe_backward(self) -> int:
        return sum(s.nfe_backward for s in self.solves)

    @property
    def regularization(self) -> torch.Tensor | None:
        """The sum of every weighted regularization term recorded (``None`` where there is
        none): what the training loop adds to the loss."""
        if not self.regularization_terms:
            return None
        total = self.regularization_terms[0][1]
        for _, term in self.regularization_terms[1:]:
            total = total + term
        return total

    def terms_by_name(self) -> dict[str, torch.Tensor]:
        """The weighted regularization terms summed by regularizer name."""
        out: dict[str, torch.Tensor] = {}
        for name, term in self.regularization_terms:
            out[name] = term if name not in out else out[name] + term
        return out

    def add_regularization(self, name: str, term: torch.Tensor) -> None:
        self.regularization_terms.append((name, term))

    def __repr__(self) -> str:
        return (
            f"Recording({len(self.solves)} solves, nfe forward={self.nfe_forward}, "
            f"backward={self.nfe_backward}, {len(self.regularization_terms)} regularization "
            "terms)"
        )


@contextlib.contextmanager
def record() -> Iterator[Recording]:
    """Collect every solve (and regularization term) made inside the block::

        with neuralode.record() as rec:
            loss = criterion(model(x), y)
        (loss + rec.regularization).backward()
        print(rec.nfe_forward, rec.nfe_backward)

    Recordings nest: a solve is counted by every recording open around it. Blocks, flows and
    the time-series models report through it, and the training loop reads its metrics from it.
    """
    rec = Recording()
    token = ACTIVE.set((*ACTIVE.get(), rec))
    try:
        yield rec
    finally:
        ACTIVE.reset(token)


def publish_regularization(terms: dict[str, Any]) -> None:
    """Add a block's weighted regularization terms to every open recording."""
    for rec in ACTIVE.get():
        for name, term in terms.items():
            rec.add_regularization(name, term)
