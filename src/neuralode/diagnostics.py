"""A health report of a model on a batch: what is wrong and what to do about it."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import NeuralODEBlock, ode_blocks, solve_stats
from .errors import InvalidTypeError, TooManyStepsError
from .solvers import STIFF_REMEDIES, SolveStats, step_budget

__all__ = ["DiagnosticReport", "diagnose"]

logger = logging.getLogger(__name__)

EXPLODING_GRAD_NORM = 1e3
VANISHING_GRAD_NORM = 1e-7
MAX_STEPS = 5_000
"""Every solve of a diagnosis stops after this many steps, so that no model makes it hang."""
STIFF_STEP_JACOBIAN = 1.0
"""A solve of at least :data:`MANY_STEPS` steps whose mean step times the spectral radius of
the dynamics' Jacobian reaches this is stiff: its step is bounded by the explicit method's
stability (|h λ| of order 1–3), not by accuracy (where |h λ| stays well below 1)."""
MANY_STEPS = 20
EXPENSIVE_NFE = 200
"""Evaluations of the dynamics per solve far above a ResNet's depth (6–20 layers)."""


@dataclasses.dataclass
class DiagnosticReport:
    """What :func:`diagnose` found. ``str(report)`` gives a readable text."""

    num_parameters: int = 0
    nonfinite_parameters: list[str] = dataclasses.field(default_factory=list)
    forward_ok: bool = False
    forward_error: str | None = None
    output_shape: tuple[int, ...] | None = None
    output_min: float | None = None
    output_max: float | None = None
    output_nonfinite: bool = False
    loss: float | None = None
    backward_ok: bool = False
    backward_error: str | None = None
    grad_norm_total: float | None = None
    grad_norm_min: tuple[str, float] | None = None
    grad_norm_max: tuple[str, float] | None = None
    nonfinite_gradients: list[str] = dataclasses.field(default_factory=list)
    parameters_without_grad: list[str] = dataclasses.field(default_factory=list)
    solve: SolveStats | None = None
    step_budget_exhausted: bool = False
    nfe_per_solve: float | None = None
    rejected_ratio: float | None = None
    steps_per_solve: float | None = None
    nfe_per_unit_time: float | None = None
    step_times_jacobian: float | None = None
    vanishing_gradients: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the forward and backward passes ran and nothing was flagged."""
        return self.forward_ok and self.backward_ok and not self.warnings

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["solve"] = None if self.solve is None else self.solve.as_dict()
        d["ok"] = self.ok
        return d

    def __str__(self) -> str:
        lines = ["neuralode diagnostics", "=" * 21]
        lines.append(f"parameters:        {self.num_parameters:,}")
        if self.nonfinite_parameters:
            lines.append(f"NaN/inf parameters: {', '.join(self.nonfinite_parameters)}")
        else:
            lines.append("NaN/inf parameters: none")
        if self.forward_ok:
            lines.append(f"forward pass:      ok, output shape {self.output_shape}")
            lines.append(f"output range:      [{self.output_min:.4g}, {self.output_max:.4g}]")
        else:
            lines.append(f"forward pass:      FAILED: {self.forward_error}")
        if self.loss is not None:
            lines.append(f"loss:              {self.loss:.6g}")
        if self.backward_ok and self.grad_norm_total is None:
            lines.append("gradient norm:     no finite gradient")
        elif self.backward_ok:
            lines.append(f"gradient norm:     total {self.grad_norm_total:.4g}")
            if self.grad_norm_min is not None and self.grad_norm_max is not None:
                lines.append(
                    f"                   min {self.grad_norm_min[1]:.3g} ({self.grad_norm_min[0]}),"
                    f" max {self.grad_norm_max[1]:.3g} ({self.grad_norm_max[0]})"
                )
        elif self.backward_error is not None:
            lines.append(f"backward pass:     FAILED: {self.backward_error}")
        if self.solve is not None and self.solve.solves:
            lines.append(
                f"NFE:               forward {self.solve.nfe_forward}, "
                f"backward {self.solve.nfe_backward}"
            )
            lines.append(f"solve statistics:  {self.solve}")
            if self.nfe_per_solve is not None:
                cost = f"solver cost:       {self.nfe_per_solve:.4g} NFE per forward solve"
                if self.steps_per_solve:
                    cost += f", {self.steps_per_solve:.4g} steps (mean step "
                    cost += f"{1 / self.steps_per_solve:.2g} of the interval)"
                if self.rejected_ratio is not None:
                    cost += f", {100 * self.rejected_ratio:.0f}% rejected"
                if self.nfe_per_unit_time is not None:
                    cost += f", {self.nfe_per_unit_time:.4g} NFE per unit time"
                lines.append(cost)
            if self.step_times_jacobian is not None:
                lines.append(
                    f"stiffness:         mean step × |Jacobian eigenvalue| ≈ "
                    f"{self.step_times_jacobian:.3g} (≥ {STIFF_STEP_JACOBIAN:g} with many steps: "
                    "stiff)"
                )
        else:
            lines.append("NFE:               no ODE solve in this model")
        if self.warnings:
            lines.append("warnings:")
            lines.extend(f"  - {w}" for w in self.warnings)
        else:
            lines.append("warnings:          none — the model looks healthy")
        return "\n".join(lines)


def _default_loss(output: torch.Tensor, target: Any) -> torch.Tensor:
    if target is None:
        return output.float().pow(2).mean()
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and output.ndim == 2:
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


def _short(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}"


def diagnose(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
) -> DiagnosticReport:
    """Run one forward and backward pass of ``model`` on ``batch`` and report on its health.

    ``batch`` is ``(inputs, targets)`` or just the inputs. Without ``loss_fn`` the loss is cross
    entropy for integer targets, mean squared error for float targets and the mean squared output
    without targets. The model's parameters, gradients and mode are left as they were. Never
    raises because of the model: an exception becomes part of the report.
    """
    report = DiagnosticReport()
    try:
        _diagnose(model, batch, loss_fn, report)
    except Exception as err:  # a report must always come back
        logger.debug("diagnose failed", exc_info=True)
        report.warnings.append(f"diagnosis stopped early: {_short(err)}")
    return report


def _diagnose(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None,
    report: DiagnosticReport,
) -> None:
    named = list(model.named_parameters())
    report.num_parameters = sum(p.numel() for _, p in named)
    report.nonfinite_parameters = [
        n for n, p in named if not bool(torch.isfinite(p.detach()).all())
    ]
    if report.nonfinite_parameters:
        report.warnings.append(
            f"{len(report.nonfinite_parameters)} parameter tensor(s) hold NaN/inf "
            "(training diverged): reload the last good checkpoint and lower the learning rate"
        )
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = batch
    else:
        inputs, target = batch, None

    saved_grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in named}
    for _, p in named:
        p.grad = None
    try:
        with step_budget(MAX_STEPS):  # every probe ends, however stiff the dynamics
            _passes(model, inputs, target, loss_fn, named, report)
    finally:
        for n, p in named:
            p.grad = saved_grads[n]


def _passes(
    model: nn.Module,
    inputs: Any,
    target: Any,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None,
    named: list[tuple[str, nn.Parameter]],
    report: DiagnosticReport,
) -> None:
    """The forward and backward passes and what they show."""
    entries: dict[NeuralODEBlock, torch.Tensor] = {}  # the state each block starts from
    blocks = ode_blocks(model)
    for block in blocks:  # every solve goes through block.solve: wrap it on the instance

        def solve(
            y0: Any,
            *args: Any,
            _block: NeuralODEBlock = block,
            _solve: Callable[..., Any] = block.solve,
            **kwargs: Any,
        ) -> Any:
            h = y0 if isinstance(y0, torch.Tensor) else y0[0]  # (a tuple: h and integrals)
            entries.setdefault(_block, h.detach())
            return _solve(y0, *args, **kwargs)

        block.solve = solve  # type: ignore[method-assign]  # (on this instance, undone below)
    try:
        output = model(inputs)
        if isinstance(output, tuple):  # a block with regularizers returns (h, reg)
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise InvalidTypeError(f"model returned {type(output).__name__}, expected a tensor")
    except Exception as err:
        report.forward_error = _short(err)
        report.solve = solve_stats(model)
        report.step_budget_exhausted = isinstance(err, TooManyStepsError)
        if report.step_budget_exhausted:
            report.warnings.append(
                f"a solve did not reach its next output time within {MAX_STEPS:,} steps (the "
                f"diagnosis' budget; "
                f"{report.solve.nfe_forward:,} evaluations of the dynamics): the dynamics are "
                f"stiff or far too expensive. What works: {STIFF_REMEDIES}"
            )
        else:
            report.warnings.append(
                "the forward pass failed; the error above says where — see the hint in its message"
            )
        return
    finally:
        for block in blocks:
            del block.solve  # the class's method again
    report.forward_ok = True
    report.step_times_jacobian = _step_times_jacobian(entries)
    _cost_report(solve_stats(model), report)
    out = output.detach()
    report.output_shape = tuple(out.shape)
    finite = out[torch.isfinite(out)]
    report.output_nonfinite = finite.numel() != out.numel()
    if finite.numel():
        report.output_min = float(finite.min())
        report.output_max = float(finite.max())
    else:
        report.output_min = report.output_max = math.nan
    if report.output_nonfinite:
        report.warnings.append(
            "the output holds NaN/inf: check the input scale and lower the learning rate"
        )
    try:
        loss = (loss_fn or _default_loss)(output, target)
        report.loss = float(loss.detach())
        loss.backward()
        report.backward_ok = True
    except Exception as err:
        report.backward_error = _short(err)
        report.warnings.append("the backward pass failed")
    report.solve = solve_stats(model)
    if report.backward_ok:
        _grad_report(named, report, _biases_before_norms(model))


def _spectral_radius(func: Any, t0: torch.Tensor, h: torch.Tensor, iters: int = 20) -> float:
    """The largest |eigenvalue| of ``∂f/∂h`` at ``(t0, h)``, by power iteration with
    vector-Jacobian products (the batch is block-diagonal: the largest over its samples)."""
    with torch.enable_grad():
        x = h.detach().requires_grad_(True)
        fx = func(t0, x)
        if not isinstance(fx, torch.Tensor) or not fx.requires_grad:
            return 0.0
        v = torch.randn_like(fx)
        v = v / v.norm()
        rho = 0.0
        for _ in range(iters):
            (w,) = torch.autograd.grad(fx, x, v, retain_graph=True, allow_unused=True)
            if w is None:
                return 0.0
            rho = float(w.norm())
            if not (rho > 0 and math.isfinite(rho)):
                return rho
            v = w / rho
    return rho


def _step_times_jacobian(entries: dict[NeuralODEBlock, torch.Tensor]) -> float | None:
    """The largest over blocks of (mean accepted step) × (spectral radius of the Jacobian of
    the dynamics at the block's initial state)."""
    worst = None
    for block, h in entries.items():
        steps = block.stats.steps_accepted
        if not steps:
            continue
        times = block.integration_times
        span = block.stats.time_span  # the times actually solved over (they may be passed in)
        try:
            rho = _spectral_radius(block.func, times[0].to(h), h)
        except Exception:  # a probe only: never fail the report over it
            logger.debug("no stiffness estimate for %s", block, exc_info=True)
            continue
        value = span / steps * rho
        worst = value if worst is None else max(worst, value)
    return worst


def _cost_report(fwd: SolveStats, report: DiagnosticReport) -> None:
    """Stiffness and cost of the forward solves: NFE per solve, rejected share, mean step
    against the interval, NFE per unit time."""
    if not fwd.solves:
        return
    report.nfe_per_solve = fwd.nfe_forward / fwd.solves
    if fwd.time_span > 0:
        report.nfe_per_unit_time = fwd.nfe_forward / fwd.time_span
    accepted, rejected = fwd.steps_accepted, fwd.steps_rejected
    if accepted:
        report.steps_per_solve = accepted / fwd.solves
        if rejected is not None:
            report.rejected_ratio = rejected / (accepted + rejected)
    stiff = (
        report.step_times_jacobian is not None
        and report.step_times_jacobian >= STIFF_STEP_JACOBIAN
        and (report.steps_per_solve or 0) >= MANY_STEPS
    )
    if stiff:
        rejected_text = (
            ""
            if report.rejected_ratio is None
            else f", {100 * report.rejected_ratio:.0f}% of them rejected"
        )
        report.warnings.append(
            f"stiff dynamics: {report.steps_per_solve:.0f} steps per solve{rejected_text}, each "
            f"bounded by stability (mean step × |Jacobian eigenvalue| ≈ "
            f"{report.step_times_jacobian:.2g}), {report.nfe_per_solve:.0f} evaluations per "
            f"solve. What works: {STIFF_REMEDIES}"
        )
    elif report.nfe_per_solve > EXPENSIVE_NFE:
        report.warnings.append(
            f"expensive dynamics: {report.nfe_per_solve:.0f} evaluations per solve, far above "
            "a ResNet's depth of 6–20 layers. What helps: looser training tolerances "
            "(rtol/atol), a kinetic-energy or Jacobian regularizer (KineticEnergy, "
            "JacobianFrobenius), smaller initial weights of the dynamics (small_init=True)"
        )


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _biases_before_norms(model: nn.Module) -> set[str]:
    """Biases of layers that a normalisation layer follows directly in an ``nn.Sequential``:
    the normalisation subtracts them out, so their gradient is zero by construction (the
    tutorial's stem has three), which is no sign of vanishing gradients."""
    out = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, layer), (_, nxt) in itertools.pairwise(children):
            if isinstance(nxt, _NORMS) and getattr(layer, "bias", None) is not None:
                out.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return out


