"""Adaptive implicit Runge–Kutta methods for stiff dynamics: ESDIRK methods with embedded error
estimates, solved stage by stage with Newton's method.

A stage of an ESDIRK method solves ``z = rhs + h γ f(t_i, z)`` by Newton's method, with the
linear systems ``(I - h γ J) x = r`` of :mod:`._newton` (dense, per-sample blocks, or Krylov).
The Jacobian is reused across stages and steps, and formed again when the iteration fails to
converge with it, or converged slowly in an accepted step (contraction rate above
``JACOBIAN_RATE``), as Hairer and Wanner's RADAU5 does.

Gradients: a converged stage is the fixed point ``z* = rhs + h γ f(t_i, z*)``; its derivative
by the implicit function theorem is ``(I - h γ J(z*))⁻¹`` applied to the derivative of the
right-hand side at ``z*``. :class:`_ImplicitStage` does exactly that, so direct
backpropagation and the checkpointed gradient get the exact gradient of the discrete solve
without differentiating the Newton iterations; the continuous adjoint keeps the forward steps
(a stiff state cannot be solved backwards in time) and integrates the adjoint equations with
the same implicit method (``_gradients``).

Methods: ``kvaerno3``, ``kvaerno5`` (Kværnø 2004) and ``trbdf2`` (Hosea and Shampine 1996).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _kernels as kernels
from ._controller import tightest
from ._messages import Status, failure
from ._methods import Method, Stepper, register_method
from ._newton import (
    DENSE_MAX,
    LINEAR_SOLVERS,
    BlockNewton,
    DenseNewton,
    FusedUpdate,
    LinearSolver,
    block_transposed_solve,
    choose,
    fused_update_usable,
    gmres,
    jacobian,
)
from ._tableau import _TOL, nonzero_terms

__all__ = [
    "DENSE_MAX",
    "ESDIRK",
    "IMPLICIT_OPTIONS",
    "TRBDF2",
    "DIRKTableau",
    "Kvaerno3",
    "Kvaerno5",
    "gmres",
]

IMPLICIT_OPTIONS = frozenset(
    {"linear_solver", "newton_tol", "max_newton_iters", "error_factor", "proportional"}
)
"""The options of the implicit methods, besides those of every adaptive method."""

_NO_CONTEXT = contextlib.nullcontext()  # (where no graph is recorded anyway)

JACOBIAN_RATE = 0.1
"""An accepted step whose Newton iterations contracted slower than this (the ratio of
successive updates) has the next step form a new Jacobian: a fresh one makes the iterations
converge in about two evaluations where a stale one took five or more (Van der Pol, μ = 1000:
8,700 evaluations instead of 16,400 at rtol 1e-6)."""

FINAL_STAGE_FACTOR = 1.0
"""The contraction factor ``θ / (1 - θ)`` the final stage's first Newton update is judged by,
at least. The final stage is the step's solution, and the last stage's rate is no bound on
its: judged by that rate, updates of a tolerance and more were taken as converged and went
into the solution unchecked (kvaerno3 on Van der Pol, μ = 900–1,100, rtol = atol = 1e-8: 491
tolerances off at the median; 20 judged so, for 1% more evaluations). Judging every stage so
cost the linear stiff probe 47% more evaluations and made kvaerno5 less accurate at rtol 1e-6
(median over ten μ 5.2 tolerances against 3.2; 1.4 with the final stage alone)."""


@dataclasses.dataclass(frozen=True)
class DIRKTableau:
    """An ESDIRK method: an explicit first stage, then stages with the same diagonal ``gamma``.

    ``a[i]`` holds the coefficients of the stages before stage ``i`` (row ``i`` has ``i``
    entries); stage ``i`` solves ``z_i = y + h sum(a[i][j] k_j) + h gamma k_i``. Checked on
    creation: ``c_i = sum(a[i]) + gamma``, weights summing to one, error weights to zero, and
    stiff accuracy (``b`` is the last row with ``gamma``: the last stage is ``y1``)."""

    name: str
    order: int
    gamma: float
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]
    a_terms: tuple[tuple[tuple[int, float], ...], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    b_err_terms: tuple[tuple[int, float], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    stages: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if not (len(self.a) == len(self.b) == len(self.b_err) == s) or s < 2:
            raise InvalidArgumentError(f"{self.name}: c, a, b and b_err need one entry per stage")
        if self.c[0] != 0.0 or self.a[0]:
            raise InvalidArgumentError(f"{self.name}: the first stage must be explicit at c = 0")
        for i in range(1, s):
            if len(self.a[i]) != i:
                raise InvalidArgumentError(f"{self.name}: row {i} of a must have {i} entries")
            if abs(math.fsum(self.a[i]) + self.gamma - self.c[i]) > 1e-10:
                raise InvalidArgumentError(f"{self.name}: row {i} of a plus gamma is not c")
        if abs(math.fsum(self.b) - 1.0) > 1e-10 or abs(math.fsum(self.b_err)) > 1e-10:
            raise InvalidArgumentError(f"{self.name}: b must sum to 1 and b_err to 0")
        last = (*self.a[-1], self.gamma)
        if any(abs(x - y) > _TOL for x, y in zip(last, self.b, strict=True)):
            raise InvalidArgumentError(f"{self.name}: the method must be stiffly accurate")
        object.__setattr__(self, "a_terms", tuple(nonzero_terms(row) for row in self.a))
        object.__setattr__(self, "b_err_terms", nonzero_terms(self.b_err))
        object.__setattr__(self, "stages", s)


def _kvaerno3() -> DIRKTableau:
    """Kværnø's ESDIRK 3(2) (BIT 2004), L-stable; γ is the root of 6γ³ − 18γ² + 9γ − 1."""
    g = 0.4358665215  # Newton's method on the cubic from the published 10 digits
    for _ in range(8):
        g -= (6 * g**3 - 18 * g**2 + 9 * g - 1) / (18 * g**2 - 36 * g + 9)
    a31 = (-4 * g * g + 6 * g - 1) / (4 * g)
    a32 = (-2 * g + 1) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g * g + 6 * g - 1) / (6 * g - 3)
    b = (a41, a42, a43, g)
    embedded = (a31, a32, g, 0.0)
    return DIRKTableau(
        "kvaerno3",
        3,
        g,
        (0.0, 2 * g, 1.0, 1.0),
        ((), (g,), (a31, a32), (a41, a42, a43)),
        b,
        tuple(x - y for x, y in zip(b, embedded, strict=True)),
    )


