"""Implicit methods on the per-sample lane: every sample its own step size, Newton iteration,
Jacobian and error test.

The stepper below is :class:`~._implicit._ESDIRKStepper`'s algorithm written for a batch whose
samples are independent systems: every scalar of the joint stepper (the step size, Newton's
iteration count, contraction estimate and convergence test, whether the Jacobian is fresh or
due) is a tensor with one entry per sample, and the Jacobian is one ``n × n`` block per sample,
factorised as a batch (:func:`~._newton.block_jacobian`, batched LU) — never the dense Jacobian
of the whole batch. A sample whose iteration has converged stops evaluating (the lane's counting
evaluator counts evaluations per sample), so every sample takes the evaluations, steps and
answer it would take solved alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _kernels as kernels
from ._implicit import ESDIRK, FINAL_STAGE_FACTOR, JACOBIAN_RATE, DIRKTableau, _ImplicitStage
from ._messages import Status, failure
from ._methods import Stepper
from ._newton import (
    INVERSE_MAX,
    block_jacobian,
    block_transposed_solve,
    fused_iteration,
    fused_iteration_usable,
    shifted_blocks,
)

__all__ = ["PerSampleESDIRKStepper"]


class _Blocks:
    """Per-sample Jacobian blocks ``(B, n, n)`` with, per sample, whether a new one is due
    (``due``) and whether the one at hand was formed in the current step (``fresh``); ``I - g J``
    factorised as a batch for a per-sample ``g``."""

    def __init__(self, y: torch.Tensor, stats) -> None:
        B = y.shape[0]
        self.stats = stats
        self.n = y[0].numel()
        self.J = y.new_zeros(B, self.n, self.n)
        self.due = torch.ones(B, dtype=torch.bool, device=y.device)
        self.fresh = torch.ones(B, dtype=torch.bool, device=y.device)
        self._lu: tuple[Any, Any] | None = None

    def prepare(self, ev, t: torch.Tensor, z: torch.Tensor, g: torch.Tensor, who: torch.Tensor):
        """Form the blocks due among the samples ``who`` at ``(t, z)`` (one evaluation, counted
        for those samples only), then factorise ``I - g J`` where a block or ``g`` changed."""
        form = self.due & who
        if bool(form.any()):
            mask = ev.mask
            ev.mask = form
            try:
                J = block_jacobian(ev, t, z)
            finally:
                ev.mask = mask
            self.J = torch.where(form.reshape(-1, 1, 1), J, self.J)
            self.due = self.due & ~form
            self.fresh = self.fresh | form
            self.stats.jacobians = (self.stats.jacobians or 0) + 1
            self._lu = None
        if self._lu is None or self._lu[0] is not g:
            A = shifted_blocks(self.J, g)
            # small blocks keep their inverses, as the joint lane's dense solver does: a solve
            # is then one batched matrix product (13 µs against an LU solve's 30 µs for 1,024
            # blocks of 2 × 2)
            self._lu = (
                g,
                # (contiguous, as the C kernel reads it: inv returns each block transposed)
                torch.linalg.inv(A).contiguous()
                if self.n <= INVERSE_MAX
                else torch.linalg.lu_factor(A),
            )

    def inverse(self) -> torch.Tensor | None:
        """The inverses of the blocks' ``I - g J`` (``None`` where LU factors are kept)."""
        return self._lu[1] if self._lu is not None and self.n <= INVERSE_MAX else None

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        if self._lu is None:
            raise RuntimeError("prepare() forms the blocks before solve()")
        column, inverse = r.reshape(r.shape[0], self.n, 1), self.inverse()
        if inverse is not None:
            return torch.bmm(inverse, column).reshape(r.shape)
        return torch.linalg.lu_solve(*self._lu[1], column).reshape(r.shape)

    def transposed(self, ev, t, z: torch.Tensor, g: torch.Tensor, keep: torch.Tensor):
        """``v ↦ (I - g J(z))⁻ᵀ v`` per sample at converged stages (the implicit function
        theorem's solve for :class:`~._implicit._ImplicitStage`); zero for the samples not in
        ``keep`` (whose stage did not converge and whose step is discarded)."""

        def solve(v: torch.Tensor) -> torch.Tensor:
            x = block_transposed_solve(ev, t, z, g, v)
            return torch.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), x, 0.0)

        return solve