def _grad_report(
    named: list[tuple[str, nn.Parameter]], report: DiagnosticReport, exempt: set[str]
) -> None:
    norms: list[tuple[str, float]] = []
    for n, p in named:
        if not p.requires_grad:
            continue
        if p.grad is None:
            report.parameters_without_grad.append(n)
            continue
        g = float(p.grad.detach().norm())
        if not math.isfinite(g):
            report.nonfinite_gradients.append(n)
        else:
            norms.append((n, g))
    if norms:
        report.grad_norm_total = math.sqrt(sum(g * g for _, g in norms))
        report.grad_norm_min = min(norms, key=lambda x: x[1])
        report.grad_norm_max = max(norms, key=lambda x: x[1])
    if report.nonfinite_gradients:
        report.warnings.append(
            f"NaN/inf gradients in {', '.join(report.nonfinite_gradients)}: lower the learning "
            "rate, tighten the solver tolerance or clip gradients"
        )
    if report.parameters_without_grad:
        report.warnings.append(
            "parameters that received no gradient (unused in the forward pass?): "
            + ", ".join(report.parameters_without_grad)
        )
    total = report.grad_norm_total
    if total is not None and total > EXPLODING_GRAD_NORM:
        report.warnings.append(
            f"exploding gradients (total norm {total:.3g} > {EXPLODING_GRAD_NORM:g}): clip "
            "gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, or use "
            "small_init=True for the dynamics"
        )
    # the tutorial's rule: any parameter whose gradient norm is below the threshold
    report.vanishing_gradients = [
        n for n, g in norms if g < VANISHING_GRAD_NORM and n not in exempt
    ]
    if report.vanishing_gradients:
        shown = ", ".join(report.vanishing_gradients[:5])
        more = len(report.vanishing_gradients) - 5
        report.warnings.append(
            f"vanishing gradients (norm below {VANISHING_GRAD_NORM:g}) in {shown}"
            f"{f' and {more} more' if more > 0 else ''}: check the loss, the input scale and "
            "the integration time; a saturated activation (tanh) before these layers also "
            "stops gradients"
        )