def _kvaerno5() -> DIRKTableau:
    """Kværnø's ESDIRK 5(4) (BIT 2004), 7 stages, L-stable, γ = 0.26, with the coefficients
    as published (17 digits); the nodes are the rows' sums."""
    g = 0.26
    rows = (
        (),
        (g,),
        (0.13, 0.84033320996790809),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
        (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141,
         0.61943039072480676),
        (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046,
         0.62993304899016403, 0.06962479448202728),
    )  # fmt: skip
    b = (*rows[6], g)
    embedded = (*rows[5], g, 0.0)
    c = (0.0, *(math.fsum(r) + g for r in rows[1:]))
    return DIRKTableau(
        "kvaerno5", 5, g, c, rows, b, tuple(x - y for x, y in zip(b, embedded, strict=True))
    )


def _trbdf2() -> DIRKTableau:
    """TR-BDF2 as the ESDIRK of Hosea and Shampine (1996): a trapezoidal stage to
    ``t + γ h`` and a BDF2 stage to ``t + h``, γ = 2 − √2, with its 3rd-order embedded
    estimate; L-stable."""
    g = 2 - math.sqrt(2)
    d = g / 2
    w = math.sqrt(2) / 4
    b = (w, w, d)
    embedded = ((1 - w) / 3, (3 * w + 1) / 3, d / 3)
    return DIRKTableau(
        "trbdf2",
        3,
        d,
        (0.0, g, 1.0),
        ((), (d,), (w, w)),
        b,
        tuple(x - y for x, y in zip(b, embedded, strict=True)),
    )


