"""The kernels' protocol, :class:`Kernels`: the tensor-level primitives of an explicit
Runge–Kutta solve (a step's stages, its error ratio, the first step's heuristic, dense output,
the adjoint's quadrature), and their implementation in tensor operations, :class:`TorchKernels`,
for any device, dtype and grad mode. The fused CPU implementations, and :func:`~._kernels.select`
which picks one for a solve, are in :mod:`._kernels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._controller import initial_step

__all__ = ["Kernels", "Terms", "TorchKernels", "combine", "hermite", "rms"]

Terms = Sequence[tuple[int, float]]


def combine(y: torch.Tensor, ks: Sequence[torch.Tensor], terms: Terms, dt: Any) -> torch.Tensor:
    """``y + dt * sum(c * ks[j] for j, c in terms)`` in tensor operations.

    With a float ``dt`` this is one out-of-place add followed by in-place adds on the fresh
    result (about 2.5 µs each on the CPU, the dominant cost of a step besides ``f``); in-place
    adds on a fresh tensor are safe under autograd, as ``add_`` saves nothing for backward. A
    tensor ``dt`` (one step size per sample, broadcast) scales the stages' float-weighted sum
    once; tensor weights (a dense output's) take out-of-place products."""
    if not terms:
        return y
    if type(dt) is float:
        j, c = terms[0]
        out = torch.add(y, ks[j], alpha=c * dt)
        for j, c in terms[1:]:
            out.add_(ks[j], alpha=c * dt)
        return out
    if isinstance(dt, torch.Tensor) and all(type(c) is float for _, c in terms):
        j, c = terms[0]
        acc = ks[j] * c
        for j, c in terms[1:]:
            acc.add_(ks[j], alpha=c)
        return torch.addcmul(y, dt, acc)
    out = y
    for j, c in terms:
        out = out + (c * dt) * ks[j]
    return out


def hermite(y0, y1, f0, f1, h: Any, x: Any) -> torch.Tensor:
    """The cubic Hermite interpolant through ``y0, y1`` with slopes ``f0, f1`` over a step of
    ``h``, at the fraction ``x`` of it."""
    h00 = (1 + 2 * x) * (1 - x) * (1 - x)
    h10 = x * (1 - x) * (1 - x)
    h01 = x * x * (3 - 2 * x)
    h11 = x * x * (x - 1)
    return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1


def rms(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x)) / math.sqrt(max(x.numel(), 1))


class Kernels:
    """The tensor-level primitives of an explicit Runge–Kutta solve, for one solve (it keeps the
    solve's tolerances, norm and workspace). :class:`TorchKernels` forms them with tensor
    operations, :class:`~._kernels.FusedKernels` in one pass of the C module each,
    :class:`~._kernels.GraphKernels` both ways; :func:`~._kernels.select` picks. A method and
    a loop call these and never branch on which they have."""

    def __init__(self, rtol: Any, atol: Any, norm: Callable[[torch.Tensor], Any] | None) -> None:
        self.rtol, self.atol, self.norm = rtol, atol, norm
        self._abs_of: torch.Tensor | None = None
        self._abs: torch.Tensor | None = None

    # stages -----------------------------------------------------------------------------
    def rk_stages(self, ev, tab, t: float, y, f0, dt, last_node: float | None = None):
        """One explicit Runge–Kutta step: ``(y1, stages)``. ``last_node`` overrides the
        evaluation time of stages at ``c == 1`` (just before a jump)."""
        ks = [f0]
        yi = y
        c = tab.c
        a_terms = tab.a_terms
        dts = dt if type(dt) is float else self.state_dt(dt)
        for i in range(1, len(c)):
            yi = combine(y, ks, a_terms[i], dts)
            ti = t + c[i] * dt
            if last_node is not None and c[i] == 1.0:
                ti = last_node
            ks.append(ev(ti, yi))
        y1 = yi if tab.fsal else combine(y, ks, tab.b_terms, dts)
        return y1, ks

    def state_dt(self, dt: Any) -> Any:
        """A step size as it multiplies the state (per-sample kernels broadcast it)."""
        return dt

    def axpy(self, y: torch.Tensor, k: torch.Tensor, h: float) -> torch.Tensor:
        """``y + h * k``."""
        return y + h * k

    # error ------------------------------------------------------------------------------
    def _magnitude(self, y: torch.Tensor) -> torch.Tensor:
        magnitude = self._abs
        if self._abs_of is not y or magnitude is None:
            magnitude = y.abs()
            self._abs_of, self._abs = y, magnitude
        return magnitude

    def scaled_norm(self, x: torch.Tensor, y: torch.Tensor, y1: torch.Tensor | None = None):
        """``norm(x / (atol + rtol * max(|y|, |y1|)))`` (``|y|`` alone without ``y1``)."""
        with torch.no_grad():
            mag = self._magnitude(y)
            if y1 is not None:
                abs1 = y1.abs()
                mag = torch.maximum(mag, abs1)
                self._abs_of, self._abs = y1, abs1  # the next step starts from y1 if accepted
            scale = (mag * self.rtol).add_(self.atol)
            norm = rms if self.norm is None else self.norm
            return float(norm(x / scale))

    def error_ratio(self, tab, y: torch.Tensor, y1: torch.Tensor, ks, dt: float) -> float:
        """The step's error ratio: the scaled norm of ``dt * sum(b_err_j * ks[j])``."""
        with torch.no_grad():
            terms = tab.b_err_terms
            if type(dt) is float:
                j, e = terms[0]
                err = torch.mul(ks[j], e * dt)
                for j, e in terms[1:]:
                    err.add_(ks[j], alpha=e * dt)
            else:
                err = combine(torch.zeros_like(y), ks, terms, self.state_dt(dt))
            return self.scaled_norm(err, y, y1)

    def initial_step(self, ev, order: int, t0: Any, y0, f0) -> Any:
        """Hairer's initial step heuristic, as torchdiffeq: the scaled norms of ``y0`` and
        ``f0``, one evaluation at ``t0 + h0`` and the scaled change of slope there."""
        with torch.no_grad():
            d0, d1 = self.scaled_norm(y0, y0), self.scaled_norm(f0, y0)

            def d2_at(h0):
                f1 = ev(t0 + h0, self.axpy(y0, f0, h0))
                return self.scaled_norm(f1 - f0, y0) / h0

            return initial_step(order, d0, d1, d2_at)

    # dense output -----------------------------------------------------------------------
    def dense(self, tab, y0, y1, ks, f1, dt: float, theta: float) -> torch.Tensor:
        """``y0 + dt * sum(q_j(theta) * k_j)`` with ``k_stages = f1``: the quartic through
        ``y0, y_mid, y1`` with slopes ``f0, f1`` (``y1`` itself at the step's end)."""
        if type(theta) is float and theta >= 1.0:
            return y1
        if type(dt) is not float:
            dt, theta = self.state_dt(dt), self.state_dt(theta)
        terms = [
            (j, theta * (q1 + theta * (q2 + theta * (q3 + theta * q4))))
            for j, (q1, q2, q3, q4) in tab.dense_poly
        ]
        return combine(y0, [*ks, f1], terms, dt)

    # quadrature -------------------------------------------------------------------------
    def accumulate_(self, targets, stage_parts, tab, dt: float) -> None:
        """``targets[i] += dt * sum(b_j * stage_parts[j][i])``, in place."""
        for j, w in tab.b_terms:
            torch._foreach_add_(targets, stage_parts[j], alpha=w * dt)


class TorchKernels(Kernels):
    """The primitives in tensor operations (any device, dtype and grad mode)."""
