"""Newton's linear systems for the implicit methods: ``(I - g J) x = r`` with ``J = ∂f/∂y``.

* :class:`DenseNewton` forms ``J`` once (``torch.func.jacfwd``, or finite differences where
  the dynamics cannot be traced), LU-factorises ``I - g J`` and reuses the Jacobian across
  stages and steps until the iteration converges too slowly with it;
* :class:`BlockNewton` does the same per sample of a batch whose samples do not interact (a
  parameter sweep, a batch of independent small systems): the Jacobian is block diagonal, one
  ``n × n`` block per sample, formed with ``n`` Jacobian-vector products for the whole batch and
  factorised as a batch — never the dense Jacobian of the whole batch. ``g`` may be one number
  or one per sample (the per-sample lane);
* :class:`KrylovNewton` never forms ``J``: it solves each system by GMRES with finite-difference
  Jacobian-vector products (one evaluation each), in the variables scaled by the error weights
  ``atol + rtol |z|`` (so that a component of size 1e-5 under atol 1e-10 counts as much as one
  of size 1), for large states whose samples are coupled.

:func:`choose` picks one for ``linear_solver="auto"``.
"""

from __future__ import annotations

import abc
import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import _kernels as kernels

__all__ = [
    "DENSE_MAX",
    "LINEAR_SOLVERS",
    "NEWTON_MAX",
    "REVERSE_MAX",
    "BlockNewton",
    "DenseNewton",
    "FusedUpdate",
    "KrylovNewton",
    "LinearSolver",
    "block_jacobian",
    "block_transposed_solve",
    "choose",
    "fused_iteration",
    "fused_iteration_usable",
    "fused_update_usable",
    "gmres",
    "jacobian",
    "shifted_blocks",
]

DENSE_MAX = 1024
"""``linear_solver='auto'`` forms a dense Jacobian (of the whole state, or of each sample's
block) up to this many elements."""


LINEAR_SOLVERS = ("auto", "dense", "block", "krylov")

INVERSE_MAX = 16
"""Up to this many coupled elements the dense solver keeps the inverse of ``I - g J`` rather
than its LU factors: a Newton iteration's solve is then one matrix-vector product (about 2 µs
against an LU solve's 12 µs on a 2-element state), at the accuracy a Newton update needs."""