# --------------------------------------------------------------------------- gradients


class _ImplicitStage(torch.autograd.Function):
    """A converged stage ``z*`` with the gradient of the implicit function theorem: given
    ``phi = rhs + g f(t, z*)`` recorded under autograd (``z*`` held fixed), ``dz = (I - g J)⁻¹
    dphi``; the backward pass solves the transposed system at ``z*``."""

    @staticmethod
    def forward(ctx, phi, z_star, transposed_solve):
        ctx.transposed_solve = transposed_solve
        return z_star.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.transposed_solve(grad), None, None


def _transposed_solve(ev, t, z: torch.Tensor, g: Any, solver: LinearSolver):
    """``v ↦ (I - g J(z))⁻ᵀ v`` at a converged stage (for :class:`_ImplicitStage`), with a
    Jacobian of the kind ``solver`` forms (dense, per-sample blocks, or none: GMRES on
    vector-Jacobian products)."""

    def solve(v: torch.Tensor) -> torch.Tensor:
        flat = v.reshape(-1)
        if isinstance(solver, BlockNewton):
            return block_transposed_solve(ev, t, z, g, v)
        if isinstance(solver, DenseNewton):
            J = jacobian(ev, t, z, flat.numel())
            eye = torch.eye(flat.numel(), dtype=J.dtype, device=J.device)
            return torch.linalg.solve((eye - g * J).T, flat).reshape(v.shape)
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            fz = ev(t, zz)

        def matvec(u):
            (vjp,) = torch.autograd.grad(fz, zz, u.reshape(z.shape), retain_graph=True)
            return u - g * vjp.reshape(-1)

        return gmres(matvec, flat, 50, 1e-10).reshape(v.shape)

    return solve


# --------------------------------------------------------------------------- the method


def _number(
    value: Any, name: str, ok: Callable[[Any], bool], what: str, kind: Any = (int, float)
) -> None:
    """Refuse a parameter that is not a positive number of ``kind`` meeting ``ok``."""
    if isinstance(value, bool) or not isinstance(value, kind) or not (value > 0 and ok(value)):
        raise InvalidArgumentError(f"{name} must be {what}, got {value!r}", argument=name)


