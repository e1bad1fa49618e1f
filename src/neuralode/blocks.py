"""Continuous-depth blocks: the Neural ODE block, multi-scale and hybrid blocks, and the
residual stack they generalise."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from .errors import InvalidArgumentError, InvalidTypeError
from .regularizers import AbstractRegularizer, RegularizedDynamics
from .solvers import (
    GRADIENT_METHODS,
    Method,
    SolveStats,
    check_times,
    check_tolerance,
    get_backend,
    odeint,
    odeint_adjoint,
    publish_regularization,
)

__all__ = [
    "HybridNeuralODE",
    "MultiScaleNeuralODE",
    "NeuralODEBlock",
    "ResidualStack",
    "TutorialMultiScaleODE",
    "ode_blocks",
    "regularization_loss",
    "solve_stats",
]


def _check_solver(method: Any, backend: Any, options: Any, adjoint_options: Any) -> None:
    """A method name the block's backend does not have (the live registries: a method
    registered before the block is made is known), or neither a name nor a method object (which
    the native backend takes as well), and option keys the method does not take, are refused
    when the block is made rather than at its first solve (the values are checked there)."""
    if isinstance(method, Method):
        return
    if not isinstance(method, str):
        raise InvalidTypeError(
            f"method must be a method name (e.g. 'dopri5') or a Method object, got "
            f"{type(method).__name__}"
        )
    engine = get_backend(backend)
    if method not in engine.methods:
        raise InvalidArgumentError(
            f"unknown method {method!r}; valid methods are: {', '.join(sorted(engine.methods))}"
        )
    for name, given, valid in (
        ("options", options, engine.valid_options),
        ("adjoint_options", adjoint_options, engine.valid_adjoint_options),
    ):
        if given is None:
            continue
        if not isinstance(given, Mapping):
            raise InvalidTypeError(f"{name} must be a dict, got {type(given).__name__}")
        keys = valid(method)
        unknown = sorted(set(given) - keys)
        if unknown:
            raise InvalidArgumentError(
                f"unknown {name} {unknown} for method {method!r}; valid keys are: "
                f"{', '.join(sorted(keys))}"
            )


class NeuralODEBlock(nn.Module):
    """``h ↦ h(T)``, the solution at time ``T`` of ``dh/dt = func(t, h)`` with ``h(t0) = h``.

    Args:
        func: the dynamics, an ``nn.Module`` with ``forward(t, h)``.
        t1: end of the integration interval (``t0`` is its start).
        output_times: if given, the block returns the whole trajectory at these times (first
            dimension indexes time) instead of only ``h(T)``; overrides ``t0``/``t1``.
        method: solver name (``"dopri5"``, ``"rk4"``, ..., or one registered with
            ``register_method``); a name the backend does not have is refused here, not at
            the first solve.
        rtol: relative tolerance in training mode.
        atol: absolute tolerance in training mode.
        eval_rtol: (tighter) relative tolerance in evaluation mode, after ``.eval()``.
        eval_atol: (tighter) absolute tolerance in evaluation mode.
        adjoint: gradients by the adjoint method (O(1) memory) instead of backpropagation.
        gradient: ``"direct"`` (default), ``"adjoint"`` (same as ``adjoint=True``) or
            ``"checkpoint"`` (native engine: exact gradient of the discrete solve with memory
            proportional to steps × state).
        options: solver options, as for :func:`neuralode.odeint` (a key the method does not
            take is refused when the block is made, a bad value at the first solve).
        adjoint_options: the adjoint's backward solve's options, as for
            :func:`neuralode.odeint_adjoint` (likewise).
        regularizers: e.g. ``[KineticEnergy(0.01), JacobianFrobenius(0.01)]``; integrated in the
            same solve. With regularizers the block returns ``(h, reg)`` where ``reg`` is the sum
            of the weighted terms; the terms by name are in ``last_regularization_terms``.
        augment_dim: ANODE augmentation — the state is padded with this many zero channels
            (dimension 1); ``func`` must then act on ``dim + augment_dim`` channels and the
            output keeps them.
        backend: solver engine name; ``None`` for the default.

    After each forward pass ``stats`` holds the solve's counters; its backward counters fill in
    when gradients are computed.
    """

    func: nn.Module
    integration_times: torch.Tensor
    _regularized: RegularizedDynamics | None

    def __init__(
        self,
        func: nn.Module,
        t1: float = 1.0,
        *,
        t0: float = 0.0,
        output_times: Sequence[float] | torch.Tensor | None = None,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        eval_rtol: float = 1e-5,
        eval_atol: float = 1e-6,
        adjoint: bool = False,
        gradient: str | None = None,
        options: Mapping[str, Any] | None = None,
        adjoint_options: Mapping[str, Any] | None = None,
        regularizers: Iterable[AbstractRegularizer] = (),
        augment_dim: int = 0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(func, nn.Module):
            raise InvalidTypeError(
                f"func must be an nn.Module with forward(t, h), got {type(func).__name__}"
            )
        for name, tol in (("rtol", rtol), ("atol", atol)):
            check_tolerance(tol, name)
        for name, tol in (("eval_rtol", eval_rtol), ("eval_atol", eval_atol)):
            check_tolerance(tol, name)
        if isinstance(augment_dim, bool) or not isinstance(augment_dim, int) or augment_dim < 0:
            raise InvalidArgumentError(
                f"augment_dim must be a non-negative integer, got {augment_dim!r}"
            )
        if output_times is None:
            times = torch.tensor([float(t0), float(t1)])
        else:
            times = torch.as_tensor(output_times, dtype=torch.get_default_dtype()).detach()
        check_times(times)
        if times.numel() < 2:
            raise InvalidArgumentError(
                "output_times must hold at least two times (a start and an end)"
            )
        _check_solver(method, backend, options, adjoint_options)
        regs = list(regularizers)
        for r in regs:
            if not isinstance(r, AbstractRegularizer):
                raise InvalidTypeError(
                    f"regularizers must be AbstractRegularizer instances, got {type(r).__name__}"
                )
        self.func = func
        # not registered as a submodule: its only parameters are func's, which must appear once
        # in state_dict()
        object.__setattr__(self, "_regularized", RegularizedDynamics(func, regs) if regs else None)
        self.register_buffer("integration_times", times.clone())
        self.return_trajectory = output_times is not None
        self.method = method
        self.rtol, self.atol = rtol, atol
        self.eval_rtol, self.eval_atol = eval_rtol, eval_atol
        if gradient is None:
            gradient = "adjoint" if adjoint else "direct"
        if gradient not in GRADIENT_METHODS:  # the live registry: a registered name works
            names = ", ".join(repr(n) for n in GRADIENT_METHODS.names())
            raise InvalidArgumentError(f"gradient must be one of {names}, got {gradient!r}")
        if adjoint and gradient != "adjoint":
            raise InvalidArgumentError(
                f"adjoint=True contradicts gradient={gradient!r}; pass one of them"
            )
        self.gradient = gradient
        self.adjoint = gradient == "adjoint"
        self.options = dict(options or {})
        self.adjoint_options = None if adjoint_options is None else dict(adjoint_options)
        self.augment_dim = augment_dim
        self.backend = backend
        self.has_regularizers = bool(regs)
        self.stats = SolveStats()
        self.last_regularization: torch.Tensor | None = None
        self.last_regularization_terms: dict[str, torch.Tensor] = {}

    @property
    def dynamics(self) -> nn.Module:
        """What is integrated: ``func``, or ``func`` with the regularizers' accumulators."""
        return self.func if self._regularized is None else self._regularized

    @property
    def tolerances(self) -> tuple[float, float]:
        """``(rtol, atol)`` in force for the current mode (training or evaluation)."""
        return (self.rtol, self.atol) if self.training else (self.eval_rtol, self.eval_atol)

    def solve(self, y0: Any, times: torch.Tensor, options: Mapping[str, Any] | None = None) -> Any:
        """Solve ``dynamics`` from ``y0`` (a tensor or a tuple of them) over ``times`` with the
        block's method, tolerances of the current mode, gradient method, backend and options
        (``options`` added to them for this call); return the solution as :func:`odeint` does.
        The solve's counters are in ``stats`` afterwards (and in any open
        :func:`neuralode.record`)."""
        rtol, atol = self.tolerances
        self.stats = SolveStats()
        kwargs: dict[str, Any] = dict(
            rtol=rtol,
            atol=atol,
            method=self.method,
            options=self.options if not options else {**self.options, **options},
            backend=self.backend,
            stats=self.stats,
        )
        if self.adjoint:
            return odeint_adjoint(
                self.dynamics,
                y0,
                times,
                adjoint_options=self.adjoint_options,
                adjoint_params=tuple(self.dynamics.parameters()),
                **kwargs,
            )
        return odeint(self.dynamics, y0, times, gradient=self.gradient, **kwargs)

    def integrate(
        self, h: torch.Tensor, times: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Solve from ``h``; return the output and the weighted regularization (or None).

        ``times`` overrides the block's integration times for this call (the output is then
        the whole trajectory at those times): for models that integrate over the times of
        their data, without changing the block's state."""
        if self.augment_dim:
            pad = h.new_zeros(h.shape[0], self.augment_dim, *h.shape[2:])
            h = torch.cat([h, pad], dim=1)
        whole = self.return_trajectory or times is not None
        times = (self.integration_times if times is None else times).to(dtype=h.dtype)
        regularized = self._regularized
        if regularized is not None:
            regularized.begin_solve(h)
            y0: Any = (h, *(h.new_zeros(h.shape[0]) for _ in regularized.regularizers))
        else:
            y0 = h
        sol = self.solve(y0, times)
        if regularized is None:
            self.last_regularization = None
            self.last_regularization_terms = {}
            return (sol if whole else sol[-1]), None
        traj, *accumulated = sol
        terms = {
            r.name: r.weight * acc[-1].mean() for r, acc in zip(regularized.terms, accumulated)
        }
        publish_regularization(terms)
        reg = torch.stack(list(terms.values())).sum()
        self.last_regularization = reg
        self.last_regularization_terms = terms
        return (traj if whole else traj[-1]), reg

    def forward(self, h: torch.Tensor) -> Any:
        out, reg = self.integrate(h)
        return out if reg is None else (out, reg)

    def extra_repr(self) -> str:
        rtol, atol = self.tolerances
        return (
            f"method={self.method!r}, t={self.integration_times.tolist()}, rtol={rtol}, "
            f"atol={atol}, gradient={self.gradient!r}, augment_dim={self.augment_dim}"
        )


