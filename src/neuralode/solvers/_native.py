"""The native engine: its methods, lanes and gradient methods behind the same seam as
torchdiffeq. A request's names become objects here, once (:mod:`._plan`)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ._backends import AbstractBackend, SolveRequest, TorchdiffeqBackend, register_backend
from ._gradients import GRADIENT_METHODS as _GRADIENTS
from ._gradients import AdjointSpec
from ._methods import METHODS, Method, get_method
from ._plan import Plan, flat, make_plan, unflat_solution
from ._stats import SolveStats

__all__ = ["GRADIENT_METHODS", "NativeBackend"]

logger = logging.getLogger(__name__)

GRADIENT_METHODS = tuple(_GRADIENTS)
_ADAPTIVE_KEYS = frozenset(
    {
        "first_step", "safety", "ifactor", "dfactor", "pcoeff", "icoeff", "min_step",
        "max_step", "max_num_steps", "step_t", "jump_t", "norm", "dtype", "batch_mode",
        "controller",
    }
)  # fmt: skip
_FIXED_KEYS = frozenset({"step_size", "interp", "norm", "grid_constructor", "perturb"})
# adaptive options the per-sample lanes do not implement (rejected there, not ignored)
_NOT_PER_SAMPLE = ("step_t", "jump_t", "norm")
_FALL_THROUGH_KEYS = frozenset({"grid_constructor", "perturb"})


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
            self._methods = self._fallback.methods | frozenset(METHODS)
        return self._methods

    def valid_options(self, method: str | Method) -> frozenset[str]:
        if isinstance(method, Method) or method in METHODS:
            m = get_method(method)
            return (_ADAPTIVE_KEYS if m.adaptive else _FIXED_KEYS) | m.option_keys
        return self._fallback.valid_options(method)

    def valid_adjoint_options(self, method: str) -> frozenset[str]:
        return self.valid_options(method) - {"batch_mode"}

    def _delegate(self, r: SolveRequest) -> str | None:
        if r.method_object is None and r.method not in METHODS:
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
        if r.adjoint and isinstance(r.adjoint_method, str) and r.adjoint_method not in METHODS:
            return f"adjoint method {r.adjoint_method!r} is not native"
        return None

    def solve(self, request: SolveRequest, stats: SolveStats) -> Any:
        reason = self._delegate(request)
        if reason is not None:
            if request.gradient != "direct":
                raise InvalidArgumentError(
                    f"gradient={request.gradient!r} is not available here ({reason}); use "
                    "gradient='direct' or odeint_adjoint"
                )
            if request.options.get("controller") is not None:
                raise InvalidArgumentError(
                    f"options['controller'] is not available here ({reason}); use torchdiffeq's "
                    "options (safety, ifactor, dfactor, pcoeff, icoeff, min_step, max_step)"
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
        method = r.method if r.method_object is None else r.method_object
        plan = make_plan(r.func, r.y0, r.t, method, r.options, r.rtol, r.atol, stats)
        y0 = flat(r.y0)
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
            if ignored:
                raise InvalidArgumentError(
                    f"batch_mode='per_sample' does not support options {ignored}: every sample "
                    "has its own steps and its own error test, so step_t/jump_t boundaries "
                    "shared by the batch and a norm of the whole state do not apply. Use "
                    "batch_mode='joint' (the default) with these options"
                )
            if plan.method.implicit:
                raise InvalidArgumentError(
                    f"batch_mode='per_sample' supports explicit methods; {plan.method.name!r} "
                    "is implicit (its Newton iteration couples the batch). Use "
                    "batch_mode='joint' (the default)"
                )
        params = self._params(r, gradient)
        needs_grad = torch.is_grad_enabled() and (
            y0.requires_grad or any(p.requires_grad for p in params)
        )
        spec = self._adjoint_spec(r, plan) if gradient == "adjoint" else None
        if gradient != "direct" and not needs_grad:
            # nothing to differentiate (e.g. adjoint_params=() and a y0 without grad): record no
            # graph, so that no gradient reaches parameters left out, as in torchdiffeq
            with torch.no_grad():
                sol = _GRADIENTS["direct"].solve(plan, y0, params)
        else:
            sol = _GRADIENTS[gradient].solve(plan, y0, params, spec)
        return unflat_solution(sol, plan.shapes)

    @staticmethod
    def _params(r: SolveRequest, gradient: str) -> tuple[torch.Tensor, ...]:
        if not _GRADIENTS[gradient].needs_params:
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
    def _adjoint_spec(r: SolveRequest, plan: Plan) -> AdjointSpec:
        method = r.adjoint_method or r.method_object or r.method
        opts = dict(r.adjoint_options if r.adjoint_options is not None else r.options)
        # with an implicit (stiff) forward method the state comes from the forward steps, not
        # from the error-controlled backward solve: only the full norm then controls the
        # parameter adjoints' integrands (seminorm: gradient errors of 1e-3 at rtol 1e-7)
        default = "full" if plan.method.implicit else "seminorm"
        norm = opts.pop("norm", default) if r.adjoint_options is not None else default
        opts.pop("batch_mode", None)
        rtol = r.adjoint_rtol if r.adjoint_rtol is not None else r.rtol
        atol = r.adjoint_atol if r.adjoint_atol is not None else r.atol
        tmp = make_plan(
            r.func, torch.zeros(1, dtype=plan.dtype), r.t[:2], method, opts, rtol, atol, plan.stats
        )
        return AdjointSpec(
            method=tmp.method,
            cfg=tmp.cfg,
            step_size=tmp.step_size,
            seminorm=norm == "seminorm",
            user_norm=norm if callable(norm) else None,
        )


register_backend(NativeBackend())