class ESDIRK(Method):
    """An adaptive ESDIRK method given by a :class:`DIRKTableau`, with Newton's iteration on
    each implicit stage.

    Args:
        tableau: the method's coefficients.
        linear_solver: ``"dense"`` (the Jacobian from ``torch.func``, LU-factorised and reused
            across steps), ``"block"`` (one Jacobian block per sample of a batch whose samples
            do not interact, factorised as a batch), ``"krylov"`` (matrix-free GMRES) or
            ``"auto"`` (dense up to :data:`DENSE_MAX` elements, then blocks where the samples
            are found not to interact, then Krylov; the per-sample lane always takes blocks).
        newton_tol: the Newton iteration stops when its estimated remaining error is this
            fraction of the error the step's test accepts, the tolerance divided by
            ``error_factor`` (default 0.03, as RADAU5; kvaerno5's 0.075 with its
            ``error_factor`` 2.5 is 0.03 of the tolerance).
        max_newton_iters: beyond it (or when it diverges) the step is retried with a fresh
            Jacobian, then with a quarter of the step size.
        error_factor: the step's error estimate is multiplied by this before the error test
            and the choice of the next step (1: the estimate as the tableau gives it; 2 asks
            each step for half the tolerance), and Newton's tolerance divided by it, so that
            the iteration's own error stays below what the test accepts. Per-step control
            bounds each step's error, not their sum along the solution: see :class:`Kvaerno5`
            for why it takes 2.5.
        proportional: our option, for a global error proportional to the tolerance. Per-step
            control bounds each step's error; a method whose estimate grows as ``h ** q``
            (``q`` its ``order``, 3 for TR-BDF2) and which steps with the solution it
            estimates ends about ``rtol ** ((q - 1) / q)`` off, many tolerances at tight
            ``rtol`` for a low order (TR-BDF2 135 units on Van der Pol at rtol 1e-6). With
            ``proportional=True`` each step is asked for ``(rtol / PROPORTIONAL_FROM) **
            (1 / (q - 1))`` of the tolerance below :attr:`PROPORTIONAL_FROM` (``error_factor``
            times it), so that the error at the outputs stays near the tolerance at every
            ``rtol``, at the work that accuracy costs the method: the tolerance transform of
            Hairer and Wanner's RADAU5, which loosens its ``rtol`` to ``0.1 rtol ** (2/3)`` for
            the same reason the other way round (its estimate is of a lower order than its
            solution). Measured for TR-BDF2 in ``docs/design/engine.md`` (1 to 4.2 units on Van
            der Pol and Robertson from rtol 1e-3 to 1e-6, at 1.4 to 5.6 times the evaluations).

    torchdiffeq-style calls set the last five by name in ``options``."""

    implicit = True
    adaptive = True
    # stiffly accurate: the last stage's slope, (z - rhs) / (h γ), is the next step's first. It
    # equals f(t1, y1) only to Newton's tolerance, and is better on stiff dynamics (evaluating
    # f(t1, y1) instead put kvaerno5 2,300 tolerances off on Robertson's kinetics); so the
    # checkpointed gradient keeps it with the step (``exact_slope``).
    reuses_last_stage = True
    exact_slope = False
    # On stiff dynamics a slope carries the state's error times the stiffness (1e4 × 1e-7 on
    # dh/dt = -1e4 (h - cos t)), so interpolating with slopes loses accuracy (2e-5 between
    # steps whose ends are right to 1e-7): steps end on the output times instead.
    lands_on_outputs = True
    # After an accepted step the next may shrink by the safety factor (as in Hairer and
    # Wanner's codes), where torchdiffeq's rule keeps it: a step that barely passed is followed
    # by one of the same size, often rejected (kvaerno5 on Van der Pol: 156 rejected steps of
    # 576 with torchdiffeq's rule, 97 of 519 without; 10% fewer evaluations).
    accept_floor = 0.0
    parameters = IMPLICIT_OPTIONS
    PROPORTIONAL_FROM = 0.03
    """The ``rtol`` below which ``proportional=True`` asks each step for less than the tolerance
    (TR-BDF2 with it: 1 to 4.2 units off on Van der Pol and Robertson at rtol 1e-3 to 1e-6)."""

    def __init__(
        self,
        tableau: DIRKTableau,
        linear_solver: str = "auto",
        newton_tol: float = 0.03,
        max_newton_iters: int = 10,
        error_factor: float = 1.0,
        proportional: bool = False,
    ) -> None:
        if not isinstance(tableau, DIRKTableau):
            raise InvalidTypeError(f"ESDIRK takes a DIRKTableau, got {type(tableau).__name__}")
        if linear_solver not in LINEAR_SOLVERS:
            raise InvalidArgumentError(
                f"linear_solver must be one of {', '.join(map(repr, LINEAR_SOLVERS))}, got "
                f"{linear_solver!r}",
                argument="linear_solver",
            )
        _number(newton_tol, "newton_tol", lambda v: 0 < v < 1, "a number in (0, 1)")
        _number(max_newton_iters, "max_newton_iters", lambda v: v >= 1, "a positive integer", int)
        _number(error_factor, "error_factor", math.isfinite, "a positive finite number")
        if not isinstance(proportional, bool):
            raise InvalidTypeError(
                f"proportional must be True or False, got {proportional!r}",
                argument="proportional",
            )
        self.tableau = tableau
        self.name = tableau.name
        self.order = tableau.order
        self.stages = tableau.stages
        self.nodes = tableau.c
        self.linear_solver = linear_solver
        self.newton_tol = float(newton_tol)
        self.max_newton_iters = max_newton_iters
        self.error_factor = float(error_factor)
        self.proportional = proportional
        # Newton's stopping tolerance in units of the error tolerance: a fraction of what the
        # error test accepts. Held to the tolerance itself, an error_factor of 100 (each step
        # asked for 1% of it) let Newton's remaining error outweigh the estimate: kvaerno5 took
        # 22,964 evaluations on Robertson at rtol 1e-6 (3,347 held to 0.075 / 100), and
        # TR-BDF2's steps collapsed there (TooManyStepsError near t = 113)
        self.newton_stop = self.newton_tol / self.error_factor
        # The stage slopes are (z - rhs) / (h γ), so the estimate h Σ e_i k_i carries the
        # rounding of the stage values as Σ|e_i| / γ units of the state, times error_factor;
        # rtol must be six times that many units of roundoff (measured in float32 on decay, the
        # stiff probe and Van der Pol: below about 4 times the steps collapse)
        gain = sum(abs(e) for _, e in tableau.b_err_terms) / tableau.gamma
        self.rounding_gain = 6.0 * self.error_factor * gain

    def _configured(self, **parameters: Any) -> ESDIRK:
        current = {
            "linear_solver": self.linear_solver,
            "newton_tol": self.newton_tol,
            "max_newton_iters": self.max_newton_iters,
            "error_factor": self.error_factor,
            "proportional": self.proportional,
        }
        return ESDIRK(self.tableau, **{**current, **parameters})

    def for_tolerance(self, rtol: Any) -> ESDIRK:
        """With ``proportional``, the method as it steps at ``rtol`` (its ``error_factor``
        raised below :attr:`PROPORTIONAL_FROM`, see the class doc); else itself."""
        if not self.proportional:
            return self
        # (rtol is positive: checked with the controller)
        scale = (self.PROPORTIONAL_FROM / tightest(rtol)) ** self._power
        if scale <= 1.0:
            return self
        return self._configured(error_factor=self.error_factor * scale, proportional=False)

    def least_rtol(self, unit: float) -> float:
        """With ``proportional`` the gain grows as ``rtol`` falls below
        :attr:`PROPORTIONAL_FROM` by the factor :meth:`for_tolerance` applies, ``(FROM / r) **
        p`` with ``p = 1 / (q - 1)``: the smallest ``rtol`` is where ``r = floor * (FROM / r) **
        p``."""
        floor = super().least_rtol(unit)
        if not self.proportional or floor >= self.PROPORTIONAL_FROM:
            return floor
        return (floor * self.PROPORTIONAL_FROM**self._power) ** (1.0 / (1.0 + self._power))

    @property
    def _power(self) -> float:
        """``p = 1 / (q - 1)``: the error factor grows as ``rtol ** -p`` with ``proportional``."""
        return 1.0 / max(self.order - 1, 1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, linear_solver={self.linear_solver!r}, "
            f"newton_tol={self.newton_tol}, max_newton_iters={self.max_newton_iters}, "
            f"error_factor={self.error_factor}"
            f"{', proportional=True' if self.proportional else ''})"
        )