def _sum_reg(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class _Scaled(nn.Module):
    """``scale * func(t, h)``: the same vector field run ``scale`` times faster."""

    def __init__(self, func: nn.Module, scale: float) -> None:
        super().__init__()
        self.func = func
        self.scale = float(scale)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.func(t, h)


class MultiScaleNeuralODE(nn.Module):
    """A fast and a slow Neural ODE block applied to the same input, outputs combined
    (neuralode's variant; :class:`TutorialMultiScaleODE` is the tutorial's).

    The fast block integrates ``speedup * fast_func`` and the slow block ``slow_func``, both over
    ``[0, t1]``; ``combine="sum"`` adds the two final states, ``"concat"`` concatenates them along
    dimension 1. Extra keyword arguments go to both :class:`NeuralODEBlock` s.
    """

    def __init__(
        self,
        fast_func: nn.Module,
        slow_func: nn.Module,
        t1: float = 1.0,
        speedup: float = 10.0,
        combine: str = "sum",
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if combine not in ("sum", "concat"):
            raise InvalidArgumentError(f"combine must be 'sum' or 'concat', got {combine!r}")
        if not speedup > 0:
            raise InvalidArgumentError(f"speedup must be positive, got {speedup!r}")
        self.fast = NeuralODEBlock(_Scaled(fast_func, speedup), t1, **block_kwargs)
        self.slow = NeuralODEBlock(slow_func, t1, **block_kwargs)
        self.combine = combine

    def integrate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        fast, reg_fast = self.fast.integrate(h)
        slow, reg_slow = self.slow.integrate(h)
        out = fast + slow if self.combine == "sum" else torch.cat([fast, slow], dim=1)
        return out, _sum_reg(reg_fast, reg_slow)

    def forward(self, h: torch.Tensor) -> Any:
        out, reg = self.integrate(h)
        return out if reg is None else (out, reg)


class TutorialMultiScaleODE(nn.Module):
    """The tutorial's multi-scale block: a fast Neural ODE integrated over a short interval
    ``[0, fast_t1]`` (0.1) and a slow one over the full interval ``[0, t1]``, both from the
    same input, combined by a learned layer, ``Linear(2·dim → dim)`` on their concatenation.

    Compare :class:`MultiScaleNeuralODE`, neuralode's own variant, which runs the fast vector
    field ``speedup`` times faster over the full interval and adds the two states.
    Extra keyword arguments go to both :class:`NeuralODEBlock` s.
    """

    def __init__(
        self,
        fast_func: nn.Module,
        slow_func: nn.Module,
        dim: int,
        fast_t1: float = 0.1,
        t1: float = 1.0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if not 0.0 < fast_t1 <= t1:
            raise InvalidArgumentError(f"fast_t1 must lie in (0, t1={t1}], got {fast_t1!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidArgumentError(
                f"dim must be a positive integer (the state size), got {dim!r}"
            )
        self.fast = NeuralODEBlock(fast_func, fast_t1, **block_kwargs)
        self.slow = NeuralODEBlock(slow_func, t1, **block_kwargs)
        self.combine = nn.Linear(2 * dim, dim)

    def integrate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        fast, reg_fast = self.fast.integrate(h)
        slow, reg_slow = self.slow.integrate(h)
        return self.combine(torch.cat([fast, slow], dim=-1)), _sum_reg(reg_fast, reg_slow)

    def forward(self, h: torch.Tensor) -> Any:
        out, reg = self.integrate(h)
        return out if reg is None else (out, reg)


class HybridNeuralODE(nn.Module):
    """Continuous segment, discrete residual jump, continuous segment.

    ``h ← ODE_1(h)`` over ``[0, t_split]``, then ``h ← h + jump(h)``, then ``h ← ODE_2(h)``.
    The second segment covers ``[t_split, t1]`` (``restart_time=False``, the default: one time
    axis through the whole block) or, as in the tutorial's hybrid block, ``[0, t1 - t_split]``
    (``restart_time=True``: time-dependent dynamics of the second segment see ``t`` from 0
    again, ``t ∈ [0, 0.5]`` with the defaults). Extra keyword arguments go to both
    :class:`NeuralODEBlock` s.
    """

    def __init__(
        self,
        func_before: nn.Module,
        jump: nn.Module,
        func_after: nn.Module,
        t_split: float = 0.5,
        t1: float = 1.0,
        restart_time: bool = False,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if not 0.0 < t_split < t1:
            raise InvalidArgumentError(
                f"t_split must lie strictly inside (0, t1={t1}), got {t_split!r}"
            )
        self.before = NeuralODEBlock(func_before, t_split, t0=0.0, **block_kwargs)
        self.jump = jump
        self.restart_time = bool(restart_time)
        t0_after, t1_after = (0.0, t1 - t_split) if restart_time else (t_split, t1)
        self.after = NeuralODEBlock(func_after, t1_after, t0=t0_after, **block_kwargs)

    def integrate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, reg_before = self.before.integrate(h)
        h = h + self.jump(h)
        h, reg_after = self.after.integrate(h)
        return h, _sum_reg(reg_before, reg_after)

    def forward(self, h: torch.Tensor) -> Any:
        out, reg = self.integrate(h)
        return out if reg is None else (out, reg)


class ResidualStack(nn.Module):
    """``h ← h + f_i(i, h)`` for ``i = 0 … L-1``: the discrete network a Neural ODE generalises.

    ``make_func`` builds one dynamics module (``forward(t, h)``). With ``shared=True`` one module
    serves every layer, and the stack equals the Euler solve with step 1 over ``[0, L]``.
    """

    def __init__(
        self, make_func: Callable[[], nn.Module], num_blocks: int, shared: bool = False
    ) -> None:
        super().__init__()
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise InvalidArgumentError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        self.num_blocks = num_blocks
        self.shared = shared
        count = 1 if shared else num_blocks
        self.funcs = nn.ModuleList(make_func() for _ in range(count))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            f = self.funcs[0 if self.shared else i]
            h = h + f(torch.tensor(float(i), dtype=h.dtype, device=h.device), h)
        return h


def ode_blocks(module: nn.Module) -> list[NeuralODEBlock]:
    """Every Neural ODE block in ``module``: its submodules that are blocks, and the blocks its
    submodules compose (an ``ode_block`` attribute, as a :class:`~neuralode.flows.CNF` has)."""
    found = []
    for m in module.modules():
        if isinstance(m, NeuralODEBlock):
            found.append(m)
        else:
            inner = getattr(m, "ode_block", None)
            if isinstance(inner, NeuralODEBlock):
                found.append(inner)
    return found


def solve_stats(module: nn.Module) -> SolveStats:
    """The counters of the last solve of every Neural ODE block in ``module``, summed.

    Call it after a forward pass for forward NFE, and after ``backward()`` for backward NFE too.
    (:func:`neuralode.record` collects every solve of a block of code instead, however many
    times a block solves in it.)
    """
    return SolveStats.total(b.stats for b in ode_blocks(module))


def regularization_loss(module: nn.Module) -> torch.Tensor | None:
    """The weighted regularization terms of the last forward pass of every block (and flow) in
    ``module``, summed; None if none has regularizers. (:func:`neuralode.record` collects
    every term of a block of code instead.)"""
    total: torch.Tensor | None = None
    for m in module.modules():
        if isinstance(m, NeuralODEBlock) or isinstance(
            getattr(m, "ode_block", None), NeuralODEBlock
        ):
            total = _sum_reg(total, cast("torch.Tensor | None", m.last_regularization))
    return total
