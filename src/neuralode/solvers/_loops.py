"""The loops: the fixed grid and the adaptive joint lane (one step size for the whole state),
and the lanes as objects (:class:`Joint`, :class:`PerSample`; the per-sample loop is in
:mod:`._per_sample`). A loop composes a method's :class:`~._methods.Stepper` with a step-size
controller (:mod:`._controller`) and knows nothing else about either.

Times are Python floats on the host in the joint lane (one synchronisation per step, for the
accept/reject decision) and tensors of shape ``(batch,)`` in the per-sample lane; states are
tensors. Every loop integrates in the direction of increasing time; a decreasing ``t`` is
handled by the :class:`~._evaluator.Evaluator` (``s ↦ -f(-s, y)``).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from ..errors import InvalidArgumentError, NonFiniteStateError
from ..registry import Registry
from . import _kernels as kernels
from ._controller import (
    DEFAULT_MAX_NUM_STEPS,
    PROJECTION_FACTOR,
    PIController,
    StepBoundaries,
    StepSizeController,
    projection_interval,
)
from ._evaluator import Evaluator
from ._kernels import rms as _rms
from ._messages import Status, failure
from ._methods import Method

__all__ = [
    "LANES",
    "AdaptiveConfig",
    "Joint",
    "Lane",
    "PerSample",
    "RMSNorm",
    "StepRecord",
    "grid_interp",
    "mixed_norm",
    "solve_adaptive",
    "solve_fixed",
]


# --------------------------------------------------------------------------- graph size

GRAPH_WARNING_BYTES = 1 << 30
"""Direct backpropagation keeps every stage of every accepted step; past about this many bytes
of recorded graph a solve warns once and names the gradient methods that avoid it."""

_BYTES_PER_STEP_OVERHEAD = 32 << 10  # autograd's nodes of a step, measured on a 2-element state


def graph_warning_step(method: Method, y0: torch.Tensor, f0: torch.Tensor) -> int | None:
    """The accepted step at which a direct-backprop solve warns about its graph (``None``
    when no graph is recorded: ``f0`` does not require grad)."""
    if not f0.requires_grad:
        return None
    per_step = _BYTES_PER_STEP_OVERHEAD + method.graph_bytes_per_step(y0)
    return max(1, GRAPH_WARNING_BYTES // per_step)


def warn_graph_size(steps: int, t: float) -> None:
    warnings.warn(
        f"direct backpropagation has recorded {steps} solver steps (up to t ≈ {t:.6g}), a graph "
        f"of roughly {GRAPH_WARNING_BYTES / 2**30:.2g} GiB or more that grows with every further "
        "step. gradient='checkpoint' keeps only the accepted states (memory ∝ steps × state), "
        "and odeint_adjoint needs memory independent of the number of steps",
        UserWarning,
        stacklevel=2,
    )


# --------------------------------------------------------------------------- fixed grid


def fixed_grid(t: Sequence[float], step_size: float | None) -> list[float]:
    """torchdiffeq's grid: ``t0 + i * step_size`` with the last point moved onto ``t[-1]``."""
    if step_size is None:
        return list(t)
    start, end = t[0], t[-1]
    n = math.ceil((end - start) / step_size + 1)
    grid = [start + i * step_size for i in range(n)]
    grid[-1] = end
    return grid


@dataclasses.dataclass
class StepRecord:
    """An accepted step, as kept by the checkpointed gradient."""

    t: float
    dt: float
    y: torch.Tensor
    outputs: list[tuple[int, float]]  # (index into t, theta)
    last_node: float | None = None  # evaluation time of c == 1 stages before a jump
    f1_time: float | None = None  # where the end slope was evaluated when not the last stage
    state: Any = None  # the stepper's checkpoint (an implicit method's Newton matrix)
    f0: torch.Tensor | None = None  # the first slope, where it was the last step's last stage
    # and that is not exactly f(t, y) (an implicit method's): a recomputation must use it


