"""The native Runge–Kutta loops: fixed grid, adaptive (joint step size) and adaptive per sample.

Times are Python floats on the host (one synchronisation per step, for the accept/reject
decision), states are tensors. Every loop integrates in the direction of increasing time; a
decreasing ``t`` is handled by :class:`Evaluator` (``s ↦ -f(-s, y)``).
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
    InvalidTypeError,
    NonFiniteStateError,
    StepSizeUnderflowError,
    TooManyStepsError,
)
from . import _kernels as kernels
from ._callbacks import StepCallbacks
from ._messages import step_underflow_message, too_many_steps_message
from ._stats import SolveStats
from ._tableau import QUARTIC, ButcherTableau, nonzero_terms
from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = [
    "AdaptiveConfig",
    "Evaluator",
    "RMSNorm",
    "StepRecord",
    "rk_step",
    "solve_adaptive",
    "solve_adaptive_per_sample",
    "solve_fixed",
]


class Evaluator:
    """Calls the user's dynamics on the flat internal state, counting evaluations.

    Handles the time direction (``sign``), tuple states (``shapes``: the state is one flat vector
    internally), checks the shape of every derivative returned and casts it to the state's
    dtype. With ``fused`` set (by :func:`use_fused`) the loops combine stages with the fused
    kernels, which prove every derivative before they read it (:class:`_kernels.Stages`).
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
        self.fused = False
        self.callbacks: StepCallbacks | None = None  # torchdiffeq's step callbacks, if any
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


# --------------------------------------------------------------------------- one RK step


Terms = Sequence[tuple[int, float]]


def _combine(y: torch.Tensor, ks: Sequence[torch.Tensor], terms: Terms, dt: Any) -> torch.Tensor:
    """``y + dt * sum(c * ks[j] for j, c in terms)``.

    With a float ``dt`` this is one out-of-place add followed by in-place adds on the fresh
    result (about 2.5 µs each on the CPU, the dominant cost of a step besides ``f``); in-place
    adds on a fresh tensor are safe under autograd, as ``add_`` saves nothing for backward."""
    if not terms:
        return y
    if type(dt) is float:
        j, c = terms[0]
        out = torch.add(y, ks[j], alpha=c * dt)
        for j, c in terms[1:]:
            out.add_(ks[j], alpha=c * dt)
        return out
    out = y
    for j, c in terms:  # a tensor dt (per sample): broadcast products
        out = out + (c * dt) * ks[j]
    return out


def use_fused(ev: Evaluator, y0: torch.Tensor) -> bool:
    """Decide once per solve whether the loops use the fused kernels (see ``_kernels``)."""
    ev.fused = kernels.usable(y0)
    return ev.fused


def _fused_sum(y: torch.Tensor, k: torch.Tensor, h: float) -> torch.Tensor:
    """``y + h * k`` in one pass of the fused kernel."""
    return kernels.lincomb(kernels.Stages(y, k), (0, 1.0), h)


