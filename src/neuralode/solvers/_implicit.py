"""Adaptive implicit Runge–Kutta methods for stiff dynamics: ESDIRK methods with embedded error
estimates, solved stage by stage with Newton's method.

A stage of an ESDIRK method solves ``z = rhs + h γ f(t_i, z)``. Newton's iteration needs
``(I - h γ J)⁻¹`` with ``J = ∂f/∂y``:

* :class:`DenseNewton` forms ``J`` once (``torch.func.jacfwd``, or finite differences where
  the dynamics cannot be traced) and LU-factorises ``I - h γ J``; the Jacobian is reused across
  stages and steps and only recomputed when Newton's iteration fails to converge with it;
* :class:`KrylovNewton` never forms ``J``: it solves each Newton system by GMRES with
  Jacobian-vector products by finite differences (one evaluation each), for large states.

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

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from . import _kernels as kernels
from ._messages import Status, failure
from ._methods import Method, Stepper, register_method
from ._tableau import _TOL, nonzero_terms

__all__ = [
    "ESDIRK",
    "IMPLICIT_OPTIONS",
    "TRBDF2",
    "DIRKTableau",
    "DenseNewton",
    "KrylovNewton",
    "Kvaerno3",
    "Kvaerno5",
]

IMPLICIT_OPTIONS = frozenset({"linear_solver", "newton_tol", "max_newton_iters"})
"""The options of the implicit methods, besides those of every adaptive method."""

DENSE_MAX = 1024
"""``linear_solver='auto'`` forms the dense Jacobian up to this many coupled elements."""


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


# --------------------------------------------------------------------------- Newton systems


def _flat_call(ev, t: Any, shape: torch.Size) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: ev(t, z.reshape(shape)).reshape(-1)


def _fd_jacobian(fn, z: torch.Tensor, f0: torch.Tensor, m: int) -> torch.Tensor:
    """``∂fn/∂z`` restricted to the first ``m`` rows and columns, by forward differences."""
    eps = math.sqrt(torch.finfo(z.dtype).eps)
    cols = []
    for j in range(m):
        step = eps * max(1.0, abs(float(z[j])))
        zj = z.clone()
        zj[j] += step
        cols.append((fn(zj)[:m] - f0[:m]) / step)
    return torch.stack(cols, dim=1)


class LinearSolver(abc.ABC):
    """Solves Newton's systems ``(I - g J) x = r`` of one solve, on the first ``m`` (coupled)
    elements; the rest pass through (their derivative does not depend on them)."""

    fresh = True  # whether the current Jacobian was formed at the current step

    def __init__(self, m: int) -> None:
        self.m = m

    @abc.abstractmethod
    def prepare(self, ev, t: Any, z: torch.Tensor, g: float) -> None:
        """Set up the solves of one stage at ``(t, z)`` with ``g = h γ``."""

    @abc.abstractmethod
    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """``(I - g J)⁻¹ r`` on the coupled elements (flat vectors)."""

    def refresh(self) -> bool:
        """Form a new Jacobian at the next :meth:`prepare`; ``False`` where that cannot help."""
        return False

    def step_done(self) -> None:  # noqa: B027 (matrix-free solvers keep no Jacobian)
        """A step was accepted: the Jacobian at hand is no longer fresh."""

    def state(self) -> Any:
        """What reproduces the solver's next solves exactly (``None``: nothing to keep)."""
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 (matrix-free solvers keep nothing)
        """Put back what :meth:`state` returned."""