def solve_fixed(
    ev: Evaluator,
    method: Method,
    y0: torch.Tensor,
    t: Sequence[float],
    step_size: float | None,
    interp: str = "linear",
    record: list[StepRecord] | None = None,
    on_accept: Callable[[Sequence[torch.Tensor], float], None] | None = None,
    trajectory: list[tuple] | None = None,
) -> list[torch.Tensor]:
    """Fixed-grid steps with linear (or cubic Hermite) interpolation at the output times, as
    torchdiffeq. ``trajectory`` collects every step as ``(t0, dt, y0, y1, f0)``."""
    grid = fixed_grid(t, step_size)
    stepper = method.stepper(ev, kernels.select(y0))
    out = [y0]
    j = 1
    y = y0
    stats = ev.stats
    stats.steps_accepted = stats.steps_accepted or 0
    warn_at: int | None = -1
    callbacks = ev.callbacks
    for n_steps, (t0, t1) in enumerate(itertools.pairwise(grid), 1):
        dt = t1 - t0
        if callbacks is not None:
            callbacks.step(t0, y, dt)
        f0 = ev(t0, y)
        if warn_at == -1:
            warn_at = graph_warning_step(method, y0, f0)
        y1, ks = stepper.step(t0, y, f0, dt)
        stats.steps_accepted += 1
        if n_steps == warn_at:
            warn_graph_size(n_steps, ev.sign * t1)
        if on_accept is not None:
            on_accept(ks, dt)
        rec = None if record is None else StepRecord(t0, dt, y, [])
        while j < len(t) and t1 >= t[j]:
            out.append(grid_interp(ev, interp, t0, t1, y, y1, f0, t[j]))
            if rec is not None:
                rec.outputs.append((j, (t[j] - t0) / dt))
            j += 1
        if rec is not None and record is not None:
            record.append(rec)
        if trajectory is not None:
            trajectory.append((t0, dt, y, y1, f0))
        y = y1
        del ks  # free this step's stages before the next step makes its own
    return out


def grid_interp(ev, interp, t0, t1, y0, y1, f0, s):
    if s == t0:
        return y0
    if s == t1:
        return y1
    if interp == "linear":
        return y0 + (y1 - y0) * ((s - t0) / (t1 - t0))
    return kernels.hermite(y0, y1, f0, ev(t1, y1), t1 - t0, (s - t0) / (t1 - t0))


# --------------------------------------------------------------------------- adaptive


@dataclasses.dataclass
class AdaptiveConfig:
    """What an adaptive solve needs besides its method: tolerances and norm, the controller,
    the first step, the step budget and the times steps must end on."""

    rtol: Any
    atol: Any
    norm: Callable[[torch.Tensor], Any]
    controller: StepSizeController = dataclasses.field(default_factory=PIController)
    first_step: float | None = None
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()

    def kernels(self, y0: torch.Tensor) -> kernels.Kernels:
        return kernels.select(y0, self.rtol, self.atol, self.norm)


def mixed_norm(sizes: Sequence[int]) -> Callable[[torch.Tensor], float]:
    """Max over consecutive pieces of these sizes of their RMS (torchdiffeq's norm for tuple
    states)."""

    def norm(x: torch.Tensor) -> float:
        return max(_rms(p) for p in torch.split(x, list(sizes)))

    return norm


class RMSNorm:
    """The default error norm: the root mean square of the scaled error, as torchdiffeq.

    With ``segment`` it is the largest RMS over the first ``count`` consecutive pieces of that
    length (the adjoint's seminorm: the state and its adjoint, not the parameter adjoints).
    The fused kernel computes the same norm without forming the scaled error."""

    def __init__(self, segment: int | None = None, count: int = 1) -> None:
        self.segment = segment
        self.count = count

    def __call__(self, x: torch.Tensor) -> float:
        if self.segment is None:
            return _rms(x)
        seg = self.segment
        return max(_rms(x[i * seg : (i + 1) * seg]) for i in range(self.count))

    def extent(self, numel: int) -> tuple[int, int]:
        """``(elements the norm reads, segment length)`` for a state of ``numel`` elements."""
        if self.segment is None:
            return numel, max(numel, 1)
        return self.segment * self.count, self.segment


RMS_NORM = RMSNorm()
"""The default norm (immutable: one for every solve)."""