class _ESDIRKStepper(Stepper):
    method: ESDIRK
    tab: DIRKTableau

    def __init__(self, method: ESDIRK, ev, k: kernels.Kernels) -> None:
        super().__init__(method, ev, k)
        self.rtol, self.atol = k.rtol, k.atol
        self.solver: LinearSolver | None = None
        self.failed = False
        self.eta = 1.0  # Newton's convergence estimate, carried from stage to stage
        self.slowest = 0.0  # the step's slowest contraction rate of Newton's iterations
        self._start: tuple[Any, float] = (None, 1.0)

    def _solver(self, t: Any, y: torch.Tensor) -> LinearSolver:
        if self.solver is None:
            coupled = getattr(self.ev, "coupled", None)
            self.solver = choose(self.method.linear_solver, y, coupled, self.ev.stats, self.ev, t)
        return self.solver

    def _weights(self, z: torch.Tensor) -> torch.Tensor:
        return z.abs().mul_(self.rtol).add_(self.atol)

    def _newton(self, t: Any, rhs: torch.Tensor, guess: torch.Tensor, g: float, final: bool):
        """The stage's fixed point, or ``None`` where Newton's iteration does not converge.

        Stops as Hairer and Wanner's RADAU5: with the contraction rate ``θ`` of the last two
        updates, when ``θ / (1 - θ) · |update| ≤ newton_tol`` (the remaining error, in units of
        the error tolerance); the first update is judged by the last stage's rate, except in
        the ``final`` stage, which is the step's solution (the methods are stiffly accurate):
        there it is judged by its own size (see :data:`FINAL_STAGE_FACTOR`)."""
        solver = self._solver(t, guess)
        ev, shape = self.ev, rhs.shape
        flat = rhs.ndim == 1
        kappa = self.method.newton_stop
        # the updates are measured in the error weights of the guess (RADAU5 fixes them per
        # step): the same stopping rule, without forming weights per iteration
        weights = self._weights(guess)
        f_at = ev.at(t)  # the stage's time is every iteration's
        for _ in range(2):  # with the Jacobian at hand, then with a fresh one
            z = guess
            solver.prepare(ev, t, z, g, weights)
            inverse = solver.inverse()  # with it, one call of the C kernel per update
            fused = (
                FusedUpdate(rhs, g, inverse, weights)
                if inverse is not None and fused_update_usable(rhs, weights, inverse, g)
                else None
            )
            prev, eta = math.inf, max(self.eta, FINAL_STAGE_FACTOR) if final else self.eta
            for it in range(self.method.max_newton_iters):
                fz = f_at(z)
                update = None if fused is None else fused(z, fz)
                if update is not None:  # one pass of the C kernel
                    z, size = update
                else:
                    r = (
                        torch.sub(z, rhs).sub_(fz, alpha=g)
                        if type(g) is float
                        else z - rhs - g * fz
                    )
                    delta = solver.solve(r) if flat else solver.solve(r.reshape(-1)).reshape(shape)
                    z = z - delta
                    size = kernels.rms(delta.div_(weights))
                if not math.isfinite(size):
                    if it == 0 and not bool(torch.isfinite(fz).all()):
                        # the dynamics themselves are NaN/inf here: no step size helps
                        raise failure(Status.NONFINITE, time=ev.sign * t)
                    break
                if it > 0:
                    rate = size / prev
                    if rate >= 0.9:  # diverging, or too slow to be worth going on
                        break
                    self.slowest = max(self.slowest, rate)
                    eta = rate / (1.0 - rate)
                if eta * size <= kappa or size <= 1e-10:
                    self.eta = max(eta, 1e-8) ** 0.8
                    return z
                prev = size
            self.eta = 1.0
            if not solver.refresh():
                return None
        return None

    def step(self, t, y, f0, dt, last_node=None):
        tab, ev = self.tab, self.ev
        # what a recomputation needs to take this step's Newton iterations again exactly
        self._start = (None if self.solver is None else self.solver.state(), self.eta)
        self.slowest = 0.0
        g = dt * tab.gamma
        ks = [f0]
        z = y
        differentiable = torch.is_grad_enabled()
        for i in range(1, tab.stages):
            rhs = kernels.combine(y, ks, tab.a_terms[i], dt)
            ti = t + tab.c[i] * dt
            if last_node is not None and tab.c[i] == 1.0:
                ti = last_node
            # the iteration itself records no graph; the same guess with and without one
            with torch.no_grad() if differentiable else _NO_CONTEXT:
                z_star = self._newton(ti, rhs, torch.add(rhs, ks[-1], alpha=g), g,
                                      i == tab.stages - 1)  # fmt: skip
            if z_star is None:
                self.failed = True
                return y, ks
            z = z_star
            if differentiable:  # the gradient of the fixed point (see _ImplicitStage)
                phi = rhs + g * ev(ti, z_star)
                if phi.requires_grad:
                    solve_t = _transposed_solve(ev, ti, z_star, g, self._solver(ti, z_star))
                    z = _ImplicitStage.apply(phi, z_star, solve_t)
            ks.append(torch.sub(z, rhs).div_(g))
        self.failed = False
        return z, ks

    def error_ratio(self, y, y1, ks, dt):
        if self.failed:
            return math.inf
        with torch.no_grad():
            err = kernels.combine(torch.zeros_like(y), ks, self.tab.b_err_terms, dt)
            ratio = self.kernels.scaled_norm(err, y, y1) * self.method.error_factor
        if ratio <= 1.0 and self.solver is not None:
            self.solver.step_done(slow=self.slowest > JACOBIAN_RATE)
        return ratio

    def dense(self, y0, y1, ks, f1, dt, theta):
        if type(theta) is float and theta >= 1.0:
            return y1
        return kernels.hermite(y0, y1, ks[0], f1, dt, theta)

    def checkpoint(self):
        solver_state, eta = self._start
        return solver_state, eta, self.rtol, self.atol

    def restore(self, state):
        solver_state, self.eta, self.rtol, self.atol = state
        if solver_state is None:  # the step formed its first Jacobian itself (or is Krylov's)
            if isinstance(self.solver, DenseNewton):
                self.solver = None
        else:
            if self.solver is None:
                J = solver_state[0]
                self.solver = (
                    BlockNewton(torch.Size(J.shape[:2]), self.ev.stats)
                    if J.ndim == 3
                    else DenseNewton(J.shape[0], self.ev.stats)
                )
            self.solver.restore(solver_state)


