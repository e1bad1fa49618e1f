"""The loops: fixed grid, adaptive with one step size (joint lane) and adaptive with a step size
per sample (per-sample lane). A loop composes a method's :class:`~._methods.Stepper` with a
step-size controller (:mod:`._controller`) and knows nothing else about either.

Times are Python floats on the host in the joint lane (one synchronisation per step, for the
accept/reject decision) and tensors of shape ``(batch,)`` in the per-sample lane; states are
tensors. Every loop integrates in the direction of increasing time; a decreasing ``t`` is
handled by the :class:`~._evaluator.Evaluator` (``s ↦ -f(-s, y)``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import (
    InvalidArgumentError,
    NonFiniteStateError,
)
from . import _kernels as kernels
from ._controller import PIController, StepBoundaries, StepSizeController
from ._evaluator import Evaluator
from ._kernels import rms as _rms
from ._messages import Status, failure
from ._methods import Method, Stepper
from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = [
    "AdaptiveConfig",
    "Evaluator",
    "RMSNorm",
    "StepRecord",
    "solve_adaptive",
    "solve_adaptive_per_sample",
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
) -> list[torch.Tensor]:
    """Fixed-grid steps with linear (or cubic Hermite) interpolation at the output times, as
    torchdiffeq."""
    grid = fixed_grid(t, step_size)
    stepper = method.stepper(ev, kernels.select(y0))
    out = [y0]
    j = 1
    y = y0
    stats = ev.stats
    stats.steps_accepted = stats.steps_accepted or 0
    warn_at = -1
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
            out.append(_grid_interp(ev, interp, t0, t1, y, y1, f0, t[j]))
            if rec is not None:
                rec.outputs.append((j, (t[j] - t0) / dt))
            j += 1
        if rec is not None:
            record.append(rec)
        y = y1
    return out


def _grid_interp(ev, interp, t0, t1, y0, y1, f0, s):
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


def solve_adaptive(
    ev: Evaluator,
    method: Method,
    y0: torch.Tensor,
    t: Sequence[float],
    cfg: AdaptiveConfig,
    record: list[StepRecord] | None = None,
    on_accept: Callable[[Sequence[torch.Tensor], float], None] | None = None,
) -> list[torch.Tensor]:
    """The joint lane: adaptive steps with one step size for the whole state (torchdiffeq's
    behaviour).

    ``on_accept(ks, dt)`` is called with the stages of every accepted step (the continuous
    adjoint integrates its parameter adjoints by quadrature with it)."""
    stats = ev.stats
    stats.steps_accepted = stats.steps_accepted or 0
    stats.steps_rejected = stats.steps_rejected or 0
    ctrl = cfg.controller
    stepper = method.stepper(ev, cfg.kernels(y0))
    order = method.order
    t_now = t[0]
    y = y0
    f0 = ev(t_now, y)
    warn_at = graph_warning_step(method, y0, f0)
    n_accepted = 0
    callbacks = ev.callbacks
    if cfg.first_step is not None:
        dt = cfg.first_step
    else:
        dt = stepper.initial_step(t_now, y, f0, ctrl.max_step)
    if not math.isfinite(dt):  # the initial step heuristic met a non-finite derivative
        if not bool(torch.isfinite(f0).all()):
            raise NonFiniteStateError.dynamics_at_start(ev.sign * t_now)
        dt = ctrl.min_step if ctrl.min_step > 0 else ctrl.max_step
    # a method whose dense output is poor on stiff dynamics steps onto every output time
    landing = tuple(t[1:]) if method.lands_on_outputs else ()
    bounds = StepBoundaries((*cfg.step_t, *landing), cfg.jump_t, t_now)
    f0_is_stage = False  # whether f0 is the last step's last stage, and not exactly f(t, y)
    out = [y0]
    j = 1
    n_steps = 0
    prev_ratio = 1.0
    t_end = t[-1]
    while j < len(t):
        if n_steps >= cfg.max_num_steps:
            where = f" near t ≈ {ev.sign * t_now:.6g}"
            raise failure(Status.MAX_STEPS, where=where, limit=cfg.max_num_steps, rtol=cfg.rtol)
        n_steps += 1
        # as torchdiffeq: every step starts within [min_step, max_step] (the first one too)
        dt = ctrl.clamp(dt)
        hit = None
        if bounds:  # land exactly on step_t / jump_t boundaries
            dt, hit = bounds.clip(t_now, dt)
        t1 = t_now + dt if hit is None else hit
        if t1 == t_now:
            where = f" near t ≈ {ev.sign * t_now:.6g}"
            raise failure(Status.STEP_UNDERFLOW, where=where, implicit=method.implicit)
        last_node = math.nextafter(t1, t_now) if hit is not None and hit in bounds.jumps else None
        if callbacks is not None:
            callbacks.step(t_now, y, dt)
        y1, ks = stepper.step(t_now, y, f0, dt, last_node)
        ratio = stepper.error_ratio(y, y1, ks, dt)
        if math.isnan(ratio):
            raise _nonfinite(ev, method, t_now, dt, ks)
        if ctrl.accept(ratio, dt):
            stats.steps_accepted += 1
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
            f_next = f1 if last_node is None else ev(math.nextafter(t1, t_end + 1.0), y1)
            rec = None
            if record is not None:
                rec = StepRecord(t_now, dt, y, [], last_node, f1_time, stepper.checkpoint(),
                                 f0 if f0_is_stage else None)  # fmt: skip
            while j < len(t) and t[j] <= t1:
                theta = (t[j] - t_now) / dt
                out.append(stepper.dense(y, y1, ks, f1, dt, theta))
                if rec is not None:
                    rec.outputs.append((j, theta))
                j += 1
            if rec is not None:
                record.append(rec)
            y, f0, t_now = y1, f_next, t1
            f0_is_stage = not method.exact_slope and f1_time is None and last_node is None
            if hit is not None:
                bounds.passed()
            dt_next = ctrl.next_step(dt, ratio, prev_ratio, order)
            prev_ratio = ctrl.remember(ratio)
        else:
            stats.steps_rejected += 1
            if callbacks is not None:
                callbacks.reject(t_now, y, dt)
            dt_next = ctrl.next_step(dt, ratio, prev_ratio, order)
        dt = dt_next
    return out


def recompute_step(
    stepper: Stepper,
    rec: StepRecord,
    y: torch.Tensor,
    fixed_interp: str | None = None,
    f0: torch.Tensor | None = None,
    last_stage: bool = False,
) -> tuple[list[torch.Tensor], list[int]]:
    """Recompute an accepted step from its record (under autograd, in the checkpointed
    gradient's backward pass): ``([y1, *outputs], [-1, *output indices])``, with the last
    stage appended (index ``-2``) where ``last_stage`` (the next step started from it). ``f0``
    is the recorded first slope where there is one (else ``f(t, y)`` is evaluated)."""
    ev = stepper.ev
    stepper.restore(rec.state)
    if f0 is None:
        f0 = ev(rec.t, y)
    y1, ks = stepper.step(rec.t, y, f0, rec.dt, rec.last_node)
    outs, idx = [y1], [-1]
    if last_stage:
        outs.append(ks[-1])
        idx.append(-2)
    if rec.outputs:
        t1 = rec.t + rec.dt
        if fixed_interp is not None:
            for j, theta in rec.outputs:
                outs.append(
                    _grid_interp(ev, fixed_interp, rec.t, t1, y, y1, f0, rec.t + theta * rec.dt)
                )
                idx.append(j)
        else:
            f1 = ks[-1] if rec.f1_time is None else ev(rec.f1_time, y1)
            for j, theta in rec.outputs:
                outs.append(stepper.dense(y, y1, ks, f1, rec.dt, theta))
                idx.append(j)
    return outs, idx


def _nonfinite(ev: Evaluator, method: Method, t: float, dt: float, ks) -> Exception:
    """Locate the first stage whose derivative is not finite (only on the failure path)."""
    for c, k in zip(getattr(method, "nodes", ()), ks):
        if not bool(torch.isfinite(k).all()):
            return failure(Status.NONFINITE, time=ev.sign * (t + c * dt))
    within = f" (within the step to t ≈ {ev.sign * (t + dt):.6g})"
    return failure(Status.NONFINITE, time=ev.sign * t, detail=within)


# --------------------------------------------------------------------------- per sample


class _PerSampleKernels(kernels.TorchKernels):
    """Tensor kernels whose step sizes, times and norms are per sample: a step size is a tensor
    of shape ``(batch,)``, broadcast over the state's other dimensions, and a norm is the RMS of
    each sample."""

    def __init__(self, rtol: Any, atol: Any, y0: torch.Tensor, time_dtype: torch.dtype) -> None:
        super().__init__(rtol, atol, None)
        self.batch = y0.shape[0]
        self.view = (self.batch,) + (1,) * (y0.ndim - 1)
        self.dtype = y0.dtype
        self.time_dtype = time_dtype
        self._poly_key: Any = None

    def state_dt(self, dt: Any) -> Any:
        return dt.to(self.dtype).reshape(self.view)

    def scaled_norm(self, x, y, y1=None):
        with torch.no_grad():
            mag = y.abs() if y1 is None else torch.maximum(y.abs(), y1.abs())
            scaled = x / (mag * self.rtol).add_(self.atol)
            return scaled.reshape(self.batch, -1).pow(2).mean(dim=1).sqrt().to(self.time_dtype)

    def axpy(self, y, k, h):
        return y + self.state_dt(h) * k

    def dense(self, tab, y0, y1, ks, f1, dt, theta):
        """The dense output at several fractions per sample at once: ``theta`` of shape
        ``(R, batch)`` gives a result of shape ``(R, *state)``. One contraction of the stages
        with the polynomials' weights replaces a call per output (the batch's outputs within a
        step are many small operations otherwise)."""
        key = (tab.name, theta.dtype, theta.device)
        if self._poly_key != key:
            js = [j for j, _ in tab.dense_poly]
            q = torch.tensor([q for _, q in tab.dense_poly], dtype=theta.dtype, device=theta.device)
            self._poly, self._poly_js, self._poly_key = q, js, key
        stages = [*ks, f1]
        js = self._poly_js
        k = torch.stack([stages[j] for j in js]).reshape(len(js), self.batch, -1)
        q1, q2, q3, q4 = self._poly.T.unsqueeze(1).unsqueeze(1)  # each (1, 1, stages)
        x = theta.unsqueeze(-1)
        weights = (x * (q1 + x * (q2 + x * (q3 + x * q4)))).to(self.dtype)  # (R, B, stages)
        # (small matrix products are slower than this broadcast on the CPU)
        step = (weights.unsqueeze(-1) * k.transpose(0, 1)).sum(dim=2)
        return torch.addcmul(y0, self.state_dt(dt), step.reshape(theta.shape[0], *y0.shape))


class _CountingEvaluator:
    """The evaluator of the per-sample lane: counts an evaluation for the samples in ``mask``
    (those still integrating), so that every sample reports the evaluations it needed."""

    def __init__(self, ev: Evaluator, batch: int, device: torch.device) -> None:
        self.ev = ev
        self.nfe = torch.zeros(batch, dtype=torch.long, device=device)
        self.mask = torch.ones(batch, dtype=torch.bool, device=device)

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += self.mask
        return self.ev(s, y)


def solve_adaptive_per_sample(
    ev: Evaluator,
    method: Method,
    y0: torch.Tensor,
    t: Sequence[float] | torch.Tensor,
    cfg: AdaptiveConfig,
) -> list[torch.Tensor]:
    """The per-sample lane: every sample (first dimension) has its own time, step size and
    error test, so that its result and NFE do not depend on the rest of the batch.

    ``t`` holds the output times: one sequence for all samples, or a tensor of shape
    ``(batch, n)`` with every sample's own increasing times (the first column is each
    sample's start). The dynamics receive ``t`` as a tensor of shape ``(batch,)``; output ``j``
    of sample ``b`` is its state at ``t[b, j]``.
    """
    if y0.ndim == 0:
        raise InvalidArgumentError("batch_mode='per_sample' needs a state with a batch dimension")
    B = y0.shape[0]
    dev = y0.device
    tdt = torch.float64 if y0.dtype == torch.float64 or dev.type == "cpu" else torch.float32
    times = torch.as_tensor(t, dtype=tdt, device=dev)
    if times.ndim == 1:
        times = times.expand(B, -1)
    if times.ndim != 2 or times.shape[0] != B:
        raise InvalidArgumentError(
            f"per-sample output times must have shape (batch, n) = ({B}, n), got "
            f"{tuple(times.shape)}"
        )
    n_out = times.shape[1]
    stats = ev.stats
    ctrl = cfg.controller
    k = _PerSampleKernels(cfg.rtol, cfg.atol, y0, tdt)
    counting = _CountingEvaluator(ev, B, dev)
    stepper = method.stepper(counting, k)
    acc = torch.zeros(B, dtype=torch.long, device=dev)
    rej = torch.zeros(B, dtype=torch.long, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    t_now = times[:, 0].clone()
    y = y0
    f0 = counting(t_now, y)
    if cfg.first_step is None:
        dt = stepper.initial_step(t_now, y, f0, ctrl.max_step)
    else:
        dt = torch.full_like(t_now, cfg.first_step)
    dt = ctrl.clamp(dt)
    prev_ratio = torch.ones_like(t_now)
    # row j: every sample's output j; the extra last row takes the writes of samples without an
    # output due (so that no two writes of one call land on one element)
    out = torch.cat((y0.unsqueeze(0).expand(n_out, *y0.shape), y0.unsqueeze(0)))
    rows = torch.arange(B, device=dev)
    positions = torch.arange(n_out, device=dev)
    nxt = torch.ones(B, dtype=torch.long, device=dev)  # next output index per sample
    n_iter = 0
    active = nxt < n_out
    go_on = n_out > 1
    # one read from the device per iteration (a synchronisation on a GPU): whether a sample is
    # not finite, how many outputs a sample passed at most, and whether any sample goes on
    while go_on:
        if n_iter >= cfg.max_num_steps:
            raise failure(Status.MAX_STEPS, limit=cfg.max_num_steps, rtol=cfg.rtol)
        n_iter += 1
        counting.mask = active
        dt_eff = torch.where(active, dt, torch.zeros_like(dt))
        y1, ks = stepper.step(t_now, y, f0, dt_eff)
        ratio = stepper.error_ratio(y, y1, ks, dt_eff)
        with torch.no_grad():
            bad = torch.isnan(ratio) & active
            accept = ctrl.accept(ratio, dt_eff) & active
            acc += accept
            rej += (~accept) & active
            dt_new = ctrl.next_step(dt, ratio, prev_ratio, method.order)
            prev_ratio = torch.where(accept, ctrl.remember(ratio), prev_ratio)
            t1 = t_now + dt_eff
            passed = (positions >= nxt.unsqueeze(1)) & (times <= t1.unsqueeze(1))
            passed &= accept.unsqueeze(1)
            n_passed = passed.sum(dim=1)
            any_bad, most, go_on = torch.stack(
                (bad.any(), n_passed.max(), ((nxt + n_passed) < n_out).any())
            ).tolist()
        if any_bad:
            raise failure(Status.NONFINITE, time=float(ev.sign * t_now[bad][0]))
        counting.mask = accept
        f1, _ = stepper.end_slope(t1, y1, ks)
        if most:  # the outputs every sample passed, in one dense-output call
            with torch.no_grad():
                r = torch.arange(int(most), device=dev).unsqueeze(1)
                due = n_passed.unsqueeze(0) > r
                idx = (nxt.unsqueeze(0) + r).clamp(max=n_out - 1)
                t_out = times.gather(1, idx.T).T
                theta = ((t_out - t_now) / dt_eff.clamp(min=1e-300)).clamp(0.0, 1.0)
                idx = torch.where(due, idx, n_out)
            val = stepper.dense(y, y1, ks, f1, dt_eff, theta)
            out.index_put_((idx, rows.expand_as(idx)), val)  # (out is the loop's own tensor)
        nxt = nxt + n_passed
        am = accept.reshape(k.view)
        y = torch.where(am, y1, y)
        f0 = torch.where(am, f1, f0)
        t_now = torch.where(accept, t1, t_now)
        dt = torch.where(active, dt_new, dt)
        active = nxt < n_out
    # the batch takes as many steps as its hardest sample: report that sample's counters
    hardest = int(torch.argmax(acc + rej))
    stats.steps_accepted = (stats.steps_accepted or 0) + int(acc[hardest])
    stats.steps_rejected = (stats.steps_rejected or 0) + int(rej[hardest])
    stats.nfe_per_sample = counting.nfe.tolist()
    stats.steps_accepted_per_sample = acc.tolist()
    stats.steps_rejected_per_sample = rej.tolist()
    return list(out[:-1].unbind(0))
