"""The checkpointed gradient: keep the accepted states, recompute each step under autograd in
the backward pass (the exact gradient of the discrete solve, memory ∝ steps × state)."""

from __future__ import annotations

from typing import Any

import torch

from . import _kernels as kernels
from ._loops import StepRecord, grid_interp
from ._methods import Stepper
from ._solve import GradientMethod, Plan, register_gradient_method

__all__ = ["Checkpoint", "recompute_step", "refuse_higher_order"]


def refuse_higher_order(where: str) -> None:
    """Backward passes run without grad unless a higher-order graph was asked for
    (``create_graph=True``); these gradients are not differentiable, so say so instead of
    returning a wrong second derivative."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"second and higher derivatives (create_graph=True) are not available through "
            f"{where}: its backward pass is not itself differentiable. Use odeint with "
            "gradient='direct' (the default) for higher-order gradients"
        )


class Checkpoint(GradientMethod):
    """Keep the accepted states and recompute each step under autograd in the backward pass:
    the exact gradient of the discrete solve, memory ∝ steps × state."""

    name = "checkpoint"

    def solve(self, plan: Plan, y0: torch.Tensor, params: tuple[torch.Tensor, ...]) -> Any:
        return _Checkpointed.apply(plan, params, y0, *params)


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
                s = rec.t + theta * rec.dt
                outs.append(grid_interp(ev, fixed_interp, rec.t, t1, y, y1, f0, s))
                idx.append(j)
        else:
            f1 = ks[-1] if rec.f1_time is None else ev(rec.f1_time, y1)
            for j, theta in rec.outputs:
                outs.append(stepper.dense(y, y1, ks, f1, rec.dt, theta))
                idx.append(j)
    return outs, idx


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
        refuse_higher_order("gradient='checkpoint'")
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
                    before = p_grads[i]
                    p_grads[i] = g if before is None else before + g
        adj = adj + grad_sol[0]
        return (None, None, adj, *p_grads)


register_gradient_method(Checkpoint)