def rk_step(
    ev: Evaluator,
    tab: ButcherTableau,
    t: float,
    y: torch.Tensor,
    f0: torch.Tensor,
    dt: float,
    last_node: float | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One explicit RK step; returns ``y1`` and the stage derivatives ``k``.

    ``last_node`` overrides the evaluation time of stages at ``c == 1`` (just before a jump).
    """
    if ev.fused:
        return _rk_step_fused(ev, tab, t, y, f0, dt, last_node)
    ks = [f0]
    yi = y
    c = tab.c
    a_terms = tab.a_terms
    for i in range(1, len(c)):
        yi = _combine(y, ks, a_terms[i], dt)
        ti = t + c[i] * dt
        if last_node is not None and c[i] == 1.0:
            ti = last_node
        ks.append(ev(ti, yi))
    y1 = yi if tab.fsal else _combine(y, ks, tab.b_terms, dt)
    return y1, ks


def _rk_step_fused(
    ev: Evaluator,
    tab: ButcherTableau,
    t: float,
    y: torch.Tensor,
    f0: torch.Tensor,
    dt: float,
    last_node: float | None,
) -> tuple[torch.Tensor, kernels.Stages]:
    """:func:`rk_step` with every stage sum formed in one pass of the fused kernel; the stages
    come back as a proven :class:`_kernels.Stages` list."""
    ks = kernels.Stages(y, f0)
    c = tab.c

    def stage(i: int, yi: torch.Tensor) -> torch.Tensor:
        ti = t + c[i] * dt
        if last_node is not None and c[i] == 1.0:
            ti = last_node
        return ev(ti, yi)

    yi = ks.advance(tab.a_flat[1:], dt, stage)
    if not tab.fsal:
        yi = kernels.lincomb(ks, tab.b_flat, dt)
    return yi, ks


def error_estimate(tab: ButcherTableau, ks: Sequence[torch.Tensor], dt: float) -> torch.Tensor:
    """``dt * sum(b_err * k)``; call without gradient."""
    terms = tab.b_err_terms
    j, e = terms[0]
    err = torch.mul(ks[j], e * dt)
    for j, e in terms[1:]:
        err.add_(ks[j], alpha=e * dt)
    return err


@dataclasses.dataclass
class _FusedRatio:
    """Forms ``cfg.norm(sum(c * x) / (atol + rtol * max(|y0|, |y1|)))`` in the fused kernel,
    for an :class:`RMSNorm` and float tolerances."""

    cfg: AdaptiveConfig
    scratch: kernels.Scratch

    @classmethod
    def create(cls, ev: Evaluator, cfg: AdaptiveConfig, y0: torch.Tensor) -> _FusedRatio | None:
        if not (
            use_fused(ev, y0)
            and isinstance(cfg.norm, RMSNorm)
            and type(cfg.rtol) is float
            and type(cfg.atol) is float
        ):
            return None
        return cls(cfg, kernels.Scratch(y0, cfg.norm.extent(y0.numel())))

    def __call__(self, stages: kernels.Stages, y1: torch.Tensor, terms, scale: float) -> float:
        """The ratio of ``sum(c * scale * stages[j] for j, c in pairs(terms))``, scaled by
        ``atol + rtol * max(|y0|, |y1|)`` with ``y0`` the stages' base."""
        cfg = self.cfg
        return kernels.error_ratio(stages, y1, terms, scale, cfg.rtol, cfg.atol, self.scratch)


def _interp_weights(theta: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Weights of ``y0, y1, y_mid, dt*f0, dt*f1`` in the quartic through ``y0, y_mid, y1`` with
    slopes ``f0, f1`` at ``theta`` in [0, 1] (a float, or a tensor of them)."""

    def horner(c):
        return c[0] + theta * (c[1] + theta * (c[2] + theta * (c[3] + theta * c[4])))

    return tuple(horner(QUARTIC[k]) for k in ("y0", "y1", "mid", "f0", "f1"))


def interpolate(
    ev: Evaluator,
    tab: ButcherTableau,
    y0: torch.Tensor,
    y1: torch.Tensor,
    ks: Sequence[torch.Tensor],
    f1: torch.Tensor,
    dt: float,
    theta: float,
) -> torch.Tensor:
    """4th-order dense output inside an accepted step (the method's own midpoint weights)."""
    if theta >= 1.0:
        return y1
    if ev.fused:  # y0 + dt * sum(q_j(theta) * k_j) in one pass
        terms: list[int | float] = []
        for j, (q1, q2, q3, q4) in tab.dense_poly:
            terms.append(j)
            terms.append(theta * (q1 + theta * (q2 + theta * (q3 + theta * q4))))
        if isinstance(ks, kernels.Stages) and ks.base is y0:
            stages = ks.extended(f1)
        else:
            stages = kernels.Stages(y0)
            for k in (*ks, f1):
                stages.append(k)
        return kernels.lincomb(stages, tuple(terms), dt)
    w_y0, w_y1, w_mid, w_f0, w_f1 = _interp_weights(theta)
    # y_mid = y0 + dt * sum(c_mid * k): fold it into one weighted sum
    c_mid = tab.c_mid or (0.0,) * tab.stages
    coeffs = [w_mid * cm for cm in c_mid]
    coeffs[0] += w_f0
    out = torch.add(y0 * (w_y0 + w_mid), y1, alpha=w_y1)
    return _combine(out, [*ks, f1], nonzero_terms([*coeffs, w_f1]), dt)


# --------------------------------------------------------------------------- graph size

GRAPH_WARNING_BYTES = 1 << 30
"""Direct backpropagation keeps every stage of every accepted step; past about this many bytes
of recorded graph a solve warns once and names the gradient methods that avoid it."""

_BYTES_PER_STEP_OVERHEAD = 32 << 10  # autograd's nodes of a step, measured on a 2-element state


def graph_warning_step(tab: ButcherTableau, y0: torch.Tensor, f0: torch.Tensor) -> int | None:
    """The accepted step at which a direct-backprop solve warns about its graph (``None``
    when no graph is recorded: ``f0`` does not require grad)."""
    if not f0.requires_grad:
        return None
    per_step = _BYTES_PER_STEP_OVERHEAD + 3 * tab.stages * y0.numel() * y0.element_size()
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
    """An accepted step, as kept by the checkpointed adjoint."""

    t: float
    dt: float
    y: torch.Tensor
    outputs: list[tuple[int, float]]  # (index into t, theta)
    last_node: float | None = None  # evaluation time of c == 1 stages before a jump
    f1_time: float | None = None  # where the end slope was evaluated when not the last stage


def solve_fixed(
    ev: Evaluator,
    tab: ButcherTableau,
    y0: torch.Tensor,
    t: Sequence[float],
    step_size: float | None,
    interp: str = "linear",
    record: list[StepRecord] | None = None,
    on_accept: Callable[[list[torch.Tensor], float], None] | None = None,
) -> list[torch.Tensor]:
    """Fixed-grid RK with linear (or cubic Hermite) interpolation at the output times, as
    torchdiffeq."""
    grid = fixed_grid(t, step_size)
    use_fused(ev, y0)
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
            warn_at = graph_warning_step(tab, y0, f0)
        y1, ks = rk_step(ev, tab, t0, y, f0, dt)
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
    f1 = ev(t1, y1)
    h = t1 - t0
    x = (s - t0) / h
    h00 = (1 + 2 * x) * (1 - x) * (1 - x)
    h10 = x * (1 - x) * (1 - x)
    h01 = x * x * (3 - 2 * x)
    h11 = x * x * (x - 1)
    return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1


# --------------------------------------------------------------------------- adaptive


@dataclasses.dataclass
class AdaptiveConfig:
    rtol: Any
    atol: Any
    norm: Callable[[torch.Tensor], torch.Tensor]
    first_step: float | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()


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


def _rms(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x)) / math.sqrt(max(x.numel(), 1))


def _scale(cfg: AdaptiveConfig, magnitude: torch.Tensor) -> torch.Tensor:
    """``atol + rtol * magnitude``, computed in place on ``magnitude`` (a fresh tensor)."""
    return magnitude.mul_(cfg.rtol).add_(cfg.atol)


def initial_step(
    ev: Evaluator,
    tab: ButcherTableau,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    cfg: AdaptiveConfig,
    fused_ratio: _FusedRatio | None = None,
) -> float:
    """torchdiffeq's (Hairer's) initial step heuristic; costs one evaluation.

    As torchdiffeq, the exponent is ``1 / order`` (the error estimate's order plus one)."""
    with torch.no_grad():
        if fused_ratio is not None:  # the same norms, scaled by atol + rtol * |y0|
            stages = kernels.Stages(y0, y0)
            stages.append(f0)
            d0 = fused_ratio(stages, y0, (0, 1.0), 1.0)
            d1 = fused_ratio(stages, y0, (1, 1.0), 1.0)
        else:
            scale = _scale(cfg, y0.abs())
            d0 = float(cfg.norm(y0 / scale))
            d1 = float(cfg.norm(f0 / scale))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, cfg.max_step)
        if fused_ratio is not None:
            f1 = ev(t0 + h0, _fused_sum(y0, f0, h0))
            stages = kernels.Stages(y0, f1)
            stages.append(f0)
            d2 = fused_ratio(stages, y0, (0, 1.0, 1, -1.0), 1.0) / h0
        else:
            f1 = ev(t0 + h0, y0 + h0 * f0)
            d2 = float(cfg.norm((f1 - f0) / scale)) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / tab.order)
    return min(100 * h0, h1)