class DenseNewton(LinearSolver):
    """``J`` as a dense matrix, LU-factorised per step size and reused across steps."""

    def __init__(self, m: int, stats) -> None:
        super().__init__(m)
        self.stats = stats
        self.J: torch.Tensor | None = None
        self._lu: tuple[float, Any] | None = None

    def prepare(self, ev, t, z, g):
        if self.J is None:
            self.J = jacobian(ev, t, z, self.m)
            self.fresh = True
            self.stats.jacobians = (self.stats.jacobians or 0) + 1
            self._lu = None
        if self._lu is None or self._lu[0] != g:
            eye = torch.eye(self.m, dtype=self.J.dtype, device=self.J.device)
            self._lu = (g, torch.linalg.lu_factor(eye - g * self.J))

    def solve(self, r):
        m = self.m
        x = torch.linalg.lu_solve(*self._lu[1], r[:m].unsqueeze(1)).squeeze(1)
        return x if m == r.numel() else torch.cat([x, r[m:]])

    def refresh(self) -> bool:
        if self.fresh:
            return False
        self.J = None
        return True

    def step_done(self) -> None:
        self.fresh = False

    def state(self):
        return self.J, self.fresh

    def restore(self, state):
        (self.J, self.fresh), self._lu = state, None


class KrylovNewton(LinearSolver):
    """Matrix-free: GMRES with Jacobian-vector products by finite differences around the
    current Newton iterate (one evaluation each)."""

    def __init__(self, m: int, restart: int = 30, rel_tol: float = 1e-3) -> None:
        super().__init__(m)
        self.restart, self.rel_tol = restart, rel_tol

    def prepare(self, ev, t, z, g):
        self._fn = _flat_call(ev, t, z.shape)
        self._g = g
        self._z = z.reshape(-1)
        self._f = self._fn(self._z)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        nv = float(torch.linalg.vector_norm(v))
        if nv == 0.0:
            return v.clone()
        eps = math.sqrt(torch.finfo(v.dtype).eps) * (1.0 + float(self._z.abs().max())) / nv
        z = self._z.clone()
        z[: self.m] += eps * v
        jv = (self._fn(z)[: self.m] - self._f[: self.m]) / eps
        return v - self._g * jv

    def solve(self, r):
        m = self.m
        x = gmres(self.matvec, r[:m], self.restart, self.rel_tol)
        return x if m == r.numel() else torch.cat([x, r[m:]])


def gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, restart: int, rel_tol: float
) -> torch.Tensor:
    """GMRES from a zero guess, one cycle of at most ``restart`` iterations (an inexact
    Newton step), stopping when the residual falls below ``rel_tol`` times ``|b|``."""
    beta = float(torch.linalg.vector_norm(b))
    if beta == 0.0:
        return torch.zeros_like(b)
    basis = [b / beta]
    h = torch.zeros(restart + 1, restart, dtype=torch.float64)
    k = 0
    for k in range(restart):
        w = matvec(basis[k])
        for i, q in enumerate(basis):
            h[i, k] = float(torch.dot(w, q))
            w = w - h[i, k].item() * q
        h[k + 1, k] = float(torch.linalg.vector_norm(w))
        e1 = torch.zeros(k + 2, dtype=torch.float64)
        e1[0] = beta
        sol = torch.linalg.lstsq(h[: k + 2, : k + 1], e1.unsqueeze(1)).solution.squeeze(1)
        res = float(torch.linalg.vector_norm(h[: k + 2, : k + 1] @ sol - e1))
        if res <= rel_tol * beta or h[k + 1, k] <= 1e-14 * beta:
            break
        basis.append(w / h[k + 1, k].item())
    coeffs = sol.to(b.dtype).tolist()
    x = torch.zeros_like(b)
    for c, q in zip(coeffs, basis, strict=False):
        x = x + c * q
    return x


def jacobian(ev, t: Any, z: torch.Tensor, m: int) -> torch.Tensor:
    """``∂f/∂y`` at ``(t, z)`` on the first ``m`` elements of the flat state: by
    ``torch.func.jacfwd`` where the dynamics can be traced, else by finite differences."""
    fn = _flat_call(ev, t, z.shape)
    flat = z.detach().reshape(-1)
    with torch.no_grad():
        if m == flat.numel():
            try:
                return torch.func.jacfwd(fn)(flat)
            except Exception:  # untraceable dynamics (in-place ops, .item(), autograd inside)
                pass
        return _fd_jacobian(fn, flat, fn(flat), m)


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


def _transposed_solve(ev, t, z: torch.Tensor, g: float, dense: bool):
    """``v ↦ (I - g J(z))⁻ᵀ v`` at a converged stage (for :class:`_ImplicitStage`)."""

    def solve(v: torch.Tensor) -> torch.Tensor:
        flat = v.reshape(-1)
        if dense:
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