@contextlib.contextmanager
def _quiet_torch_func() -> Iterator[None]:
    """``torch.func``'s first use imports modules that raise a ``DeprecationWarning`` (about
    ``torch.jit.script``); where warnings are errors (pytest's ``-W error``) that would make
    every Jacobian fall back to finite differences, so it is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


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


REVERSE_MAX = 8
"""Up to this many elements (of the state, or of a sample's block) a Jacobian is formed row by
row in reverse mode: one evaluation recorded by autograd and one backward pass per row. That
costs 0.15–0.25 ms for Van der Pol and Robertson where ``torch.func.jacfwd``'s transforms cost
0.7–1.9 ms (and 0.23 against 0.96 ms for the blocks of 1,024 Van der Pol systems); beyond
about ten rows ``jacfwd``'s one batched pass is cheaper."""


def _reverse_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """``∂fn/∂x`` row by row in reverse mode for ``x`` and ``fn(x)`` of shape ``(..., n)``
    whose leading entries do not interact: ``[..., i, j] = ∂fn(x)[..., i] / ∂x[..., j]``.
    ``None`` where the result does not depend on ``x`` through autograd (the dynamics detach
    their input, or ignore it) or is not finite: the caller then takes ``jacfwd``. (A
    backward pass through ``torch.where`` multiplies the branch it did not take by zero, and
    0 · inf is NaN: ``where(t > 0.5, f * nan, f)`` has a NaN reverse-mode Jacobian before 0.5
    and a finite forward-mode one.)"""
    leaf = x.detach().requires_grad_()
    with torch.enable_grad():
        out = fn(leaf)
        if not out.requires_grad:
            return None
        n = x.shape[-1]
        rows = []
        for i in range(n):
            (row,) = torch.autograd.grad(out[..., i].sum(), leaf, retain_graph=i < n - 1,
                                         allow_unused=True)  # fmt: skip
            rows.append(torch.zeros_like(x) if row is None else row)
    J = torch.stack(rows, dim=-2)
    return J if bool(torch.isfinite(J).all()) else None


def jacobian(ev, t: Any, z: torch.Tensor, m: int) -> torch.Tensor:
    """``∂f/∂y`` at ``(t, z)`` on the first ``m`` elements of the flat state: row by row in
    reverse mode up to :data:`REVERSE_MAX` elements, by ``torch.func.jacfwd`` beyond, where the
    dynamics can be differentiated; else by finite differences."""
    fn = _flat_call(ev, t, z.shape)
    flat = z.detach().reshape(-1)
    with torch.no_grad():
        if m == flat.numel():
            try:
                with _quiet_torch_func():
                    J = _reverse_rows(fn, flat) if m <= REVERSE_MAX else None
                    return torch.func.jacfwd(fn)(flat) if J is None else J
            except Exception:  # untraceable dynamics (in-place ops, .item(), autograd inside)
                pass
        return _fd_jacobian(fn, flat, fn(flat), m)


def block_jacobian(ev, t: Any, z: torch.Tensor) -> torch.Tensor:
    """The diagonal blocks ``∂f_b/∂y_b`` of a batch ``z`` of shape ``(B, ...)`` whose samples do
    not interact, shape ``(B, n, n)``: row ``i`` of every sample's block at once, ``n``
    backward passes in all, up to :data:`REVERSE_MAX` elements a sample; beyond, the derivative
    along element ``j`` of every sample at once by ``torch.func.jacfwd`` (finite differences
    where the dynamics cannot be differentiated)."""
    B = z.shape[0]
    base = z.detach().reshape(B, -1)
    n = base.shape[1]

    def fn(v: torch.Tensor) -> torch.Tensor:
        return ev(t, (base + v).reshape(z.shape)).reshape(B, n)

    def at(x: torch.Tensor) -> torch.Tensor:
        return ev(t, x.reshape(z.shape)).reshape(B, n)

    with torch.no_grad():
        zero = base.new_zeros(n)
        try:
            with _quiet_torch_func():
                J = _reverse_rows(at, base) if n <= REVERSE_MAX else None
                return torch.func.jacfwd(fn)(zero) if J is None else J
        except Exception:  # untraceable dynamics
            f0 = fn(zero)
            eps = math.sqrt(torch.finfo(z.dtype).eps)
            step = eps * base.abs().clamp(min=1.0)  # (B, n)
            cols = []
            for j in range(n):
                v = torch.zeros_like(base)
                v[:, j] = step[:, j]
                cols.append(
                    (ev(t, (base + v).reshape(z.shape)).reshape(B, n) - f0) / step[:, j : j + 1]
                )
            return torch.stack(cols, dim=2)


def is_block_diagonal(ev, t: Any, z: torch.Tensor, blocks: torch.Tensor) -> bool:
    """Whether the batch's Jacobian is the block diagonal ``blocks``: one product of the full
    Jacobian with a random direction against the blocks' (a coupling between samples shows as
    a difference far above rounding)."""
    B = z.shape[0]
    gen = torch.Generator(device=z.device).manual_seed(0)
    u = torch.randn(z.shape, generator=gen, dtype=z.dtype, device=z.device)
    with torch.no_grad():
        try:
            with _quiet_torch_func():
                full = torch.func.jvp(lambda y: ev(t, y), (z.detach(),), (u,))[1]
        except Exception:
            return False
    blocked = (blocks @ u.reshape(B, -1, 1)).reshape(z.shape)
    scale = float(full.abs().max()) + float(blocked.abs().max()) + 1e-300
    return float((full - blocked).abs().max()) <= 1e-8 * scale


def shifted_blocks(J: torch.Tensor, g: Any) -> torch.Tensor:
    """``I - g J`` for Jacobian blocks ``J`` of shape ``(B, n, n)``; ``g`` a number or one value
    per sample."""
    eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
    scale = g.reshape(-1, 1, 1) if isinstance(g, torch.Tensor) else g
    return eye - scale * J


def block_transposed_solve(ev, t: Any, z: torch.Tensor, g: Any, v: torch.Tensor) -> torch.Tensor:
    """``(I - g J(z))⁻ᵀ v`` per sample, with the Jacobian blocks at ``z`` formed afresh (the
    implicit function theorem's solve in the backward pass of a converged stage)."""
    J = block_jacobian(ev, t, z)
    A = shifted_blocks(J, g).transpose(1, 2)
    return torch.linalg.solve(A, v.reshape(J.shape[0], -1, 1)).reshape(v.shape)


class LinearSolver(abc.ABC):
    """Solves Newton's systems ``(I - g J) x = r`` of one solve, on the first ``m`` (coupled)
    elements; the rest pass through (their derivative does not depend on them)."""

    fresh = True  # whether the current Jacobian was formed at the current step

    def __init__(self, m: int) -> None:
        self.m = m

    @abc.abstractmethod
    def prepare(self, ev, t: Any, z: torch.Tensor, g: Any, weights: torch.Tensor) -> None:
        """Set up the solves of one stage at ``(t, z)`` with ``g = h γ``; ``weights`` are the
        error weights ``atol + rtol |z|`` (a solver may scale its systems by them)."""

    @abc.abstractmethod
    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """``(I - g J)⁻¹ r`` on the coupled elements (flat vectors)."""

    def refresh(self) -> bool:
        """Form a new Jacobian at the next :meth:`prepare`; ``False`` where that cannot help."""
        return False

    def inverse(self) -> torch.Tensor | None:
        """The inverse of ``I - g J`` over every element, where this solver keeps one (the
        fused Newton update reads it), else ``None``."""
        return None

    def step_done(self, slow: bool = False) -> None:  # noqa: B027 (matrix-free: no Jacobian)
        """A step was accepted (``slow``: its Newton iterations converged slowly, so a new
        Jacobian is due): the Jacobian at hand is no longer fresh."""

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
        self._factored: tuple[Any, Any] | None = None  # (g, the factors of I - g J)

    def _form(self, ev, t, z) -> torch.Tensor:
        return jacobian(ev, t, z, self.m)

    def _jacobian(self) -> torch.Tensor:
        if self.J is None:
            raise RuntimeError("prepare() forms the Jacobian before it is factorised or used")
        return self.J

    def _factors(self) -> Any:
        """What :meth:`_factor` made: the inverse of ``I - g J`` (up to :data:`INVERSE_MAX`
        elements) or its LU factors."""
        if self._factored is None:
            raise RuntimeError("prepare() factorises the iteration matrix before solve()")
        return self._factored[1]

    def _factor(self, g: Any) -> Any:
        J = self._jacobian()
        eye = torch.eye(self.m, dtype=J.dtype, device=J.device)
        if self.m <= INVERSE_MAX:  # one matrix-vector product per solve instead of an LU solve
            return torch.linalg.inv(eye - g * J).contiguous()  # row-major, as the kernel reads
        return torch.linalg.lu_factor(eye - g * J)

    def prepare(self, ev, t, z, g, weights):
        if self.J is None:
            self.J = self._form(ev, t, z)
            self.fresh = True
            self.stats.jacobians = (self.stats.jacobians or 0) + 1
            self._factored = None
        if self._factored is None or not _same(self._factored[0], g):
            self._factored = (g, self._factor(g))

    def inverse(self) -> torch.Tensor | None:
        return self._factors() if self.m <= INVERSE_MAX else None

    def solve(self, r):
        m, factors = self.m, self._factors()
        if m <= INVERSE_MAX:
            x = torch.mv(factors, r[:m])
        else:
            x = torch.linalg.lu_solve(*factors, r[:m].unsqueeze(1)).squeeze(1)
        return x if m == r.numel() else torch.cat([x, r[m:]])

    def refresh(self) -> bool:
        if self.fresh:
            return False
        self.J = None
        return True

    def step_done(self, slow: bool = False) -> None:
        self.fresh = False
        if slow:
            self.J = None

    def state(self):
        return self.J, self.fresh

    def restore(self, state):
        (self.J, self.fresh), self._factored = state, None


class BlockNewton(DenseNewton):
    """One Jacobian block per sample of a batch of independent samples, factorised as a
    batch; ``g`` is a number or a tensor of one value per sample."""

    def __init__(self, shape: torch.Size, stats) -> None:
        super().__init__(math.prod(shape), stats)
        self.shape = shape
        self.batch = shape[0]
        self.n = self.m // self.batch

    def _form(self, ev, t, z):
        return block_jacobian(ev, t, z)

    def _factor(self, g: Any) -> Any:
        return torch.linalg.lu_factor(shifted_blocks(self._jacobian(), g))

    def inverse(self) -> torch.Tensor | None:
        return None  # LU factors of the blocks

    def solve(self, r):
        x = torch.linalg.lu_solve(*self._factors(), r.reshape(self.batch, self.n, 1))
        return x.reshape(-1)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


class KrylovNewton(LinearSolver):
    """Matrix-free: GMRES with Jacobian-vector products by finite differences around the
    current Newton iterate (one evaluation each), on the system scaled by the error weights
    ``w``: ``W⁻¹ (I - g J) W x̃ = W⁻¹ r``, ``x = W x̃`` (as CVODE does)."""

    def __init__(self, m: int, restart: int = 30, rel_tol: float = 1e-3) -> None:
        super().__init__(m)
        self.restart, self.rel_tol = restart, rel_tol

    def prepare(self, ev, t, z, g, weights):
        self._fn = _flat_call(ev, t, z.shape)
        self._g = g
        self._z = z.reshape(-1)
        self._f = self._fn(self._z)
        self._w = weights.reshape(-1)[: self.m]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``W⁻¹ (I - g J) W v``, ``J W v`` by a forward difference of size one error weight
        along ``W v`` (a perturbation at the tolerance's scale)."""
        nv = float(torch.linalg.vector_norm(v)) / math.sqrt(max(v.numel(), 1))
        if nv == 0.0:
            return v.clone()
        u = self._w * v
        eps = 1.0 / nv  # a perturbation of one error weight in the RMS norm (CVODE's choice)
        z = self._z.clone()
        z[: self.m] += eps * u
        ju = (self._fn(z)[: self.m] - self._f[: self.m]) / eps
        return v - self._g * ju / self._w

    def solve(self, r):
        m = self.m
        x = gmres(self.matvec, r[:m] / self._w, self.restart, self.rel_tol) * self._w
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


def choose(kind: str, y: torch.Tensor, coupled: int | None, stats, ev=None, t=None) -> LinearSolver:
    """The linear solver for ``linear_solver=kind`` on the state ``y`` (the first ``coupled``
    elements coupled, all where ``None``). ``"auto"``: dense up to :data:`DENSE_MAX` elements;
    beyond, per-sample blocks where the batch's samples do not interact (checked once, with
    one Jacobian-vector product) and each has at most :data:`DENSE_MAX` elements; Krylov
    otherwise."""
    n = y.numel()
    m = coupled or n
    if kind == "dense" or (kind == "auto" and m <= DENSE_MAX):
        return DenseNewton(m, stats)
    if kind in ("auto", "block"):
        batched = y.ndim >= 2 and y.shape[0] > 1 and m == n
        if batched and n // y.shape[0] <= DENSE_MAX:
            block = BlockNewton(y.shape, stats)
            if kind == "block":
                return block
            block.J = block_jacobian(ev, t, y)
            if is_block_diagonal(ev, t, y, block.J):
                stats.jacobians = (stats.jacobians or 0) + 1
                return block
        if kind == "block":
            raise InvalidArgumentError(
                f"linear_solver='block' needs a batch of samples in the state's first dimension, "
                f"each of at most {DENSE_MAX} elements, and no coupled-state tail; got a state "
                f"of shape {tuple(y.shape)}. Use linear_solver='dense' or 'krylov'",
                argument="linear_solver",
            )
    return KrylovNewton(m)


# ----------------------------------------------------------------- fused updates (C kernels)

NEWTON_MAX = 16
"""The most elements (a sample's, on the per-sample lane) a fused Newton update takes (the
kernel keeps the residual on its stack)."""

_BOOL, _F64, _I64 = torch.bool, torch.float64, torch.int64


def fused_update_usable(rhs: torch.Tensor, weights: torch.Tensor, inverse: Any, g: Any) -> bool:
    """Whether :class:`FusedUpdate` may take a stage: an inverse of ``I - g J`` over every
    element, a number ``g``, and buffers the kernel reads (and the kernels not disabled)."""
    n, dtype = rhs.numel(), rhs.dtype
    return (
        type(g) is float and n <= NEWTON_MAX and isinstance(inverse, torch.Tensor)
        and inverse.numel() == n * n and kernels.readable(rhs, kernels.MAX_BYTES)
        and weights.dtype is dtype and inverse.dtype is dtype
        and weights.is_contiguous() and inverse.is_contiguous()
    )  # fmt: skip


class FusedUpdate:
    """One stage's Newton updates, each one call of the kernel (the tensor form is six
    operations and three allocations): ``z - inverse @ (z - rhs - g fz)`` and the RMS of the
    update in the error ``weights``. The stage's fixed buffers (its right side, the inverse,
    the weights; held here, so alive) are proven once, at construction; an update proves its
    iterate, the derivative and its output."""

    __slots__ = ("_fixed", "double", "dtype", "g", "n")

    def __init__(
        self, rhs: torch.Tensor, g: float, inverse: torch.Tensor, weights: torch.Tensor
    ) -> None:
        n, dtype, prove = rhs.numel(), rhs.dtype, kernels.prove
        self.n, self.dtype, self.double, self.g = n, dtype, dtype is torch.float64, g
        self._fixed = (
            (rhs, inverse, weights),  # (the addresses below stay valid while these live)
            prove(rhs, n, dtype, "a stage's right side"),
            prove(inverse, n * n, dtype, "the inverse of I - g J"),
            prove(weights, n, dtype, "a stage's error weights"),
        )

    def __call__(self, z: torch.Tensor, fz: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """The update at ``z`` with ``fz = f(z)``; ``None`` where ``fz`` is not a contiguous
        CPU tensor of the state's size and dtype (the caller then takes the tensor form)."""
        n, dtype, prove = self.n, self.dtype, kernels.prove
        z_address = prove(z, n, dtype, "a Newton iterate")
        f_address = kernels.address_if(fz, n, dtype)
        if not f_address:
            return None
        _, rhs, inverse, weights = self._fixed
        out = torch.empty_like(z)
        size = kernels._fused.newton(
            self.double, n, prove(out, n, dtype, "a Newton iterate"), z_address, rhs, f_address,
            self.g, inverse, weights,
        )  # fmt: skip
        return out, size


def fused_iteration_usable(
    rhs: torch.Tensor, weights: torch.Tensor, inverse: Any, g: torch.Tensor
) -> bool:
    """Whether :func:`fused_iteration` may take a stage of the per-sample lane: a batch of
    inverses ``(B, n, n)`` with ``n`` at most :data:`NEWTON_MAX`, one ``g`` per sample, and
    buffers the kernel reads (and the kernels not disabled)."""
    B = rhs.shape[0] if rhs.ndim else 0
    n = rhs.numel() // B if B else 0
    return (
        0 < n <= NEWTON_MAX and isinstance(inverse, torch.Tensor)
        and inverse.numel() == B * n * n and g.numel() == B
        and kernels.readable(rhs, kernels.MAX_BYTES)
        and all(x.dtype is rhs.dtype and x.is_contiguous() for x in (weights, inverse, g))
    )  # fmt: skip


def fused_iteration(it: Any, fz: torch.Tensor, rhs, g, inverse, weights, slowest, fresh,
                    kappa: float, max_iters: int) -> int | None:  # fmt: skip
    """One Newton iteration of every sample of the per-sample lane in one call of the kernel:
    the update and the stopping rule of the tensor form
    (:meth:`~._implicit_per_sample._Iteration.tensor_step`), on the iteration ``it``'s tensors
    in place (``it.z`` a new tensor). Returns the flags (1: a size was not finite, 2: a sample
    gave up, 4: one that gave up had an old Jacobian, 8: a sample runs on), or ``None`` where
    ``fz`` is not a contiguous CPU tensor of the state's size and dtype (the caller then takes
    the tensor form)."""
    z = it.z
    B, dtype, prove = z.shape[0], z.dtype, kernels.prove
    N = z.numel()
    n = N // B
    f_address = kernels.address_if(fz, N, dtype)
    if not f_address:
        return None
    out = torch.empty_like(z)
    flags = kernels._fused.newton_batch(
        dtype is torch.float64, B, n, prove(out, N, dtype, "a Newton iterate"),
        prove(z, N, dtype, "a Newton iterate"), prove(rhs, N, dtype, "a stage's right side"),
        f_address, prove(g, B, dtype, "g per sample"),
        prove(inverse, N * n, dtype, "the inverses of I - g J"),
        prove(weights, N, dtype, "a stage's error weights"),
        prove(it.running, B, _BOOL, "running"), prove(it.prev, B, _F64, "prev"),
        prove(it.eta, B, _F64, "eta"), prove(it.eta_done, B, _F64, "eta_done"),
        prove(it.count, B, _I64, "count"), prove(slowest, B, _F64, "slowest"),
        prove(it.converged, B, _BOOL, "converged"), prove(fresh, B, _BOOL, "fresh"),
        prove(it.nonfinite, B, _BOOL, "nonfinite"), prove(it.give_up, B, _BOOL, "give_up"),
        float(kappa), int(max_iters),
    )  # fmt: skip
    it.z = out
    return flags
