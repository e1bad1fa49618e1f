"""The native engine: explicit Runge–Kutta methods with three gradient methods and two batch
modes, behind the same seam as torchdiffeq."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from . import _kernels as kernels
from ._backends import AbstractBackend, SolveRequest, TorchdiffeqBackend, register_backend
from ._callbacks import StepCallbacks
from ._rk import (
    AdaptiveConfig,
    Evaluator,
    RMSNorm,
    StepRecord,
    _grid_interp,
    _rms,
    interpolate,
    rk_step,
    solve_adaptive,
    solve_adaptive_per_sample,
    solve_fixed,
)
from ._stats import SolveStats
from ._tableau import TABLEAUX, ButcherTableau
from ._validate import DEFAULT_MAX_NUM_STEPS

__all__ = ["GRADIENT_METHODS", "NativeBackend"]

logger = logging.getLogger(__name__)

GRADIENT_METHODS = ("direct", "adjoint", "checkpoint")
_ADAPTIVE_KEYS = frozenset(
    {
        "first_step", "safety", "ifactor", "dfactor", "pcoeff", "icoeff", "min_step",
        "max_step", "max_num_steps", "step_t", "jump_t", "norm", "dtype", "batch_mode",
    }
)  # fmt: skip
_FIXED_KEYS = frozenset({"step_size", "interp", "norm", "grid_constructor", "perturb"})
# adaptive options the per-sample lanes do not implement (rejected there, not ignored)
_NOT_PER_SAMPLE = ("step_t", "jump_t", "norm")
_FALL_THROUGH_KEYS = frozenset({"grid_constructor", "perturb"})


def _mixed_norm(sizes: Sequence[int]) -> Callable[[torch.Tensor], float]:
    """Max over components of their RMS (torchdiffeq's norm for tuple states)."""

    def norm(x: torch.Tensor) -> float:
        return max(_rms(p) for p in torch.split(x, list(sizes)))

    return norm


def _floats(values: Any, sign: float) -> tuple[float, ...]:
    if values is None:
        return ()
    return tuple(sign * float(v) for v in torch.as_tensor(values).reshape(-1).tolist())


@dataclasses.dataclass
class _Plan:
    """Everything the loops need, derived once from a request."""

    func: Callable
    tab: ButcherTableau
    sign: float
    times: list[float]  # internal, increasing
    shapes: list[torch.Size] | None
    dtype: torch.dtype
    device: torch.device
    cfg: AdaptiveConfig | None
    step_size: float | None
    interp: str
    per_sample: bool
    stats: SolveStats

    def evaluator(self, backward: bool = False) -> Evaluator:
        ev = Evaluator(
            self.func, self.sign, self.dtype, self.device, self.stats, self.shapes, backward
        )
        if not backward:  # a recomputation in a backward pass is no step of the solve
            ev.callbacks = StepCallbacks.of(
                self.func, self.sign, ev.unflatten, self.cfg is not None, self.tab.name
            )
        return ev

    def run(self, ev: Evaluator, y0: torch.Tensor, record: list[StepRecord] | None = None):
        if self.cfg is None:
            return solve_fixed(ev, self.tab, y0, self.times, self.step_size, self.interp, record)
        if self.per_sample:
            return solve_adaptive_per_sample(ev, self.tab, y0, self.times, self.cfg)
        return solve_adaptive(ev, self.tab, y0, self.times, self.cfg, record)


def _tolerance(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else value
    return float(value)


def _make_plan(
    func: Callable,
    y0: Any,
    t: torch.Tensor,
    method: str,
    options: dict[str, Any],
    rtol: Any,
    atol: Any,
    stats: SolveStats,
) -> _Plan:
    tab = TABLEAUX[method]
    tl = [float(x) for x in t.detach().cpu().tolist()]
    sign = -1.0 if len(tl) > 1 and tl[1] < tl[0] else 1.0
    times = [sign * x for x in tl]
    is_tuple = not isinstance(y0, torch.Tensor)
    shapes = [y.shape for y in y0] if is_tuple else None
    ref = y0[0] if is_tuple else y0
    norm_opt = options.get("norm")
    sizes = None if shapes is None else [math.prod(s) for s in shapes]
    if callable(norm_opt):
        if shapes is None:
            norm = norm_opt
        else:

            def norm(x, _n=norm_opt, _sizes=sizes, _shapes=shapes):
                parts = torch.split(x, _sizes)
                return _n(tuple(p.reshape(s) for p, s in zip(parts, _shapes, strict=True)))
    else:
        norm = RMSNorm() if sizes is None else _mixed_norm(sizes)
    cfg = None
    step_size = None
    if tab.adaptive:
        cfg = AdaptiveConfig(
            rtol=_tolerance(rtol),
            atol=_tolerance(atol),
            norm=norm,
            first_step=None if options.get("first_step") is None else float(options["first_step"]),
            safety=float(options.get("safety", 0.9)),
            ifactor=float(options.get("ifactor", 10.0)),
            dfactor=float(options.get("dfactor", 0.2)),
            pcoeff=float(options.get("pcoeff", 0.0)),
            icoeff=float(options.get("icoeff", 1.0)),
            min_step=float(options.get("min_step", 0.0)),
            max_step=float(options.get("max_step", math.inf)),
            max_num_steps=int(options.get("max_num_steps") or DEFAULT_MAX_NUM_STEPS),
            step_t=_floats(options.get("step_t"), sign),
            jump_t=_floats(options.get("jump_t"), sign),
        )
    elif options.get("step_size") is not None:
        step_size = float(options["step_size"])
    batch_mode = options.get("batch_mode", "joint")
    if batch_mode not in ("joint", "per_sample"):
        raise InvalidArgumentError(
            f"options['batch_mode'] must be 'joint' or 'per_sample', got {batch_mode!r}"
        )
    interp = options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise InvalidArgumentError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}")
    return _Plan(
        func=func,
        tab=tab,
        sign=sign,
        times=times,
        shapes=shapes,
        dtype=ref.dtype,
        device=ref.device,
        cfg=cfg,
        step_size=step_size,
        interp=interp,
        per_sample=batch_mode == "per_sample",
        stats=stats,
    )


def _flat(y0: Any) -> torch.Tensor:
    if isinstance(y0, torch.Tensor):
        return y0
    return torch.cat([y.reshape(-1) for y in y0])


def _unflat_solution(sol: torch.Tensor, shapes: list[torch.Size] | None) -> Any:
    if shapes is None:
        return sol
    parts = torch.split(sol, [math.prod(s) for s in shapes], dim=1)
    return tuple(p.reshape(sol.shape[0], *s) for p, s in zip(parts, shapes, strict=True))


# --------------------------------------------------------------------------- checkpointing


def _refuse_higher_order(where: str) -> None:
    """Backward passes run without grad unless a higher-order graph was asked for
    (``create_graph=True``); these gradients are not differentiable, so say so instead of
    returning a wrong second derivative."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"second and higher derivatives (create_graph=True) are not available through "
            f"{where}: its backward pass is not itself differentiable. Use odeint with "
            "gradient='direct' (the default) for higher-order gradients"
        )


class _Checkpointed(torch.autograd.Function):
    """Exact gradient of the discrete solve; keeps only the accepted states and recomputes each
    step under autograd in the backward pass."""

    @staticmethod
    def forward(ctx, plan: _Plan, params: tuple[torch.Tensor, ...], y0, *param_tensors):
        records: list[StepRecord] = []
        with torch.no_grad():
            outs = plan.run(plan.evaluator(), y0, records)
        ctx.plan, ctx.params, ctx.records = plan, params, records
        return torch.stack(outs)

    @staticmethod
    def backward(ctx, grad_sol):
        _refuse_higher_order("gradient='checkpoint'")
        plan, params, records = ctx.plan, ctx.params, ctx.records
        ev = plan.evaluator(backward=True)
        tab = plan.tab
        adj = torch.zeros_like(grad_sol[0])
        p_grads: list[torch.Tensor | None] = [None] * len(params)
        for rec in reversed(records):
            with torch.enable_grad():
                y = rec.y.detach().requires_grad_(True)
                f0 = ev(rec.t, y)
                y1, ks = rk_step(ev, tab, rec.t, y, f0, rec.dt, rec.last_node)
                outs, g_outs = [y1], [adj]
                if rec.outputs:
                    t1 = rec.t + rec.dt
                    if plan.cfg is None:
                        for j, theta in rec.outputs:
                            outs.append(
                                _grid_interp(
                                    ev, plan.interp, rec.t, t1, y, y1, f0, rec.t + theta * rec.dt
                                )
                            )
                            g_outs.append(grad_sol[j])
                    else:
                        f1 = ks[-1] if rec.f1_time is None else ev(rec.f1_time, y1)
                        for j, theta in rec.outputs:
                            outs.append(interpolate(ev, tab, y, y1, ks, f1, rec.dt, theta))
                            g_outs.append(grad_sol[j])
                grads = torch.autograd.grad(outs, (y, *params), g_outs, allow_unused=True)
            adj = grads[0] if grads[0] is not None else torch.zeros_like(adj)
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    p_grads[i] = g if p_grads[i] is None else p_grads[i] + g
        adj = adj + grad_sol[0]
        return (None, None, adj, *p_grads)


# --------------------------------------------------------------------------- continuous adjoint


@dataclasses.dataclass
class _AdjointSpec:
    tab: ButcherTableau
    cfg: AdaptiveConfig | None
    step_size: float | None
    seminorm: bool
    user_norm: Callable | None


def _augmented_parts(
    n: int,
    shapes: list[torch.Size] | None,
    params,
    sol: torch.Tensor,
    quadrature_sums: list[torch.Tensor],
) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The flat augmented state of the continuous adjoint as torchdiffeq presents it to a norm
    or a callback: ``(t adjoint, y, adjoint of y, *parameter adjoints)``, with ``y`` and its
    adjoint split into their parts for a tuple state. The adjoint with respect to ``t`` is not
    integrated here (gradients with respect to ``t`` go to torchdiffeq), so it is a zero
    scalar. Where the parameter adjoints are integrated by quadrature (the seminorm) they are
    not part of the state: their running sums stand in."""
    zero_t = sol.new_zeros(())
    state_shape = sol.shape[1:]
    p_shapes = [p.shape for p in params]
    p_sizes = [p.numel() for p in params]

    def parts(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if shapes is None:
            return (x.view(state_shape),)
        pieces = torch.split(x, [math.prod(s) for s in shapes])
        return tuple(p.view(s) for p, s in zip(pieces, shapes, strict=True))

    def augmented(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if z.numel() == 2 * n:
            g = tuple(quadrature_sums)
        else:
            grads = torch.split(z[2 * n :], p_sizes)
            g = tuple(x.view(s) for x, s in zip(grads, p_shapes, strict=True))
        return (zero_t, *parts(z[:n]), *parts(z[n : 2 * n]), *g)

    return augmented


class _ContinuousAdjoint(torch.autograd.Function):
    """Backsolve adjoint: O(1) memory in the number of steps."""

    @staticmethod
    def forward(ctx, plan: _Plan, spec: _AdjointSpec, params, y0, *param_tensors):
        with torch.no_grad():
            sol = torch.stack(plan.run(plan.evaluator(), y0))
        ctx.plan, ctx.spec, ctx.params = plan, spec, params
        ctx.save_for_backward(sol)
        return sol

    @staticmethod
    def backward(ctx, grad_sol):
        _refuse_higher_order("odeint_adjoint")
        (sol,) = ctx.saved_tensors
        plan, spec, params = ctx.plan, ctx.spec, ctx.params
        stats = plan.stats
        user_ev = plan.evaluator(backward=True)
        user_ev.sign = 1.0  # the augmented dynamics call f in user time
        shape = sol.shape[1:]
        n = math.prod(shape)
        p_sizes = [p.numel() for p in params]

        # With the seminorm the parameter adjoints g never control the step size and never
        # feed back into the dynamics, so they are not part of the integrated state: each
        # accepted step adds dt * sum(b_i * k_i^g) (quadrature on the same stages).
        quadrature = spec.user_norm is None and spec.seminorm
        # quadrature: the parameter adjoints of each stage, by id of the stage's derivative
        side: dict[int, list[torch.Tensor]] = {}
        p_total = sum(p_sizes)

        def aug(s, z, sign):
            """Internal-time derivative of [y, a] (and of g unless by quadrature), s = sign*t:
            sign * [f, -aᵀ∂f/∂y, -aᵀ∂f/∂θ]."""
            y = z[:n].view(shape)
            a = z[n : 2 * n].view(shape)
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                fy = user_ev(s * sign, y_)
                if fy.requires_grad:
                    vjps = torch.autograd.grad(
                        fy, (y_, *params), a if sign < 0 else -a, allow_unused=True
                    )
                else:  # f depends on neither y nor a parameter (dy/dt = g(t)): zero products
                    vjps = (None,) * (1 + len(params))
            v_y = torch.zeros_like(y) if vjps[0] is None else vjps[0]
            f_part = fy.detach().neg() if sign < 0 else fy.detach()
            g = [
                torch.zeros_like(x) if v is None else v
                for v, x in zip(vjps[1:], params, strict=True)
            ]
            if quadrature:
                out = torch.cat((f_part.reshape(-1), v_y.reshape(-1)))
                side[id(out)] = [x.contiguous() for x in g]
                return out
            return torch.cat([f_part.reshape(-1), v_y.reshape(-1), *(x.reshape(-1) for x in g)])

        acc_p = [torch.zeros_like(p) for p in params]  # quadrature sums, one per parameter
        augmented = _augmented_parts(n, plan.shapes, params, sol, acc_p)
        if spec.user_norm is not None:
            user_norm = spec.user_norm

            def norm(z: torch.Tensor) -> Any:  # called as torchdiffeq calls it
                return user_norm(augmented(z))

        elif spec.seminorm:
            norm = RMSNorm(segment=n, count=2)
        else:
            norm = _mixed_norm([n, n, p_total]) if p_sizes else _mixed_norm([n, n])
        cfg = None
        if spec.cfg is not None:
            cfg = dataclasses.replace(spec.cfg, norm=norm, step_t=(), jump_t=())
        user_times = [plan.sign * s for s in plan.times]
        adj_y = grad_sol[-1].reshape(-1)
        adj_p = sol.new_zeros(p_total)
        tmp = SolveStats()
        b_terms = spec.tab.b_terms
        # each sum in one pass of the fused kernel, one per parameter
        fused_acc = bool(acc_p) and all(kernels.usable(x) for x in acc_p)

        def accumulate(ks, dt):
            if fused_acc:
                stage_grads = [side[id(k)] for k in ks]
                kernels.accumulate_(acc_p, stage_grads, spec.tab.b_flat, dt)
            elif acc_p:
                for j, w in b_terms:
                    torch._foreach_add_(acc_p, side[id(ks[j])], alpha=w * dt)
            last = side.get(id(ks[-1]))
            side.clear()
            if last is not None and spec.tab.reuses_last_stage:
                side[id(ks[-1])] = last

        for i in range(len(user_times) - 1, 0, -1):
            t_hi, t_lo = user_times[i], user_times[i - 1]
            sign = 1.0 if t_lo > t_hi else -1.0
            ev = Evaluator(
                functools.partial(aug, sign=sign),
                1.0,
                plan.dtype,
                plan.device,
                tmp,
                None,
                count=False,
                float_time=True,
            )
            ev.callbacks = StepCallbacks.of(
                plan.func, sign, augmented, cfg is not None, spec.tab.name, adjoint=True
            )
            internal = [sign * t_hi, sign * t_lo]
            parts = (
                [sol[i].reshape(-1), adj_y] if quadrature else [sol[i].reshape(-1), adj_y, adj_p]
            )
            z0 = torch.cat(parts)
            hook = accumulate if quadrature else None
            if cfg is None:
                z = solve_fixed(ev, spec.tab, z0, internal, spec.step_size, on_accept=hook)[-1]
            else:
                # the quadrature needs whole steps: land exactly on the end of the interval
                seg_cfg = dataclasses.replace(cfg, step_t=(internal[1],)) if quadrature else cfg
                z = solve_adaptive(ev, spec.tab, z0, internal, seg_cfg, on_accept=hook)[-1]
            side.clear()
            adj_y = z[n : 2 * n] + grad_sol[i - 1].reshape(-1)
            if not quadrature:
                adj_p = z[2 * n :]
        stats.steps_accepted_backward = (stats.steps_accepted_backward or 0) + (
            tmp.steps_accepted or 0
        )
        if tmp.steps_rejected is not None:
            stats.steps_rejected_backward = (stats.steps_rejected_backward or 0) + (
                tmp.steps_rejected
            )
        if quadrature:
            grads = acc_p
        else:
            grads = [g.view(p.shape) for g, p in zip(torch.split(adj_p, p_sizes), params)]
        return (None, None, None, adj_y.reshape(shape), *grads)


# --------------------------------------------------------------------------- backend


class NativeBackend(AbstractBackend):
    """neuralode's own engine. Methods or features it does not implement (Adams methods,
    scipy, events, gradients with respect to ``t``) are delegated to torchdiffeq unchanged."""

    name = "native"

    def __init__(self) -> None:
        self._fallback = TorchdiffeqBackend()
        self._methods: frozenset[str] | None = None

    @property
    def methods(self) -> frozenset[str]:
        if self._methods is None:
            self._methods = self._fallback.methods | frozenset(TABLEAUX)
        return self._methods

    def valid_options(self, method: str) -> frozenset[str]:
        if method in TABLEAUX:
            return _ADAPTIVE_KEYS if TABLEAUX[method].adaptive else _FIXED_KEYS
        return self._fallback.valid_options(method)

    def valid_adjoint_options(self, method: str) -> frozenset[str]:
        return self.valid_options(method) - {"batch_mode"}

    def _delegate(self, r: SolveRequest) -> str | None:
        if r.method not in TABLEAUX:
            return f"method {r.method!r} is not native"
        if r.event_fn is not None:
            return "event handling"
        if r.t.requires_grad:
            return "gradient with respect to t"
        ys = r.y0 if isinstance(r.y0, tuple) else (r.y0,)
        if any(y.is_complex() for y in ys):
            return "complex state"
        if _FALL_THROUGH_KEYS & set(r.options):
            return "grid_constructor/perturb options"
        for tol in (r.rtol, r.atol):
            if isinstance(tol, torch.Tensor) and tol.numel() > 1 and isinstance(r.y0, tuple):
                return "per-element tolerances with a tuple state"
        if r.adjoint and (r.adjoint_method or r.method) not in TABLEAUX:
            return f"adjoint method {r.adjoint_method!r} is not native"
        return None

    def solve(self, request: SolveRequest, stats: SolveStats) -> Any:
        reason = self._delegate(request)
        if reason is not None:
            if request.gradient == "checkpoint":
                raise InvalidArgumentError(
                    f"gradient='checkpoint' is not available here ({reason}); use "
                    "gradient='direct' or odeint_adjoint"
                )
            if request.options.get("batch_mode", "joint") != "joint":
                raise InvalidArgumentError(
                    f"batch_mode='per_sample' is not available here ({reason})"
                )
            logger.debug("native backend delegates to torchdiffeq: %s", reason)
            request.options = {k: v for k, v in request.options.items() if k != "batch_mode"}
            stats.backend = self._fallback.name
            return self._fallback.solve(request, stats)
        r = request
        plan = _make_plan(r.func, r.y0, r.t, r.method, r.options, r.rtol, r.atol, stats)
        y0 = _flat(r.y0)
        gradient = "adjoint" if r.adjoint else r.gradient
        if plan.per_sample and gradient != "direct":
            raise InvalidArgumentError(
                "batch_mode='per_sample' supports direct backpropagation only; use odeint "
                "without gradient='checkpoint', or batch_mode='joint'"
            )
        if plan.per_sample and plan.cfg is None:
            raise InvalidArgumentError(
                "batch_mode='per_sample' needs an adaptive method such as dopri5"
            )
        if plan.per_sample and isinstance(r.y0, tuple):
            raise InvalidArgumentError("batch_mode='per_sample' needs a tensor state, not a tuple")
        if plan.per_sample:
            ignored = sorted(k for k in _NOT_PER_SAMPLE if r.options.get(k) is not None)
            if float(r.options.get("pcoeff") or 0.0) != 0.0:
                ignored.append("pcoeff")
            if ignored:
                raise InvalidArgumentError(
                    f"batch_mode='per_sample' does not support options {ignored}: every sample "
                    "has its own steps, so step_t/jump_t boundaries, a custom norm and the PI "
                    "term of the step-size controller are not applied per sample. Use "
                    "batch_mode='joint' (the default) with these options"
                )
        params = self._params(r, gradient)
        needs_grad = torch.is_grad_enabled() and (
            y0.requires_grad or any(p.requires_grad for p in params)
        )
        if gradient == "direct":
            sol = torch.stack(plan.run(plan.evaluator(), y0))
        elif not needs_grad:
            # nothing to differentiate (e.g. adjoint_params=() and a y0 without grad): record no
            # graph, so that no gradient reaches parameters left out, as in torchdiffeq
            with torch.no_grad():
                sol = torch.stack(plan.run(plan.evaluator(), y0))
        elif gradient == "checkpoint":
            sol = _Checkpointed.apply(plan, params, y0, *params)
        else:
            sol = _ContinuousAdjoint.apply(plan, self._adjoint_spec(r, plan), params, y0, *params)
        return _unflat_solution(sol, plan.shapes)

    @staticmethod
    def _params(r: SolveRequest, gradient: str) -> tuple[torch.Tensor, ...]:
        if gradient == "direct":
            return ()
        if r.adjoint_params is not None:
            params = r.adjoint_params
        elif isinstance(r.func, nn.Module):
            params = tuple(r.func.parameters())
        else:
            raise InvalidArgumentError(
                "gradient='checkpoint' needs func to be an nn.Module so that its parameters can "
                "be found"
            )
        return tuple(p for p in params if p.requires_grad)

    @staticmethod
    def _adjoint_spec(r: SolveRequest, plan: _Plan) -> _AdjointSpec:
        method = r.adjoint_method or r.method
        opts = dict(r.adjoint_options if r.adjoint_options is not None else r.options)
        norm = opts.pop("norm", "seminorm") if r.adjoint_options is not None else "seminorm"
        opts.pop("batch_mode", None)
        rtol = r.adjoint_rtol if r.adjoint_rtol is not None else r.rtol
        atol = r.adjoint_atol if r.adjoint_atol is not None else r.atol
        tmp = _make_plan(
            r.func, torch.zeros(1, dtype=plan.dtype), r.t[:2], method, opts, rtol, atol, plan.stats
        )
        return _AdjointSpec(
            tab=tmp.tab,
            cfg=tmp.cfg,
            step_size=tmp.step_size,
            seminorm=norm == "seminorm",
            user_norm=norm if callable(norm) else None,
        )


register_backend(NativeBackend())
