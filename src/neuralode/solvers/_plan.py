"""The plan of a native solve: a request's strings and options turned into objects once."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _implicit  # noqa: F401  (registers the implicit methods)
from ._callbacks import StepCallbacks
from ._controller import PIController, StepSizeController
from ._evaluator import Evaluator
from ._kernels import rms as _rms
from ._loops import (
    AdaptiveConfig,
    RMSNorm,
    StepRecord,
    solve_adaptive,
    solve_adaptive_per_sample,
    solve_fixed,
)
from ._methods import Method, get_method
from ._stats import SolveStats
from ._validate import DEFAULT_MAX_NUM_STEPS, rows_direction

__all__ = ["Plan", "flat", "make_plan", "mixed_norm", "unflat_solution"]


def mixed_norm(sizes: Sequence[int]) -> Callable[[torch.Tensor], float]:
    """Max over components of their RMS (torchdiffeq's norm for tuple states)."""

    def norm(x: torch.Tensor) -> float:
        return max(_rms(p) for p in torch.split(x, list(sizes)))

    return norm


def _floats(values: Any, sign: float) -> tuple[float, ...]:
    if values is None:
        return ()
    return tuple(sign * float(v) for v in torch.as_tensor(values).reshape(-1).tolist())


@dataclasses.dataclass
class Plan:
    """Everything the loops need, derived once from a request: strings turned into objects."""

    func: Callable
    method: Method
    sign: float
    times: Any  # internal, increasing: a list, or a (batch, n) tensor of per-sample times
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
                self.func, self.sign, ev.unflatten, self.cfg is not None, self.method.name
            )
        return ev

    def run(self, ev: Evaluator, y0: torch.Tensor, record: list[StepRecord] | None = None):
        if self.cfg is None:
            return solve_fixed(ev, self.method, y0, self.times, self.step_size, self.interp, record)
        if self.per_sample:
            return solve_adaptive_per_sample(ev, self.method, y0, self.times, self.cfg)
        return solve_adaptive(ev, self.method, y0, self.times, self.cfg, record)


def _tolerance(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else value
    return float(value)


def make_plan(
    func: Callable,
    y0: Any,
    t: torch.Tensor,
    method: str | Method,
    options: dict[str, Any],
    rtol: Any,
    atol: Any,
    stats: SolveStats,
) -> Plan:
    meth = get_method(method).with_options(options)
    if t.ndim == 2:  # per-sample times: a row per sample, every row in the same direction
        sign = rows_direction(t)
        times: Any = sign * t.detach()
    else:
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
        norm = RMSNorm() if sizes is None else mixed_norm(sizes)
    cfg = None
    step_size = None
    if meth.adaptive:
        controller = options.get("controller")
        if controller is None:
            controller = PIController(
                safety=float(options.get("safety", 0.9)),
                ifactor=float(options.get("ifactor", 10.0)),
                dfactor=float(options.get("dfactor", 0.2)),
                pcoeff=float(options.get("pcoeff", 0.0)),
                icoeff=float(options.get("icoeff", 1.0)),
                min_step=float(options.get("min_step", 0.0)),
                max_step=float(options.get("max_step", math.inf)),
            )
        else:
            _check_controller(controller, options)
        cfg = AdaptiveConfig(
            rtol=_tolerance(rtol),
            atol=_tolerance(atol),
            norm=norm,
            controller=controller,
            first_step=None if options.get("first_step") is None else float(options["first_step"]),
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
    return Plan(
        func=func,
        method=meth,
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


def flat(y0: Any) -> torch.Tensor:
    if isinstance(y0, torch.Tensor):
        return y0
    return torch.cat([y.reshape(-1) for y in y0])


def unflat_solution(sol: torch.Tensor, shapes: list[torch.Size] | None) -> Any:
    if shapes is None:
        return sol
    parts = torch.split(sol, [math.prod(s) for s in shapes], dim=1)
    return tuple(p.reshape(sol.shape[0], *s) for p, s in zip(parts, shapes, strict=True))


_CONTROLLER_KEYS = ("safety", "ifactor", "dfactor", "pcoeff", "icoeff", "min_step", "max_step")


def _check_controller(controller: Any, options: dict[str, Any]) -> None:
    """A controller object of one's own, and not also the options it replaces."""
    if not isinstance(controller, StepSizeController):
        raise InvalidTypeError(
            f"options['controller'] must be a StepSizeController (e.g. PIController(...)), got "
            f"{type(controller).__name__}"
        )
    both = [k for k in _CONTROLLER_KEYS if options.get(k) is not None]
    if both:
        raise InvalidArgumentError(
            f"options['controller'] replaces the options {both}: give them to the controller "
            f"object instead (e.g. PIController({both[0]}=...))"
        )