NONFINITE, GAVE_UP, RETRY, RUNS = 1, 2, 4, 8
"""The flags of a Newton iteration of the batch: a sample's update was not finite, a sample
gave up, one that gave up had a Jacobian not formed in this step, a sample runs on."""


class _Iteration:
    """Every sample's Newton iteration of one stage in progress: the iterate ``z`` and, per
    sample, whether it runs on (``running``) or has ``converged``, its updates so far
    (``count``), the last update's size (``prev``), the convergence estimate ``eta`` (and
    ``eta_done``, the one it converged with), and whether this iteration's update was not finite
    (``nonfinite``) or the sample gave up (``give_up``)."""

    __slots__ = ("converged", "count", "eta", "eta_done", "give_up", "nonfinite", "prev",
                 "running", "z")  # fmt: skip

    def __init__(self, guess: torch.Tensor, who: torch.Tensor, eta: torch.Tensor) -> None:
        B, dev = guess.shape[0], guess.device
        self.z = guess.clone()
        self.running = who.clone()
        self.converged = torch.zeros(B, dtype=torch.bool, device=dev)
        self.nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        self.give_up = torch.zeros(B, dtype=torch.bool, device=dev)
        self.count = torch.zeros(B, dtype=torch.long, device=dev)
        self.prev = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
        self.eta = eta.clone()
        self.eta_done = eta.clone()

    def tensor_step(self, stepper, fz, rhs, g_state, weights, kappa, max_it) -> int:
        """One Newton iteration of every running sample in tensor operations (what the C
        kernel :func:`~._newton.fused_iteration` does in one pass); returns the flags."""
        running, count = self.running, self.count
        view = (rhs.shape[0],) + (1,) * (rhs.ndim - 1)
        delta = stepper._blocks().solve(torch.addcmul(self.z - rhs, g_state, fz, value=-1.0))
        self.z = torch.where(running.reshape(view), self.z - delta, self.z)
        size = stepper._rms(delta / weights).double()
        nonfinite = running & ~torch.isfinite(size)
        rate = size / self.prev
        later = count > 0
        give_up = nonfinite | (running & later & (rate >= 0.9))
        going = running & ~give_up
        moved = going & later
        stepper.slowest = torch.where(moved, torch.maximum(stepper.slowest, rate),
                                      stepper.slowest)  # fmt: skip
        eta = torch.where(moved, rate / (1.0 - rate), self.eta)
        done = going & ((eta * size <= kappa) | (size <= 1e-10))
        self.eta_done = torch.where(done, eta, self.eta_done)  # carried on when the stage ends
        self.eta = eta
        self.converged = self.converged | done
        self.prev = torch.where(going, size, self.prev)
        self.count = count = count + going
        running = going & ~done
        give_up = give_up | (running & (count >= max_it))
        self.running = running & ~give_up
        self.nonfinite, self.give_up = nonfinite, give_up
        retry = give_up & ~stepper._blocks().fresh
        found = torch.stack((nonfinite, give_up, retry, self.running)).any(dim=1).tolist()
        return sum(bit for bit, f in zip((NONFINITE, GAVE_UP, RETRY, RUNS), found) if f)

    def restart(self, retry: torch.Tensor, guess: torch.Tensor) -> None:
        """Start the samples ``retry`` again from ``guess`` (with a fresh Jacobian)."""
        view = (retry.shape[0],) + (1,) * (guess.ndim - 1)
        self.z = torch.where(retry.reshape(view), guess, self.z)
        self.count = torch.where(retry, 0, self.count)
        self.prev = torch.where(retry, math.inf, self.prev)
        self.eta = torch.where(retry, 1.0, self.eta)
        self.running = self.running | retry


