"""Gradient methods: how a solve's gradient is computed.

* :class:`Direct` backpropagates through the solver's operations (any method, any lane);
* :class:`Checkpoint` keeps the accepted states and recomputes each step under autograd in
  the backward pass (the exact gradient of the discrete solve, memory ∝ steps × state);
* :class:`ContinuousAdjoint` solves the adjoint equations backwards in time (memory independent
  of the number of steps).

Each is a class with one method, ``solve(plan, y0, params)``, registered by name in
:data:`GRADIENT_METHODS`; the engine looks the name up once.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from . import _kernels as kernels
from ._callbacks import StepCallbacks
from ._evaluator import Evaluator
from ._loops import (
    AdaptiveConfig,
    RMSNorm,
    StepRecord,
    recompute_step,
    solve_adaptive,
    solve_fixed,
)
from ._methods import Method
from ._plan import Plan, mixed_norm
from ._stats import SolveStats

__all__ = [
    "GRADIENT_METHODS",
    "AdjointSpec",
    "Checkpoint",
    "ContinuousAdjoint",
    "Direct",
    "GradientMethod",
    "register_gradient_method",
]


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
    def forward(ctx, plan: Plan, params: tuple[torch.Tensor, ...], y0, *param_tensors):
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
        stepper = plan.method.stepper(ev, kernels.TorchKernels(None, None, None))
        fixed_interp = plan.interp if plan.cfg is None else None
        adj = torch.zeros_like(grad_sol[0])
        adj_f0: torch.Tensor | None = None  # of the first slope of the step after this one
        p_grads: list[torch.Tensor | None] = [None] * len(params)
        for rec in reversed(records):
            # the next step started from this step's last stage (an implicit method's slope)
            chained = adj_f0 is not None
            with torch.enable_grad():
                y = rec.y.detach().requires_grad_(True)
                f0 = None if rec.f0 is None else rec.f0.detach().requires_grad_(True)
                outs, idx = recompute_step(stepper, rec, y, fixed_interp, f0, chained)
                g_outs = [adj if j == -1 else adj_f0 if j == -2 else grad_sol[j] for j in idx]
                inputs = (y, *params) if f0 is None else (y, f0, *params)
                grads = list(torch.autograd.grad(outs, inputs, g_outs, allow_unused=True))
            adj = grads.pop(0)
            adj = torch.zeros_like(rec.y) if adj is None else adj
            adj_f0 = None if f0 is None else grads.pop(0)
            if f0 is not None and adj_f0 is None:
                adj_f0 = torch.zeros_like(f0)
            for i, g in enumerate(grads):
                if g is not None:
                    p_grads[i] = g if p_grads[i] is None else p_grads[i] + g
        adj = adj + grad_sol[0]
        return (None, None, adj, *p_grads)


# --------------------------------------------------------------------------- continuous adjoint


@dataclasses.dataclass
class AdjointSpec:
    """How the adjoint's backward solve is solved: its method, adaptive configuration (or fixed
    step size) and norm."""

    method: Method
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
    def forward(ctx, plan: Plan, spec: AdjointSpec, params, y0, *param_tensors):
        # stiff dynamics (an implicit method) cannot be solved backwards in time: a decaying
        # mode grows there as fast as it decays here. The state then comes from the forward
        # steps kept (memory ∝ steps × state) and only the adjoints are solved backwards.
        records = [] if plan.method.implicit else None
        with torch.no_grad():
            sol = torch.stack(plan.run(plan.evaluator(), y0, records))
        ctx.plan, ctx.spec, ctx.params = plan, spec, params
        ctx.trajectory = None if records is None else _Trajectory(plan, records, sol[-1])
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
        # (an implicit method's stages are not evaluations of the dynamics: it integrates them)
        quadrature = spec.user_norm is None and spec.seminorm and not spec.method.implicit
        # quadrature: the parameter adjoints of each evaluation since the last accepted step
        side = _SideOutputs()
        p_total = sum(p_sizes)

        trajectory = ctx.trajectory

        def aug(s, z, sign):
            """Internal-time derivative of [y, a] (and of g unless by quadrature), s = sign*t:
            sign * [f, -aᵀ∂f/∂y, -aᵀ∂f/∂θ]. With a forward trajectory kept, y is read from it
            and not integrated (its derivative is zero)."""
            y = z[:n].view(shape) if trajectory is None else trajectory(s * sign)
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
            if trajectory is not None:
                f_part = torch.zeros_like(f_part)
            g = [
                torch.zeros_like(x) if v is None else v
                for v, x in zip(vjps[1:], params, strict=True)
            ]
            if quadrature:
                out = torch.cat((f_part.reshape(-1), v_y.reshape(-1)))
                side.add(out, [x.contiguous() for x in g])
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
            norm = mixed_norm([n, n, p_total]) if p_sizes else mixed_norm([n, n])
        cfg = None
        if spec.cfg is not None:
            cfg = dataclasses.replace(spec.cfg, norm=norm, step_t=(), jump_t=())
        user_times = [plan.sign * s for s in plan.times]
        adj_y = grad_sol[-1].reshape(-1)
        adj_p = sol.new_zeros(p_total)
        tmp = SolveStats()
        # each sum in one pass of the fused kernels where every parameter allows it
        fused_acc = bool(acc_p) and all(kernels.usable(x) for x in acc_p)
        acc_kernels = (
            kernels.select(acc_p[0]) if fused_acc else kernels.TorchKernels(None, None, None)
        )
        tab = getattr(spec.method, "tableau", None)

        def accumulate(ks, dt):
            if acc_p:
                acc_kernels.accumulate_(acc_p, [side.of(k) for k in ks], tab, dt)
            # the next step starts from the last stage where the method reuses it
            side.keep(ks[-1] if spec.method.reuses_last_stage else None)

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
                plan.func, sign, augmented, cfg is not None, spec.method.name, adjoint=True
            )
            ev.coupled = 2 * n  # the parameter adjoints do not feed back into the dynamics
            internal = [sign * t_hi, sign * t_lo]
            parts = (
                [sol[i].reshape(-1), adj_y] if quadrature else [sol[i].reshape(-1), adj_y, adj_p]
            )
            z0 = torch.cat(parts)
            hook = accumulate if quadrature else None
            if cfg is None:
                z = solve_fixed(ev, spec.method, z0, internal, spec.step_size, on_accept=hook)[-1]
            else:
                # the quadrature needs whole steps: land exactly on the end of the interval
                seg_cfg = dataclasses.replace(cfg, step_t=(internal[1],)) if quadrature else cfg
                if trajectory is not None:  # no step spans more than a forward step
                    knots = tuple(sign * plan.sign * k for k in trajectory.knots)
                    seg_cfg = dataclasses.replace(cfg, step_t=knots)
                z = solve_adaptive(ev, spec.method, z0, internal, seg_cfg, on_accept=hook)[-1]
            side.keep(None)
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


class _SideOutputs:
    """What the augmented dynamics computed besides their result: the parameter adjoints of
    each evaluation, paired with the derivative it returned (held, so that the pairing is by
    the tensor itself). The quadrature looks up a step's stages here."""

    __slots__ = ("_pairs",)

    def __init__(self) -> None:
        self._pairs: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    def add(self, out: torch.Tensor, parts: list[torch.Tensor]) -> None:
        self._pairs.append((out, parts))

    def of(self, k: torch.Tensor) -> list[torch.Tensor]:
        for out, parts in reversed(self._pairs):
            if out is k:
                return parts
        raise RuntimeError(
            "internal error: a stage of the adjoint's quadrature is no evaluation of the "
            "augmented dynamics"
        )

    def keep(self, k: torch.Tensor | None) -> None:
        """Forget every evaluation but that of ``k`` (the next step's first stage)."""
        self._pairs = [pair for pair in self._pairs if k is not None and pair[0] is k][-1:]