def solve_adaptive(
    ev: Evaluator,
    method: Method,
    y0: torch.Tensor,
    t: Sequence[float],
    cfg: AdaptiveConfig,
    record: list[StepRecord] | None = None,
    on_accept: Callable[[Sequence[torch.Tensor], float], None] | None = None,
    trajectory: list[tuple] | None = None,
    event: Any = None,
) -> list[torch.Tensor]:
    """The joint lane: adaptive steps with one step size for the whole state (torchdiffeq's
    behaviour). With ``event`` (an :class:`~._events.EventSearch`; ``t`` is then ``[t0, inf]``)
    the solve stops at the event: ``[y0, y(event)]``.

    ``on_accept(ks, dt)`` is called with the stages of every accepted step (the continuous
    adjoint integrates its parameter adjoints by quadrature with it); ``trajectory`` collects
    every accepted step as ``(t0, dt, y0, y1, ks, f1)`` (for dense output)."""
    stats = ev.stats
    stats.steps_accepted = stats.steps_accepted or 0
    stats.steps_rejected = stats.steps_rejected or 0
    ctrl = cfg.controller
    decide = ctrl.decide
    stepper = method.stepper(ev, cfg.kernels(y0))
    order = method.order
    t_now = t[0]
    y = y0
    f0 = ev(t_now, y)
    warn_at = graph_warning_step(method, y0, f0)
    n_accepted = 0
    callbacks = ev.callbacks
    dt = cfg.first_step if cfg.first_step is not None else stepper.initial_step(t_now, y, f0)
    if not math.isfinite(dt):  # the initial step heuristic met a non-finite derivative
        if not bool(torch.isfinite(f0).all()):
            raise NonFiniteStateError.dynamics_at_start(ev.sign * t_now)
        dt = ctrl.min_step if ctrl.min_step > 0 else ctrl.max_step
    # a method whose dense output is poor on stiff dynamics steps onto every output time
    landing = tuple(t[1:]) if method.lands_on_outputs else ()
    bounds = None
    if cfg.step_t or cfg.jump_t or landing:
        bounds = StepBoundaries((*cfg.step_t, *landing), cfg.jump_t, t_now)
    f0_is_stage = False  # whether f0 is the last step's last stage, and not exactly f(t, y)
    out = [y0]
    j = 1
    n_steps = 0
    # the budget counts the steps (accepted or not) from one output time to the next, as
    # torchdiffeq's max_num_steps does; every tenth of it, the steps still needed to the next
    # output time at the largest recent step size: a solve that would need far more than its
    # budget (stiff, say) stops early
    check_every = projection_interval(cfg.max_num_steps)
    next_check, dt_recent = check_every, 0.0
    prev_ratio = 1.0
    t_end = t[-1]
    if event is not None and event.start(t_now, y0):
        return [y0, y0]
    bounded = math.isfinite(t_end)  # (not so when searching for an event)
    while j < len(t):
        if n_steps >= cfg.max_num_steps:
            where = f" near t ≈ {ev.sign * t_now:.6g}"
            raise failure(Status.MAX_STEPS, where=where, limit=cfg.max_num_steps, rtol=cfg.rtol,
                          event=event is not None)  # fmt: skip
        n_steps += 1
        if n_steps == next_check and bounded:
            next_check += check_every
            _project(ev, cfg, n_steps, t[j] - t_now, dt_recent, t_now)
            dt_recent = 0.0
        # as torchdiffeq: every step starts within [min_step, max_step] (the first one too)
        dt = ctrl.clamp(dt)
        hit = None
        if bounds is not None:  # land exactly on step_t / jump_t boundaries
            dt, hit = bounds.clip(t_now, dt)
        t1 = t_now + dt if hit is None else hit
        if not bounded and not math.isfinite(t1):  # the solution settled, the event never came
            raise failure(Status.EVENT_NEVER, time=ev.sign * t_now)
        if t1 == t_now:
            where = f" near t ≈ {ev.sign * t_now:.6g}"
            raise failure(Status.STEP_UNDERFLOW, where=where, implicit=method.implicit)
        jumped = hit is not None and bounds is not None and hit in bounds.jumps
        last_node = ev.neighbour(t1, t_now) if jumped else None
        if callbacks is not None:
            callbacks.step(t_now, y, dt)
        y1, ks = stepper.step(t_now, y, f0, dt, last_node)
        ratio = stepper.error_ratio(y, y1, ks, dt)
        if math.isnan(ratio):
            raise _nonfinite(ev, method, t_now, dt, ks)
        accepted, dt_next, kept = decide(ratio, dt, prev_ratio, order)
        if accepted:
            stats.steps_accepted += 1
            if dt > dt_recent:
                dt_recent = dt
            n_accepted += 1
            if callbacks is not None:
                callbacks.accept(t_now, y, dt)
            if n_accepted == warn_at:
                warn_graph_size(n_accepted, ev.sign * t1)
            if on_accept is not None:
                on_accept(ks, dt)
            # the slope at the step's end, for its dense output (from the left of a jump)
            f1, f1_time = stepper.end_slope(t1, y1, ks, last_node)
            # the next step starts from the right of a jump (torchdiffeq's perturb=NEXT)
            f_next = f1 if last_node is None else ev(ev.neighbour(t1, t_end + 1.0), y1)
            if event is not None:
                found = event.search(stepper, t_now, dt, y, y1, ks, f1)
                if found is not None:
                    return [y0, found]
            rec = None
            if record is not None:
                rec = StepRecord(t_now, dt, y, [], last_node, f1_time, stepper.checkpoint(),
                                 f0 if f0_is_stage else None)  # fmt: skip
            if t[j] <= t1:  # an output time passed: the budget starts again
                n_steps, next_check = 0, check_every
            while j < len(t) and t[j] <= t1:
                theta = (t[j] - t_now) / dt
                out.append(stepper.dense(y, y1, ks, f1, dt, theta))
                if rec is not None:
                    rec.outputs.append((j, theta))
                j += 1
            if rec is not None and record is not None:
                record.append(rec)
            if trajectory is not None:
                trajectory.append((t_now, dt, y, y1, ks, f1))
            y, f0, t_now = y1, f_next, t1
            f0_is_stage = not method.exact_slope and f1_time is None and last_node is None
            if hit is not None and bounds is not None:
                bounds.passed()
            prev_ratio = kept
        else:
            stats.steps_rejected += 1
            if callbacks is not None:
                callbacks.reject(t_now, y, dt)
        dt = dt_next
        del ks, y1  # free this step's stages before the next step makes its own
    return out