def _next_step(cfg: AdaptiveConfig, dt: float, ratio: float, prev_ratio: float, order: int):
    if ratio == 0.0:
        factor = cfg.ifactor
    else:
        k = float(order)
        factor = cfg.safety * ratio ** (-(cfg.icoeff + cfg.pcoeff) / k)
        if cfg.pcoeff:
            factor *= prev_ratio ** (cfg.pcoeff / k)
        lower = 1.0 if ratio < 1.0 else cfg.dfactor
        factor = min(cfg.ifactor, max(factor, lower))
    return min(max(dt * factor, cfg.min_step), cfg.max_step)


def solve_adaptive(
    ev: Evaluator,
    tab: ButcherTableau,
    y0: torch.Tensor,
    t: Sequence[float],
    cfg: AdaptiveConfig,
    record: list[StepRecord] | None = None,
    on_accept: Callable[[list[torch.Tensor], float], None] | None = None,
) -> list[torch.Tensor]:
    """Adaptive RK with one step size for the whole state (torchdiffeq's behaviour).

    ``on_accept(ks, dt)`` is called with the stage derivatives of every accepted step (the
    continuous adjoint integrates its parameter adjoints by quadrature with it)."""
    stats = ev.stats
    stats.steps_accepted = stats.steps_accepted or 0
    stats.steps_rejected = stats.steps_rejected or 0
    t_now = t[0]
    y = y0
    fused_ratio = _FusedRatio.create(ev, cfg, y0)
    f0 = ev(t_now, y)
    warn_at = graph_warning_step(tab, y0, f0)
    n_accepted = 0
    callbacks = ev.callbacks
    if cfg.first_step is not None:
        dt = cfg.first_step
    else:
        dt = initial_step(ev, tab, t_now, y, f0, cfg, fused_ratio)
    if not math.isfinite(dt):  # the initial step heuristic met a non-finite derivative
        if not bool(torch.isfinite(f0).all()):
            raise NonFiniteStateError.dynamics_at_start(ev.sign * t_now)
        dt = cfg.min_step if cfg.min_step > 0 else cfg.max_step
    boundaries = sorted({*cfg.step_t, *cfg.jump_t})
    jumps = set(cfg.jump_t)
    b_idx = 0
    while b_idx < len(boundaries) and boundaries[b_idx] <= t_now:
        b_idx += 1
    out = [y0]
    j = 1
    n_steps = 0
    prev_ratio = 1.0
    t_end = t[-1]
    if fused_ratio is None:
        with torch.no_grad():
            abs0 = y0.abs()
    while j < len(t):
        if n_steps >= cfg.max_num_steps:
            raise TooManyStepsError(
                too_many_steps_message(
                    cfg.max_num_steps, f" near t ≈ {ev.sign * t_now:.6g}", False, cfg.rtol
                )
            )
        n_steps += 1
        # as torchdiffeq: every step starts within [min_step, max_step] (the first one too)
        dt = min(max(dt, cfg.min_step), cfg.max_step)
        # land exactly on step_t / jump_t boundaries
        hit = None
        if b_idx < len(boundaries) and t_now + dt >= boundaries[b_idx]:
            hit = boundaries[b_idx]
            dt = hit - t_now
        t1 = t_now + dt if hit is None else hit
        if t1 == t_now:
            raise StepSizeUnderflowError(step_underflow_message(f" near t ≈ {ev.sign * t_now:.6g}"))
        last_node = math.nextafter(t1, t_now) if hit is not None and hit in jumps else None
        if callbacks is not None:
            callbacks.step(t_now, y, dt)
        y1, ks = rk_step(ev, tab, t_now, y, f0, dt, last_node)
        if fused_ratio is not None:
            ratio = fused_ratio(ks, y1, tab.b_err_flat, dt)
        else:
            with torch.no_grad():
                err = error_estimate(tab, ks, dt)
                abs1 = y1.abs()
                scale = _scale(cfg, torch.maximum(abs0, abs1))
                ratio = float(cfg.norm(err.div_(scale)))
        if math.isnan(ratio):
            raise _nonfinite(ev, tab, t_now, dt, ks)
        if ratio <= 1.0 or dt <= cfg.min_step:  # a step at min_step is taken (torchdiffeq)
            stats.steps_accepted += 1
            n_accepted += 1
            if callbacks is not None:
                callbacks.accept(t_now, y, dt)
            if n_accepted == warn_at:
                warn_graph_size(n_accepted, ev.sign * t1)
            if on_accept is not None:
                on_accept(ks, dt)
            if fused_ratio is None:
                abs0 = abs1
            # the slope at the step's end, for its dense output: the last stage where the method
            # reuses it (evaluated just before t1 when the step ends at a jump), else f(t1, y1),
            # from the left of a jump
            f1_time = None
            if tab.reuses_last_stage:
                f1 = ks[-1]
            else:
                f1_time = t1 if last_node is None else last_node
                f1 = ev(f1_time, y1)
            # the next step starts from the right of a jump (torchdiffeq's perturb=NEXT)
            f_next = f1 if last_node is None else ev(math.nextafter(t1, t_end + 1.0), y1)
            rec = None
            if record is not None:
                rec = StepRecord(t_now, dt, y, [], last_node, f1_time)
            while j < len(t) and t[j] <= t1:
                theta = (t[j] - t_now) / dt
                out.append(interpolate(ev, tab, y, y1, ks, f1, dt, theta))
                if rec is not None:
                    rec.outputs.append((j, theta))
                j += 1
            if rec is not None:
                record.append(rec)
            y, f0, t_now = y1, f_next, t1
            if hit is not None:
                b_idx += 1
            dt_next = _next_step(cfg, dt, ratio, prev_ratio, tab.order)
            prev_ratio = max(ratio, 1e-4)
        else:
            stats.steps_rejected += 1
            if callbacks is not None:
                callbacks.reject(t_now, y, dt)
            dt_next = _next_step(cfg, dt, ratio, prev_ratio, tab.order)
        dt = dt_next
    return out