class _Trajectory:
    """The forward solution between its accepted steps, for the adjoint of a stiff solve.

    The state at a time inside forward step ``k`` is one step of the forward method from that
    step's start (with the Newton matrix the forward step used), so it is as accurate as the
    forward solve; interpolating the steps' ends instead lost a factor of a thousand in the
    parameter gradient with kvaerno5's long steps. Each time is solved once (the backward
    Newton iteration asks for the same stage times again and again); the evaluations count
    as backward ones."""

    _CACHE = 64  # times kept: every stage time of a few backward steps

    def __init__(self, plan: Plan, records: list[StepRecord], y_end: torch.Tensor) -> None:
        self.sign = plan.sign
        self.records = records
        self.knots = [r.t for r in records] + [records[-1].t + records[-1].dt]
        self.states = [r.y for r in records] + [y_end]
        self.ev = plan.evaluator(backward=True)
        self.stepper = plan.method.stepper(self.ev, kernels.TorchKernels(None, None, None))
        self._cache: dict[float, torch.Tensor] = {}

    def __call__(self, t: float) -> torch.Tensor:
        """The state at user time ``t``."""
        s = self.sign * t
        k = bisect.bisect_right(self.knots, s) - 1
        if 0 <= k < len(self.knots) and s == self.knots[k]:
            return self.states[k]
        k = min(max(k, 0), len(self.records) - 1)
        y = self._cache.get(s)
        if y is None:
            rec = self.records[k]
            with torch.no_grad():
                self.stepper.restore(rec.state)
                f0 = self.ev(rec.t, rec.y) if rec.f0 is None else rec.f0
                y, _ = self.stepper.step(rec.t, rec.y, f0, s - rec.t)
                if self.stepper.failed:  # Newton did not converge: the cubic through the ends
                    end, f_end = self.states[k + 1], self.ev(rec.t + rec.dt, self.states[k + 1])
                    y = kernels.hermite(rec.y, end, f0, f_end, rec.dt, (s - rec.t) / rec.dt)
            if len(self._cache) >= self._CACHE:
                self._cache.clear()
            self._cache[s] = y
        return y


# --------------------------------------------------------------------------- the registry


class GradientMethod(abc.ABC):
    """How gradients flow through a solve."""

    name: str
    needs_params = True  # whether it must be told the parameters to differentiate

    @abc.abstractmethod
    def solve(
        self, plan: Plan, y0: torch.Tensor, params: tuple[torch.Tensor, ...], spec: Any = None
    ) -> torch.Tensor:
        """The stacked solution at the plan's times, differentiable by this method."""


class Direct(GradientMethod):
    name = "direct"
    needs_params = False

    def solve(self, plan, y0, params, spec=None):
        return torch.stack(plan.run(plan.evaluator(), y0))


class Checkpoint(GradientMethod):
    name = "checkpoint"

    def solve(self, plan, y0, params, spec=None):
        return _Checkpointed.apply(plan, params, y0, *params)


class ContinuousAdjoint(GradientMethod):
    name = "adjoint"

    def solve(self, plan, y0, params, spec=None):
        return _ContinuousAdjoint.apply(plan, spec, params, y0, *params)


GRADIENT_METHODS: dict[str, GradientMethod] = {}


def register_gradient_method(method: GradientMethod) -> GradientMethod:
    GRADIENT_METHODS[method.name] = method
    return method


for _m in (Direct(), ContinuousAdjoint(), Checkpoint()):
    register_gradient_method(_m)