ESDIRK.stepper_class = _ESDIRKStepper


class Kvaerno3(ESDIRK):
    """Kværnø's ESDIRK 3(2), L-stable, stiffly accurate (``method="kvaerno3"``)."""

    def __init__(
        self,
        linear_solver: str = "auto",
        newton_tol: float = 0.03,
        max_newton_iters: int = 10,
        error_factor: float = 1.0,
        proportional: bool = False,
    ) -> None:
        super().__init__(
            _KVAERNO3, linear_solver, newton_tol, max_newton_iters, error_factor, proportional
        )


class Kvaerno5(ESDIRK):
    """Kværnø's ESDIRK 5(4), 7 stages, L-stable, stiffly accurate (``method="kvaerno5"``): the
    one to reach for on stiff dynamics.

    Our choice, not Kværnø's nor diffrax's: the error estimate is multiplied by
    ``error_factor = 2.5`` before the error test, so each step is asked for 0.4 of the
    tolerance. The order-4 estimate is right on most steps but the errors of a few hundred
    steps add up along the solution: with the estimate as it is (``error_factor=1``,
    ``newton_tol=0.03``) the error at the output times was 5.6 tolerance units on Van der Pol
    (μ = 1000) and 3.5 on Robertson's kinetics at rtol 1e-6; with 2.5, 0.7 and 1.7, for 5% and
    11% more evaluations (``benchmarks/stiff.py``). Its ``newton_tol`` of 0.075 of what the
    test accepts is 0.03 of the tolerance, RADAU5's: Newton's iteration is not tightened by the
    factor (0.03 of the 0.4 would cost Robertson 14% more evaluations). ``error_factor=1``
    alone leaves Newton at 0.075 of the tolerance (7.0 and 3.5 units); with ``newton_tol=0.03``
    too it is the method as the tableau and RADAU5 give it."""

    def __init__(
        self,
        linear_solver: str = "auto",
        newton_tol: float = 0.075,
        max_newton_iters: int = 10,
        error_factor: float = 2.5,
        proportional: bool = False,
    ) -> None:
        super().__init__(
            _KVAERNO5, linear_solver, newton_tol, max_newton_iters, error_factor, proportional
        )


class TRBDF2(ESDIRK):
    """TR-BDF2 (order 2 with a 3rd-order estimate), L-stable (``method="trbdf2"``)."""

    def __init__(
        self,
        linear_solver: str = "auto",
        newton_tol: float = 0.03,
        max_newton_iters: int = 10,
        error_factor: float = 1.0,
        proportional: bool = False,
    ) -> None:
        super().__init__(
            _TRBDF2, linear_solver, newton_tol, max_newton_iters, error_factor, proportional
        )


_KVAERNO3, _KVAERNO5, _TRBDF2 = _kvaerno3(), _kvaerno5(), _trbdf2()
for _cls in (Kvaerno3, Kvaerno5, TRBDF2):
    register_method(_cls())