def _project(ev, cfg: AdaptiveConfig, taken: int, remaining: float, dt: float, t: float) -> None:
    """Stop a solve that, at its largest recent step size, would need far more steps than its
    budget allows (instead of running through the whole budget first)."""
    needed = remaining / dt if dt > 0 else math.inf
    if taken + needed > PROJECTION_FACTOR * cfg.max_num_steps:
        where = f" near t ≈ {ev.sign * t:.6g}"
        raise failure(Status.MAX_STEPS, where=where, limit=cfg.max_num_steps, rtol=cfg.rtol,
                      projected=(taken, needed))  # fmt: skip


def _nonfinite(ev: Evaluator, method: Method, t: float, dt: float, ks) -> Exception:
    """Locate the first stage whose derivative is not finite (only on the failure path)."""
    for c, k in zip(getattr(method, "nodes", ()), ks):
        if not bool(torch.isfinite(k).all()):
            return failure(Status.NONFINITE, time=ev.sign * (t + c * dt))
    within = f" (within the step to t ≈ {ev.sign * (t + dt):.6g})"
    return failure(Status.NONFINITE, time=ev.sign * t, detail=within)


# --------------------------------------------------------------------------- lanes


class Lane(abc.ABC):
    """How a batch shares its steps: :class:`Joint` (one step size for the whole state, as
    torchdiffeq) or :class:`PerSample` (every sample its own). Registered in :data:`LANES`."""

    name: ClassVar[str]

    def check(self, method: Method, controller: Any, y0: Any, times: Any, gradient: Any) -> None:
        """Refuse, with the reason, what this lane cannot solve (``times``: the internal
        output times, a list, or a ``(batch, n)`` tensor of per-sample times)."""
        if type(times) is not list:
            raise InvalidArgumentError(
                "t of shape (batch, n), every sample its own times, needs the per-sample lane: "
                "options={'batch_mode': 'per_sample'} (or lane=PerSample())"
            )

    @abc.abstractmethod
    def run(
        self,
        plan: Any,
        ev: Evaluator,
        y0: torch.Tensor,
        record: list[StepRecord] | None = None,
        trajectory: list[Any] | None = None,
    ) -> list[torch.Tensor]:
        """The states at the plan's times, as a list."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Joint(Lane):
    """One step size for the whole state (torchdiffeq's behaviour): every sample of a batch
    takes the steps the hardest one needs."""

    name = "joint"

    def run(
        self,
        plan: Any,
        ev: Evaluator,
        y0: torch.Tensor,
        record: list[StepRecord] | None = None,
        trajectory: list[Any] | None = None,
    ) -> list[torch.Tensor]:
        if plan.cfg is None:
            return solve_fixed(ev, plan.method, y0, plan.times, plan.step_size, plan.interp,
                               record, trajectory=trajectory)  # fmt: skip
        return solve_adaptive(ev, plan.method, y0, plan.times, plan.cfg, record,
                              trajectory=trajectory, event=plan.event)  # fmt: skip


class PerSample(Lane):
    """Every sample (first dimension) its own time, step size and error test, so that its
    result and NFE do not depend on the rest of the batch; output times may be a ``(batch, n)``
    tensor, every sample its own. Adaptive methods, explicit and implicit (with one Jacobian block
    per sample), direct gradients."""

    name = "per_sample"

    def check(self, method: Method, controller: Any, y0: Any, times: Any, gradient: Any) -> None:
        if gradient.name != "direct":
            raise InvalidArgumentError(
                "batch_mode='per_sample' supports direct backpropagation only; use odeint "
                "without gradient='checkpoint', or batch_mode='joint'"
            )
        if not controller.adaptive:
            raise InvalidArgumentError(
                "batch_mode='per_sample' needs an adaptive method such as dopri5"
            )
        if not isinstance(y0, torch.Tensor):
            raise InvalidArgumentError("batch_mode='per_sample' needs a tensor state, not a tuple")
        if y0.ndim == 0:
            raise InvalidArgumentError(
                "batch_mode='per_sample' needs a state with a batch dimension"
            )
        if type(times) is not list and y0.shape[0] != times.shape[0]:
            raise InvalidArgumentError(
                f"per-sample times of shape {tuple(times.shape)} need a tensor state with "
                f"{times.shape[0]} samples in its first dimension, got {tuple(y0.shape)}"
            )
        shared = [k for k in ("step_t", "jump_t") if getattr(controller, k)]
        if controller.norm is not None:
            shared.append("norm")
        if shared:
            raise InvalidArgumentError(
                f"batch_mode='per_sample' does not support options {shared}: every sample "
                "has its own steps and its own error test, so step_t/jump_t boundaries "
                "shared by the batch and a norm of the whole state do not apply. Use "
                "batch_mode='joint' (the default) with these options"
            )
        linear_solver = getattr(method, "linear_solver", "auto")
        if method.implicit and linear_solver not in ("auto", "block"):
            raise InvalidArgumentError(
                f"batch_mode='per_sample' solves Newton's systems with one Jacobian block per "
                f"sample; linear_solver={linear_solver!r} does not apply. Use "
                "linear_solver='auto' (or 'block'), or batch_mode='joint'",
                argument="linear_solver",
            )

    def run(
        self,
        plan: Any,
        ev: Evaluator,
        y0: torch.Tensor,
        record: list[StepRecord] | None = None,
        trajectory: list[Any] | None = None,
    ) -> list[torch.Tensor]:
        from ._per_sample import solve_adaptive_per_sample

        if record is not None or trajectory is not None:
            raise InvalidArgumentError(
                "batch_mode='per_sample' supports direct backpropagation only and has no dense "
                "output; use odeint without gradient='checkpoint', or batch_mode='joint'"
            )
        return solve_adaptive_per_sample(ev, plan.method, y0, plan.times, plan.cfg)


LANES: Registry[type[Lane]] = Registry("batch mode", "a lane is a Lane subclass")
LANES.register("joint", Joint)
LANES.register("per_sample", PerSample)