class ESDIRK(Method):
    """An adaptive ESDIRK method given by a :class:`DIRKTableau`, with Newton's iteration on
    each implicit stage.

    Args:
        tableau: the method's coefficients.
        linear_solver: ``"dense"`` (the Jacobian from ``torch.func``, LU-factorised and reused
            across steps), ``"krylov"`` (matrix-free GMRES) or ``"auto"`` (dense up to
            :data:`DENSE_MAX` elements).
        newton_tol: the Newton iteration stops when its estimated remaining error is this
            fraction of the error tolerance (default 0.03, as RADAU5).
        max_newton_iters: beyond it (or when it diverges) the step is retried with a fresh
            Jacobian, then with a quarter of the step size.

    torchdiffeq-style calls set the last three by name in ``options``."""

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
    parameters = IMPLICIT_OPTIONS

    def __init__(
        self,
        tableau: DIRKTableau,
        linear_solver: str = "auto",
        newton_tol: float = 0.03,
        max_newton_iters: int = 10,
    ) -> None:
        if not isinstance(tableau, DIRKTableau):
            raise InvalidTypeError(f"ESDIRK takes a DIRKTableau, got {type(tableau).__name__}")
        if linear_solver not in ("auto", "dense", "krylov"):
            raise InvalidArgumentError(
                f"linear_solver must be 'auto', 'dense' or 'krylov', got {linear_solver!r}",
                argument="linear_solver",
            )
        if (
            isinstance(newton_tol, bool)
            or not isinstance(newton_tol, (int, float))
            or not 0 < newton_tol < 1
        ):
            raise InvalidArgumentError(
                f"newton_tol must be a number in (0, 1), got {newton_tol!r}",
                argument="newton_tol",
            )
        if (
            isinstance(max_newton_iters, bool)
            or not isinstance(max_newton_iters, int)
            or (max_newton_iters < 1)
        ):
            raise InvalidArgumentError(
                f"max_newton_iters must be a positive integer, got {max_newton_iters!r}",
                argument="max_newton_iters",
            )
        self.tableau = tableau
        self.name = tableau.name
        self.order = tableau.order
        self.stages = tableau.stages
        self.nodes = tableau.c
        self.linear_solver = linear_solver
        self.newton_tol = float(newton_tol)
        self.max_newton_iters = max_newton_iters

    def _configured(self, **parameters: Any) -> ESDIRK:
        current = {
            "linear_solver": self.linear_solver,
            "newton_tol": self.newton_tol,
            "max_newton_iters": self.max_newton_iters,
        }
        return ESDIRK(self.tableau, **{**current, **parameters})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, linear_solver={self.linear_solver!r}, "
            f"newton_tol={self.newton_tol}, max_newton_iters={self.max_newton_iters})"
        )