def _nonfinite(ev: Evaluator, tab: ButcherTableau, t: float, dt: float, ks) -> Exception:
    """Locate the first stage whose derivative is not finite (only on the failure path)."""
    for c, k in zip(tab.c, ks):
        if not bool(torch.isfinite(k).all()):
            return NonFiniteStateError(ev.sign * (t + c * dt))
    return NonFiniteStateError(
        ev.sign * t, detail=f" (within the step to t ≈ {ev.sign * (t + dt):.6g})"
    )


# --------------------------------------------------------------------------- per sample


def solve_adaptive_per_sample(
    ev: Evaluator,
    tab: ButcherTableau,
    y0: torch.Tensor,
    t: Sequence[float],
    cfg: AdaptiveConfig,
) -> list[torch.Tensor]:
    """Adaptive RK where every sample (first dimension) has its own time, step size and error
    test, so that its result and NFE do not depend on the rest of the batch.

    The dynamics receive ``t`` as a tensor of shape ``(batch,)``.
    """
    if y0.ndim == 0:
        raise InvalidArgumentError("batch_mode='per_sample' needs a state with a batch dimension")
    B = y0.shape[0]
    dev = y0.device
    tdt = torch.float64 if y0.dtype == torch.float64 or dev.type == "cpu" else torch.float32
    view = (B,) + (1,) * (y0.ndim - 1)
    n_out = len(t)
    times = torch.tensor(list(t), dtype=tdt, device=dev)
    stats = ev.stats
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    acc = torch.zeros(B, dtype=torch.long, device=dev)
    rej = torch.zeros(B, dtype=torch.long, device=dev)

    def norm(x):  # per-sample RMS
        return x.reshape(B, -1).pow(2).mean(dim=1).sqrt()

    def evaluate(s, y, active):
        nonlocal nfe
        nfe = nfe + active.long()
        return ev(s, y)

    active = torch.ones(B, dtype=torch.bool, device=dev)
    t_now = times[0].expand(B).clone()
    y = y0
    f0 = evaluate(t_now, y, active)
    with torch.no_grad():
        scale = _scale(cfg, y.abs())
        d0, d1 = norm(y / scale), norm(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        h0 = h0.to(tdt).clamp(max=cfg.max_step)
        f1 = evaluate(t_now + h0, y + h0.to(y.dtype).reshape(view) * f0, active)
        d2 = (norm((f1 - f0) / scale) / h0.to(y.dtype)).to(tdt)
        d1, d2 = d1.to(tdt), d2
        big = torch.maximum(d1, d2)
        h1 = torch.where(
            (d1 <= 1e-15) & (d2 <= 1e-15),
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / big.clamp(min=1e-300)) ** (1.0 / tab.order),
        )
        dt = (
            torch.minimum(100 * h0, h1)
            if cfg.first_step is None
            else torch.full_like(h0, cfg.first_step)
        ).clamp(min=cfg.min_step, max=cfg.max_step)
    out: list[torch.Tensor | None] = [y0] + [None] * (n_out - 1)
    nxt = torch.ones(B, dtype=torch.long, device=dev)  # next output index per sample
    n_iter = 0
    while bool(active.any()):
        if n_iter >= cfg.max_num_steps:
            raise TooManyStepsError(too_many_steps_message(cfg.max_num_steps, "", False, cfg.rtol))
        n_iter += 1
        dt_eff = torch.where(active, dt, torch.zeros_like(dt))
        dty = dt_eff.to(y.dtype).reshape(view)
        ks = [f0]
        yi = y
        for i in range(1, tab.stages):
            yi = _combine(y, ks, tab.a_terms[i], dty)
            ks.append(evaluate(t_now + tab.c[i] * dt_eff, yi, active))
        y1 = yi if tab.fsal else _combine(y, ks, tab.b_terms, dty)
        with torch.no_grad():
            err = _combine(torch.zeros_like(y), ks, tab.b_err_terms, dty)
            scale = _scale(cfg, torch.maximum(y.abs(), y1.abs()))
            ratio = norm(err / scale).to(tdt)
            bad = torch.isnan(ratio) & active
            if bool(bad.any()):
                raise NonFiniteStateError(float(ev.sign * t_now[bad][0]))
            accept = ((ratio <= 1.0) | (dt_eff <= cfg.min_step)) & active
            reject = (~accept) & active
            acc += accept.long()
            rej += reject.long()
            # next step size, per sample (integral controller with optional PI term)
            k = float(tab.order)
            factor = cfg.safety * ratio.clamp(min=1e-300) ** (-(cfg.icoeff + cfg.pcoeff) / k)
            lower = torch.where(
                ratio < 1.0, torch.ones_like(ratio), torch.full_like(ratio, cfg.dfactor)
            )
            factor = torch.minimum(
                torch.maximum(factor, lower), torch.full_like(ratio, cfg.ifactor)
            )
            factor = torch.where(ratio == 0, torch.full_like(ratio, cfg.ifactor), factor)
            dt_new = (dt * factor).clamp(min=cfg.min_step, max=cfg.max_step)
        f1 = ks[-1] if tab.reuses_last_stage else evaluate(t_now + dt_eff, y1, accept)
        t1 = t_now + dt_eff
        # outputs crossed by accepted samples
        while True:
            with torch.no_grad():
                idx = nxt.clamp(max=n_out - 1)
                due = accept & (nxt < n_out) & (times[idx] <= t1)
            if not bool(due.any()):
                break
            with torch.no_grad():
                theta = ((times[idx] - t_now) / dt_eff.clamp(min=1e-300)).clamp(0.0, 1.0)
            w = [x.to(y.dtype).reshape(view) for x in _interp_weights(theta)]
            w_y0, w_y1, w_mid, w_f0, w_f1 = w
            val = y * (w_y0 + w_mid) + y1 * w_y1 + (w_f1 * dty) * f1
            for jj, (kk, cm) in enumerate(zip(ks, tab.c_mid)):
                coeff = w_mid * cm + (w_f0 if jj == 0 else 0.0)
                val = val + (coeff * dty) * kk
            for j in sorted(set(idx[due].tolist())):
                m = (due & (idx == j)).reshape(view)
                prev = out[j] if out[j] is not None else torch.zeros_like(y0)
                out[j] = torch.where(m, val, prev)
            nxt = nxt + due.long()
        am = accept.reshape(view)
        y = torch.where(am, y1, y)
        f0 = torch.where(am, f1, f0)
        t_now = torch.where(accept, t1, t_now)
        dt = torch.where(active, dt_new, dt)
        active = nxt < n_out
    # the batch takes as many steps as its hardest sample: report that sample's counters
    hardest = int(torch.argmax(acc + rej))
    stats.steps_accepted = (stats.steps_accepted or 0) + int(acc[hardest])
    stats.steps_rejected = (stats.steps_rejected or 0) + int(rej[hardest])
    stats.nfe_per_sample = nfe.tolist()
    stats.steps_accepted_per_sample = acc.tolist()
    stats.steps_rejected_per_sample = rej.tolist()
    return out  # type: ignore[return-value]
