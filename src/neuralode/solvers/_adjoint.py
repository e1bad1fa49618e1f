"""The continuous adjoint (backsolve) gradient: the adjoint equations solved backwards in time,
memory independent of the number of steps (Chen et al. 2018), with torchdiffeq's semantics
where :func:`~neuralode.odeint_adjoint` asks for them.

With the seminorm the parameter adjoints never control the step size and never feed back into
the dynamics, so they are integrated by quadrature on the backward solve's own stages instead of
as part of its state. A stiff state (an implicit method) cannot be solved backwards in time: the
forward steps are kept and only the adjoints are solved backwards.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _kernels as kernels
from ._checkpoint import refuse_higher_order
from ._controller import AbstractStepSizeController
from ._evaluator import Evaluator, StepCallbacks
from ._kernels import rms
from ._loops import AdaptiveConfig, RMSNorm, StepRecord, solve_adaptive, solve_fixed
from ._methods import Method
from ._solve import GradientMethod, Plan, adaptive_config, norm_for, register_gradient_method
from ._stats import SolveStats

__all__ = ["Adjoint"]


class Adjoint(GradientMethod):
    """Gradients by the continuous adjoint: the adjoint equations solved backwards in time
    (memory independent of the number of steps; the gradient of the exact ODE solution, to the
    backward solve's tolerance).

    Args:
        method: the method of the backward solve (default: the forward one).
        controller: its step-size controller (default: the forward one — its tolerances, step
            budget, ``step_t`` and ``jump_t`` too).
        seminorm: leave the parameter adjoints out of the backward error norm (fewer steps, the
            same accuracy of the state; Kidger et al. 2021); they are then integrated by
            quadrature on the same stages. ``None`` (the default): the seminorm, except after an
            implicit forward method, whose parameter adjoints need the full norm.
        norm: a norm of one's own on the augmented state ``(t adjoint, y, adjoint of y,
            *parameter adjoints)`` (torchdiffeq's convention); replaces ``seminorm``.
        params: the tensors to differentiate (default: the parameters of ``func``, an
            ``nn.Module``, that require grad).
    """

    name = "adjoint"

    def __init__(
        self,
        method: Method | None = None,
        controller: AbstractStepSizeController | None = None,
        seminorm: bool | None = None,
        norm: Callable[[tuple[torch.Tensor, ...]], Any] | None = None,
        params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if method is not None and not isinstance(method, Method):
            raise InvalidTypeError(f"method must be a Method object or None, got {method!r}")
        if controller is not None and not isinstance(controller, AbstractStepSizeController):
            raise InvalidTypeError(
                f"controller must be a step-size controller object or None, got {controller!r}"
            )
        if seminorm is not None and not isinstance(seminorm, bool):
            raise InvalidTypeError(f"seminorm must be True, False or None, got {seminorm!r}")
        if norm is not None and not callable(norm):
            raise InvalidTypeError(f"norm must be callable or None, got {norm!r}")
        if params is not None:
            params = tuple(params)
            for i, p in enumerate(params):
                if not isinstance(p, torch.Tensor):
                    raise InvalidTypeError(
                        f"params[{i}] must be a tensor, got {type(p).__name__}; pass e.g. "
                        "params=tuple(model.parameters())"
                    )
        self.method, self.controller = method, controller
        self.seminorm, self.norm, self.params = seminorm, norm, params
        # what grad_fn.adjoint_options shows besides the norm (odeint_adjoint's options)
        self.options_view: dict[str, Any] = {}
        self.flat_norm = False  # norm takes the state flat (torchdiffeq's convention for tuples)

    def params_of(self, func: Any) -> tuple[torch.Tensor, ...]:
        if self.params is not None:
            return tuple(p for p in self.params if p.requires_grad)
        return super().params_of(func)

    def solve(self, plan: Plan, y0: torch.Tensor, params: tuple[torch.Tensor, ...]) -> Any:
        return _ContinuousAdjoint.apply(plan, self, params, y0, *params)

    def __repr__(self) -> str:
        return (
            f"Adjoint(method={self.method!r}, controller={self.controller!r}, "
            f"seminorm={self.seminorm!r}, norm={self.norm!r})"
        )


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


def _state_norm(plan: Plan) -> Callable[[torch.Tensor], Any]:
    """The forward solve's norm of a flat state (torchdiffeq's ``state_norm``)."""
    return norm_for(getattr(plan.controller, "norm", None), plan.shapes)


class _ExposedNorm:
    """The default adjoint norm as ``grad_fn.adjoint_options["norm"]`` shows it (torchdiffeq's
    ``default_adjoint_norm``, or its seminorm): ``max(|t adjoint|, ‖y‖, ‖adjoint of y‖,
    *RMS of each parameter adjoint)`` on the augmented tuple, ``y`` flat for a tuple state. The
    backward pass computes the same norm in its own, faster way unless this object was
    replaced."""

    def __init__(self, state_norm: Callable, seminorm: bool, shape: torch.Size | None) -> None:
        self.state_norm, self.seminorm, self.shape = state_norm, seminorm, shape

    def __call__(self, tensor_tuple: tuple[torch.Tensor, ...]) -> torch.Tensor:
        t, y, adj_y, *adj_params = tensor_tuple
        parts = [t.detach().abs().reshape(()).double()]
        for x in (y, adj_y):
            parts.append(torch.as_tensor(float(self.state_norm(x.detach())), dtype=torch.float64))
        if not self.seminorm:
            parts += [p.detach().double().pow(2).mean().sqrt() for p in adj_params if p.numel()]
        return torch.stack(parts).max().to(y.dtype)


def _augmented_norm(
    state_norm: Callable, shape: torch.Size, p_sizes: Sequence[int], full: bool
) -> Callable:
    """The same norm on the flat augmented state ``[y, a, (parameter adjoints)]`` (``shape``:
    the internal state's, flat for a tuple state)."""
    n = math.prod(shape)
    bounds = []
    start = 2 * n
    for size in p_sizes if full else ():
        if size:
            bounds.append((start, start + size))
        start += size

    def norm(z: torch.Tensor) -> float:
        out = max(float(state_norm(z[:n].view(shape))), float(state_norm(z[n : 2 * n].view(shape))))
        for lo, hi in bounds:
            out = max(out, rms(z[lo:hi]))
        return out

    return norm


class _ContinuousAdjoint(torch.autograd.Function):
    """Backsolve adjoint: O(1) memory in the number of steps."""

    @staticmethod
    def forward(ctx, plan: Plan, spec: Adjoint, params, y0, *param_tensors):
        # stiff dynamics (an implicit method) cannot be solved backwards in time: a decaying
        # mode grows there as fast as it decays here. The state then comes from the forward
        # steps kept (memory ∝ steps × state) and only the adjoints are solved backwards.
        records: list[Any] | None = [] if plan.method.implicit else None
        with torch.no_grad():
            sol = torch.stack(plan.run(plan.evaluator(), y0, records))
        ctx.plan, ctx.spec, ctx.params = plan, spec, params
        ctx.trajectory = None if records is None else _Trajectory(plan, records, sol[-1])
        method = spec.method or plan.method
        seminorm = spec.seminorm if spec.seminorm is not None else not plan.method.implicit
        ctx.seminorm = seminorm and spec.norm is None
        ctx.default_norm = _ExposedNorm(_state_norm(plan), ctx.seminorm, sol.shape[1:])
        # torchdiffeq's attribute: tools (and its tests) read and replace the norm here
        ctx.adjoint_options = {**spec.options_view, "norm": spec.norm or ctx.default_norm}
        ctx.adjoint_method = method
        ctx.save_for_backward(sol)
        return sol

    @staticmethod
    def backward(ctx, grad_sol):
        refuse_higher_order("odeint_adjoint")
        (sol,) = ctx.saved_tensors
        plan, spec, params = ctx.plan, ctx.spec, ctx.params
        method = ctx.adjoint_method
        stats = plan.stats
        user_ev = plan.evaluator(backward=True)
        user_ev.sign = 1.0  # the augmented dynamics call f in user time
        shape = sol.shape[1:]
        n = math.prod(shape)
        p_sizes = [p.numel() for p in params]
        p_total = sum(p_sizes)
        chosen = ctx.adjoint_options.get("norm")
        user_norm = None if chosen is ctx.default_norm else chosen
        if user_norm is not None and not callable(user_norm):
            raise InvalidTypeError(
                f"grad_fn.adjoint_options['norm'] must be callable, got {user_norm!r}"
            )
        # With the seminorm the parameter adjoints g never control the step size and never
        # feed back into the dynamics, so they are not part of the integrated state: each
        # accepted step adds dt * sum(b_i * k_i^g) (quadrature on the same stages).
        # (an implicit method's stages are not evaluations of the dynamics: it integrates them)
        quadrature = user_norm is None and ctx.seminorm and not method.implicit
        # quadrature: the parameter adjoints of each evaluation since the last accepted step
        side = _SideOutputs()
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
                    vjps: tuple[torch.Tensor | None, ...] = torch.autograd.grad(
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
        norm: Any
        if user_norm is not None:
            flat_view = _augmented_parts(n, None, params, sol, acc_p)
            view = augmented if spec.norm is user_norm and not spec.flat_norm else flat_view

            def user_view_norm(z: torch.Tensor) -> Any:  # called as torchdiffeq calls it
                return user_norm(view(z))

            norm = user_view_norm
        elif (
            ctx.seminorm and plan.shapes is None and getattr(plan.controller, "norm", None) is None
        ):
            norm = RMSNorm(segment=n, count=2)  # the fused kernels' seminorm
        else:
            norm = _augmented_norm(_state_norm(plan), shape, p_sizes, not ctx.seminorm)
        ctrl = spec.controller or plan.controller
        cfg: AdaptiveConfig | None = None
        step_size = None
        if ctrl.adaptive:
            if not method.adaptive:
                raise InvalidArgumentError(
                    f"the adjoint's method {method.name!r} has no error estimate; give it a "
                    "ConstantStepSize controller (adjoint_options={'step_size': ...})"
                )
            method = method.for_tolerance(ctrl.rtol)
            cfg = adaptive_config(ctrl, 1.0, None, method, norm)
        else:
            step_size = ctrl.step_size
        user_times = [plan.sign * s for s in plan.times]
        adj_y = grad_sol[-1].reshape(-1)
        adj_p = sol.new_zeros(p_total)
        tmp = SolveStats()
        # each sum in one pass of the fused kernels where every parameter allows it
        fused_acc = bool(acc_p) and all(kernels.usable(x) for x in acc_p)
        acc_kernels = (
            kernels.select(acc_p[0]) if fused_acc else kernels.TorchKernels(None, None, None)
        )
        tab = getattr(method, "tableau", None)

        def accumulate(ks, dt):
            if acc_p:
                acc_kernels.accumulate_(acc_p, [side.of(k) for k in ks], tab, dt)
            # the next step starts from the last stage where the method reuses it
            side.keep(ks[-1] if method.reuses_last_stage else None)

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
                plan.func, sign, augmented, cfg is not None, method.name, adjoint=True
            )
            ev.coupled = 2 * n  # the parameter adjoints do not feed back into the dynamics
            internal = [sign * t_hi, sign * t_lo]
            parts = (
                [sol[i].reshape(-1), adj_y] if quadrature else [sol[i].reshape(-1), adj_y, adj_p]
            )
            z0 = torch.cat(parts)
            hook = accumulate if quadrature else None
            if cfg is None:
                z = solve_fixed(ev, method, z0, internal, step_size, on_accept=hook)[-1]
            else:
                z = solve_adaptive(
                    ev, method, z0, internal, _segment(cfg, ctrl, sign, internal, quadrature,
                                                       trajectory, plan.sign), on_accept=hook
                )[-1]  # fmt: skip
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


def _segment(cfg, ctrl, sign, internal, quadrature, trajectory, plan_sign) -> AdaptiveConfig:
    """The backward solve's configuration over one interval between output times: the
    controller's ``step_t`` and ``jump_t`` in that interval's internal time (a discontinuity
    is one backwards too), its end where the quadrature needs whole steps, and no step longer
    than a forward step where the forward steps were kept."""
    lo, hi = internal
    step_t = [sign * x for x in ctrl.step_t] if ctrl.adaptive else []
    jump_t = tuple(s for s in (sign * x for x in getattr(ctrl, "jump_t", ())) if lo < s < hi)
    if quadrature:  # land exactly on the end of the interval
        step_t.append(hi)
    if trajectory is not None:
        step_t += [sign * plan_sign * k for k in trajectory.knots]
    kept = tuple(s for s in step_t if lo < s <= hi)
    return AdaptiveConfig(
        rtol=cfg.rtol,
        atol=cfg.atol,
        norm=cfg.norm,
        controller=cfg.controller,
        first_step=cfg.first_step,
        max_num_steps=cfg.max_num_steps,
        step_t=kept,
        jump_t=jump_t,
    )


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

    Each forward step ``k`` is solved again, once, to :attr:`SUBSTEPS` − 1 points inside it
    (each one step of the forward method from the step's start, with the Newton matrix the
    forward step used, so as accurate as the forward solve), and the state at a time inside it
    is the cubic Hermite through the two nearest of those points and their derivatives. One
    step solved again per point asked for, as before, cost most of the backward evaluations
    (the backward stages ask for a new time each) for no gain in the gradient: on Van der Pol
    (μ = 50, rtol 1e-6) 27,168 backward evaluations against 12,629, the gradient 2.0e-3 off
    either way; the cubic through the step's ends alone (no point inside) was 1.4e-2 off.
    The evaluations count as backward ones."""

    SUBSTEPS = 4
    _CACHE = 16  # forward steps kept: those a few backward steps reach into

    def __init__(self, plan: Plan, records: list[StepRecord], y_end: torch.Tensor) -> None:
        self.sign = plan.sign
        self.records = records
        self.knots = [r.t for r in records] + [records[-1].t + records[-1].dt]
        self.states = [r.y for r in records] + [y_end]
        self.ev = plan.evaluator(backward=True)
        self.stepper = plan.method.stepper(self.ev, kernels.TorchKernels(None, None, None))
        self._cache: dict[int, tuple[list[Any], list[torch.Tensor], list[torch.Tensor]]] = {}

    def __call__(self, t: float) -> torch.Tensor:
        """The state at user time ``t``."""
        s = self.sign * t
        k = bisect.bisect_right(self.knots, s) - 1
        if 0 <= k < len(self.knots) and s == self.knots[k]:
            return self.states[k]
        k = min(max(k, 0), len(self.records) - 1)
        times, states, slopes = self._pieces(k)
        j = min(max(bisect.bisect_right(times, s) - 1, 0), len(times) - 2)
        h = times[j + 1] - times[j]
        return kernels.hermite(
            states[j], states[j + 1], slopes[j], slopes[j + 1], h, (s - times[j]) / h
        )

    def _pieces(self, k: int) -> tuple[list[Any], list[torch.Tensor], list[torch.Tensor]]:
        """Times, states and derivatives at the ends of forward step ``k`` and inside it."""
        hit = self._cache.get(k)
        if hit is not None:
            return hit
        rec, n = self.records[k], self.SUBSTEPS
        end = self.knots[k + 1]
        times = [rec.t + rec.dt * j / n for j in range(n)] + [end]
        with torch.no_grad():
            f0 = self.ev(rec.t, rec.y) if rec.f0 is None else rec.f0
            f_end = self.ev(end, self.states[k + 1])
            states, slopes = [rec.y], [f0]
            for s in times[1:-1]:
                self.stepper.restore(rec.state)
                y, _ = self.stepper.step(rec.t, rec.y, f0, s - rec.t)
                if self.stepper.failed:  # Newton did not converge: the cubic through the ends
                    y = kernels.hermite(
                        rec.y, self.states[k + 1], f0, f_end, rec.dt, (s - rec.t) / rec.dt
                    )
                states.append(y)
                slopes.append(self.ev(s, y))
            states.append(self.states[k + 1])
            slopes.append(f_end)
        if len(self._cache) >= self._CACHE:
            self._cache.clear()
        self._cache[k] = hit = (times, states, slopes)
        return hit


register_gradient_method(Adjoint)