class _ESDIRKStepper(Stepper):
    def __init__(self, method: ESDIRK, ev, k: kernels.Kernels) -> None:
        super().__init__(method, ev, k)
        self.rtol, self.atol = k.rtol, k.atol
        self.solver: LinearSolver | None = None
        self.failed = False
        self.eta = 1.0  # Newton's convergence estimate, carried from stage to stage
        self._start: tuple[Any, float] = (None, 1.0)

    def _solver(self, y: torch.Tensor) -> LinearSolver:
        if self.solver is None:
            n = y.numel()
            m = getattr(self.ev, "coupled", None) or n
            kind = self.method.linear_solver
            if kind == "auto":
                kind = "dense" if m <= DENSE_MAX else "krylov"
            self.solver = DenseNewton(m, self.ev.stats) if kind == "dense" else KrylovNewton(m)
        return self.solver

    def _scaled(self, x: torch.Tensor, z: torch.Tensor) -> float:
        scale = z.abs().mul_(self.rtol).add_(self.atol)
        return kernels.rms(x / scale)

    def _newton(self, t: Any, rhs: torch.Tensor, guess: torch.Tensor, g: float):
        """The stage's fixed point, or ``None`` where Newton's iteration does not converge.

        Stops as Hairer and Wanner's RADAU5: with the contraction rate ``θ`` of the last two
        updates, when ``θ / (1 - θ) · |update| ≤ newton_tol`` (the remaining error, in units of
        the error tolerance); the first update is judged by the last stage's rate."""
        solver = self._solver(rhs)
        ev, shape = self.ev, rhs.shape
        kappa = self.method.newton_tol
        for _ in range(2):  # with the Jacobian at hand, then with a fresh one
            z = guess
            solver.prepare(ev, t, z, g)
            prev, eta = math.inf, self.eta
            for it in range(self.method.max_newton_iters):
                fz = ev(t, z)
                r = z - rhs - g * fz
                delta = solver.solve(r.reshape(-1)).reshape(shape)
                z = z - delta
                size = self._scaled(delta, z)
                if not math.isfinite(size):
                    if it == 0 and not bool(torch.isfinite(fz).all()):
                        # the dynamics themselves are NaN/inf here: no step size helps
                        raise failure(Status.NONFINITE, time=ev.sign * t)
                    break
                if it > 0:
                    rate = size / prev
                    if rate >= 0.9:  # diverging, or too slow to be worth going on
                        break
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
        g = dt * tab.gamma
        ks = [f0]
        z = y
        differentiable = torch.is_grad_enabled()
        for i in range(1, tab.stages):
            rhs = kernels.combine(y, ks, tab.a_terms[i], dt)
            ti = t + tab.c[i] * dt
            if last_node is not None and tab.c[i] == 1.0:
                ti = last_node
            with torch.no_grad():
                z_star = self._newton(ti, rhs.detach(), (rhs + g * ks[-1]).detach(), g)
            if z_star is None:
                self.failed = True
                return y, ks
            z = z_star
            if differentiable:  # the gradient of the fixed point (see _ImplicitStage)
                phi = rhs + g * ev(ti, z_star)
                if phi.requires_grad:
                    dense = isinstance(self.solver, DenseNewton)
                    solve_t = _transposed_solve(ev, ti, z_star, g, dense)
                    z = _ImplicitStage.apply(phi, z_star, solve_t)
            ks.append((z - rhs) / g)
        self.failed = False
        return z, ks

    def error_ratio(self, y, y1, ks, dt):
        if self.failed:
            return math.inf
        with torch.no_grad():
            err = kernels.combine(torch.zeros_like(y), ks, self.tab.b_err_terms, dt)
            ratio = self.kernels.scaled_norm(err, y, y1)
        if ratio <= 1.0:
            self.solver.step_done()
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
                self.solver = DenseNewton(solver_state[0].shape[0], self.ev.stats)
            self.solver.restore(solver_state)


ESDIRK.stepper_class = _ESDIRKStepper


class Kvaerno3(ESDIRK):
    """Kværnø's ESDIRK 3(2), L-stable, stiffly accurate (``method="kvaerno3"``)."""

    def __init__(self, linear_solver="auto", newton_tol=0.03, max_newton_iters=10) -> None:
        super().__init__(_KVAERNO3, linear_solver, newton_tol, max_newton_iters)


class Kvaerno5(ESDIRK):
    """Kværnø's ESDIRK 5(4), 7 stages, L-stable, stiffly accurate (``method="kvaerno5"``): the
    one to reach for on stiff dynamics."""

    def __init__(self, linear_solver="auto", newton_tol=0.03, max_newton_iters=10) -> None:
        super().__init__(_KVAERNO5, linear_solver, newton_tol, max_newton_iters)


class TRBDF2(ESDIRK):
    """TR-BDF2 (order 2 with a 3rd-order estimate), L-stable (``method="trbdf2"``)."""

    def __init__(self, linear_solver="auto", newton_tol=0.03, max_newton_iters=10) -> None:
        super().__init__(_TRBDF2, linear_solver, newton_tol, max_newton_iters)


_KVAERNO3, _KVAERNO5, _TRBDF2 = _kvaerno3(), _kvaerno5(), _trbdf2()
for _cls in (Kvaerno3, Kvaerno5, TRBDF2):
    register_method(_cls())