class PerSampleESDIRKStepper(Stepper):
    """:class:`~._implicit.ESDIRK` on the per-sample lane (``t`` and ``dt`` of shape
    ``(batch,)``; ``ev`` the lane's counting evaluator, whose ``mask`` says which samples an
    evaluation counts for)."""

    method: ESDIRK
    tab: DIRKTableau

    def __init__(self, method: ESDIRK, ev, k) -> None:
        super().__init__(method, ev, k)
        self.rtol, self.atol = k.rtol, k.atol
        self.blocks: _Blocks | None = None  # formed at the first step, for its batch
        empty = torch.empty(0)
        self.eta = empty  # Newton's convergence estimate, per sample
        self.failed = empty  # per sample: the step's Newton iterations did not converge
        self.slowest = empty  # per sample: the step's slowest contraction rate
        self._mean = empty  # 1/n per element, for _rms

    def _blocks(self) -> _Blocks:
        if self.blocks is None:
            raise RuntimeError("the per-sample implicit stepper forms its blocks in step()")
        return self.blocks

    def _weights(self, z: torch.Tensor) -> torch.Tensor:
        return z.abs().mul_(self.rtol).add_(self.atol)

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample, the RMS of ``x``: a matrix-vector product with ``1/n`` (5 µs for 1,024
        samples of 2 elements, where ``pow().mean(dim=1)`` took 25: a reduction over a short
        inner dimension is slow)."""
        x = x.reshape(x.shape[0], -1)
        n = x.shape[1]
        if self._mean.shape != (n,) or self._mean.dtype != x.dtype:
            self._mean = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
        return torch.mv(x * x, self._mean).sqrt_()

    def _newton(self, t, rhs, guess, g, g_state, who, final):
        """Every sample's stage fixed point (``who``: the samples that solve it), and which
        samples converged. Per sample as :meth:`~._implicit._ESDIRKStepper._newton`: with the
        Jacobian at hand, then once with a fresh one; a sample stops evaluating when it has
        converged or failed. An iteration is one call of the C kernel
        (:func:`~._newton.fused_iteration`) where it can read the buffers, else
        :meth:`_Iteration.tensor_step`; one read from the device per iteration either way."""
        ev, blocks = self.ev, self._blocks()
        kappa = self.method.newton_stop
        max_it = self.method.max_newton_iters
        mask = ev.mask
        it = _Iteration(guess, who, self.eta.clamp(min=FINAL_STAGE_FACTOR) if final else self.eta)
        weights = self._weights(guess)  # the updates' scale, as the joint lane's
        blocks.prepare(ev, t, it.z, g, it.running)
        g_flat = g_state.reshape(-1)
        fused = fused_iteration_usable(rhs, weights, blocks.inverse(), g_flat)
        go_on = True
        try:
            while go_on:
                ev.mask = mask & it.running
                fz = ev(t, it.z)
                flags = None
                if fused:
                    flags = fused_iteration(it, fz, rhs, g_flat, blocks.inverse(), weights,
                                            self.slowest, blocks.fresh, kappa, max_it)  # fmt: skip
                if flags is None:
                    flags = it.tensor_step(self, fz, rhs, g_state, weights, kappa, max_it)
                go_on = bool(flags & RUNS)
                if flags & NONFINITE:  # the dynamics themselves NaN/inf: no step size helps
                    B = rhs.shape[0]
                    broken = it.nonfinite & (it.count == 0)  # (one that gave up kept its count)
                    broken &= ~torch.isfinite(fz.reshape(B, -1)).all(dim=1)
                    if bool(broken.any()):
                        b = int(broken.nonzero()[0])
                        raise failure(Status.NONFINITE, time=float(ev.sign * t[b]))
                if flags & GAVE_UP:
                    self.eta = torch.where(it.give_up, 1.0, self.eta)
                if flags & RETRY:  # with a fresh Jacobian where the one at hand is not
                    retry = it.give_up & ~blocks.fresh
                    blocks.due |= retry
                    it.restart(retry, guess)
                    go_on = True
                    ev.mask = mask
                    blocks.prepare(ev, t, it.z, g, retry)
        finally:
            ev.mask = mask
        # the next stage's first update is judged by this one's rate (see _ESDIRKStepper)
        self.eta = torch.where(it.converged, it.eta_done.clamp(min=1e-8) ** 0.8, self.eta)
        return it.z, it.converged

    def step(self, t, y, f0, dt, last_node=None):
        tab, ev, k = self.tab, self.ev, self.kernels
        B = y.shape[0]
        if self.blocks is None:
            self.blocks = _Blocks(y, ev.stats)
            self.eta = torch.ones(B, dtype=torch.float64, device=y.device)
        self.slowest = torch.zeros(B, dtype=torch.float64, device=y.device)
        h = k.state_dt(dt)
        g = (dt * tab.gamma).to(y.dtype)
        g_state = h * tab.gamma
        # a sample with no step to take (it has reached its last output) solves nothing
        g_safe = torch.where(g_state == 0, 1.0, g_state)
        ok = ev.mask & (dt != 0)
        ks = [f0]
        z = y
        differentiable = torch.is_grad_enabled()
        for i in range(1, tab.stages):
            rhs = kernels.combine(y, ks, tab.a_terms[i], h)
            ti = t + tab.c[i] * dt
            with torch.no_grad():
                guess = (rhs + g_state * ks[-1]).detach()
                final = i == tab.stages - 1
                z_star, converged = self._newton(ti, rhs.detach(), guess, g, g_state, ok, final)
            ok = ok & converged
            z = z_star
            if differentiable:  # the gradient of the fixed point, per sample
                mask = ev.mask
                ev.mask = ok
                try:
                    phi = rhs + g_state * ev(ti, z_star)
                finally:
                    ev.mask = mask
                if phi.requires_grad:
                    solve_t = self._blocks().transposed(ev, ti, z_star, g, ok)
                    z = _ImplicitStage.apply(phi, z_star, solve_t)
            ks.append((z - rhs) / g_safe)
        self.failed = ev.mask & (dt != 0) & ~ok
        return z, ks

    def error_ratio(self, y, y1, ks, dt):
        with torch.no_grad():
            err = kernels.combine(torch.zeros_like(y), ks, self.tab.b_err_terms,
                                  self.kernels.state_dt(dt))  # fmt: skip
            ratio = self.kernels.scaled_norm(err, y, y1) * self.method.error_factor
            ratio = torch.where(self.failed, math.inf, ratio)
            accepted = (ratio <= 1.0) & self.ev.mask & (dt != 0)
            # an accepted step ages the Jacobian; one that converged slowly asks for a new one
            blocks = self._blocks()
            blocks.fresh = blocks.fresh & ~accepted
            blocks.due = blocks.due | (accepted & (self.slowest > JACOBIAN_RATE))
        return ratio

    def dense(self, y0, y1, ks, f1, dt, theta):
        """Hermite interpolation per sample; ``y1`` itself where ``theta`` is 1 (steps land on
        the output times)."""
        h = dt.to(y0.dtype).reshape((1, -1) + (1,) * (y0.ndim - 1))
        x = theta.to(y0.dtype).reshape((theta.shape[0], -1) + (1,) * (y0.ndim - 1))
        val = kernels.hermite(y0.unsqueeze(0), y1.unsqueeze(0), ks[0].unsqueeze(0),
                              f1.unsqueeze(0), h, x)  # fmt: skip
        return torch.where(x >= 1.0, y1.unsqueeze(0), val)


ESDIRK.per_sample_stepper_class = PerSampleESDIRKStepper
