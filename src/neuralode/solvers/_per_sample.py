"""The per-sample lane: every sample of a batch its own time, step size and error test.

A step size is a tensor of shape ``(batch,)``; the controller's formulas take it as they take a
float (:mod:`._controller`). Samples that have passed their last output time stop counting
evaluations and stop moving, so that every sample reports what it needed alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import _kernels as kernels
from ._controller import PROJECTION_FACTOR, projection_interval
from ._evaluator import Evaluator
from ._loops import AdaptiveConfig
from ._messages import Status, failure
from ._methods import Method

__all__ = ["check_t_rows", "rows_direction", "solve_adaptive_per_sample"]


def rows_direction(t: torch.Tensor) -> float:
    """Per-sample times: ``1.0`` where the rows increase, ``-1.0`` where they decrease (the
    sign of the first step that is not zero; rows of one repeated time have no direction)."""
    steps = t.detach().diff(dim=1).reshape(-1)
    moving = steps.nonzero()
    return -1.0 if len(moving) and float(steps[moving[0, 0]]) < 0 else 1.0


def check_t_rows(t: torch.Tensor) -> None:
    """Per-sample times: row ``b`` holds sample ``b``'s output times, its first the sample's
    start, all rows strictly increasing (or all strictly decreasing). A shorter series is padded
    by repeating its last time; its outputs there repeat its last state."""
    if t.shape[1] == 0 or t.shape[0] == 0:
        raise InvalidArgumentError(
            f"t must hold at least one time per sample, got shape {tuple(t.shape)}"
        )
    rows = t.detach().cpu().double()
    if not bool(torch.isfinite(rows).all()):
        raise InvalidArgumentError(
            "t must hold finite times (pad a shorter series by repeating its last time, not "
            "with NaN)"
        )
    if t.shape[1] == 1:
        return
    steps = rows.diff(dim=1) * rows_direction(rows)
    # strictly monotone, then (padding) constant to the end of the row; a row of one time
    # repeated is a series observed only at its start
    padded = (steps == 0).cumsum(dim=1) > 0
    bad = (steps < 0) | (padded & (steps != 0))
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0])
        raise InvalidArgumentError(
            f"per-sample times must be strictly increasing in every row (or decreasing in every "
            f"row), a shorter row padded at its end by repeating its last time; row {row} is "
            f"{rows[row].tolist()}"
        )


class _PerSampleKernels(kernels.TorchKernels):
    """Tensor kernels whose step sizes, times and norms are per sample: a step size is a tensor
    of shape ``(batch,)``, broadcast over the state's other dimensions, and a norm is the RMS of
    each sample."""

    def __init__(self, rtol: Any, atol: Any, y0: torch.Tensor, time_dtype: torch.dtype) -> None:
        super().__init__(rtol, atol, None)
        self.batch = y0.shape[0]
        self.view = (self.batch,) + (1,) * (y0.ndim - 1)
        self.dtype = y0.dtype
        self.time_dtype = time_dtype
        self._poly_key: Any = None

    def state_dt(self, dt: Any) -> Any:
        return dt.to(self.dtype).reshape(self.view)

    def scaled_norm(self, x, y, y1=None):
        with torch.no_grad():
            mag = y.abs() if y1 is None else torch.maximum(y.abs(), y1.abs())
            scaled = x / (mag * self.rtol).add_(self.atol)
            return scaled.reshape(self.batch, -1).pow(2).mean(dim=1).sqrt().to(self.time_dtype)

    def axpy(self, y, k, h):
        return y + self.state_dt(h) * k

    def dense(self, tab, y0, y1, ks, f1, dt, theta):
        """The dense output at several fractions per sample at once: ``theta`` of shape
        ``(R, batch)`` gives a result of shape ``(R, *state)``. One contraction of the stages
        with the polynomials' weights replaces a call per output (the batch's outputs within a
        step are many small operations otherwise)."""
        key = (tab.name, theta.dtype, theta.device)
        if self._poly_key != key:
            js = [j for j, _ in tab.dense_poly]
            q = torch.tensor([q for _, q in tab.dense_poly], dtype=theta.dtype, device=theta.device)
            self._poly, self._poly_js, self._poly_key = q, js, key
        stages = [*ks, f1]
        js = self._poly_js
        k = torch.stack([stages[j] for j in js]).reshape(len(js), self.batch, -1)
        q1, q2, q3, q4 = self._poly.T.unsqueeze(1).unsqueeze(1)  # each (1, 1, stages)
        x = theta.unsqueeze(-1)
        weights = (x * (q1 + x * (q2 + x * (q3 + x * q4)))).to(self.dtype)  # (R, B, stages)
        # (small matrix products are slower than this broadcast on the CPU)
        step = (weights.unsqueeze(-1) * k.transpose(0, 1)).sum(dim=2)
        return torch.addcmul(y0, self.state_dt(dt), step.reshape(theta.shape[0], *y0.shape))


class _CountingEvaluator:
    """The evaluator of the per-sample lane: counts an evaluation for the samples in ``mask``
    (those still integrating), so that every sample reports the evaluations it needed."""

    def __init__(self, ev: Evaluator, batch: int, device: torch.device) -> None:
        self.ev = ev
        self.stats = ev.stats
        self.sign = ev.sign
        self.nfe = torch.zeros(batch, dtype=torch.long, device=device)
        self.mask = torch.ones(batch, dtype=torch.bool, device=device)

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe = self.nfe + self.mask  # (out of place: also under torch.func transforms)
        return self.ev(s, y)


_FINISHED = 2**62  # (the "last output" iteration of a sample that has passed all of its own)


def _near(ev, t_now: torch.Tensor, sample: int) -> str:
    """Where a failed batch stopped: the time its sample ``sample`` had reached, and which."""
    return f" near t ≈ {float(ev.sign * t_now[sample]):.6g} (sample {sample})"


def _project(ev, cfg, since, remaining, dt_recent, active, t_now) -> None:
    """Stop a batch whose slowest sample, at its largest recent step size, would need far more
    iterations to its next output time than the budget allows (one read from the device);
    ``since``: every sample's iterations since its last output time."""
    needed = torch.where(active, remaining / dt_recent, torch.zeros_like(remaining))
    worst = int(torch.argmax(needed + since))
    taken, most = int(since[worst]), float(needed[worst])
    if taken + most > PROJECTION_FACTOR * cfg.max_num_steps:
        raise failure(Status.MAX_STEPS, where=_near(ev, t_now, worst), limit=cfg.max_num_steps,
                      rtol=cfg.rtol, projected=(taken, most))  # fmt: skip


def solve_adaptive_per_sample(
    ev: Evaluator,
    method: Method,
    y0: torch.Tensor,
    t: Sequence[float] | torch.Tensor,
    cfg: AdaptiveConfig,
) -> list[torch.Tensor]:
    """The per-sample lane: every sample (first dimension) has its own time, step size and
    error test, so that its result and NFE do not depend on the rest of the batch.

    ``t`` holds the output times: one sequence for all samples, or a tensor of shape
    ``(batch, n)`` with every sample's own increasing times (the first column is each
    sample's start). The dynamics receive ``t`` as a tensor of shape ``(batch,)``; output ``j``
    of sample ``b`` is its state at ``t[b, j]``.
    """
    if y0.ndim == 0:
        raise InvalidArgumentError("batch_mode='per_sample' needs a state with a batch dimension")
    B = y0.shape[0]
    dev = y0.device
    tdt = torch.float64 if y0.dtype == torch.float64 or dev.type == "cpu" else torch.float32
    times = torch.as_tensor(t, dtype=tdt, device=dev)
    if times.ndim == 1:
        times = times.expand(B, -1)
    if times.ndim != 2 or times.shape[0] != B:
        raise InvalidArgumentError(
            f"per-sample output times must have shape (batch, n) = ({B}, n), got "
            f"{tuple(times.shape)}"
        )
    n_out = times.shape[1]
    stats = ev.stats
    ctrl = cfg.controller
    k = _PerSampleKernels(cfg.rtol, cfg.atol, y0, tdt)
    counting = _CountingEvaluator(ev, B, dev)
    stepper = method.per_sample_stepper(counting, k)
    acc = torch.zeros(B, dtype=torch.long, device=dev)
    rej = torch.zeros(B, dtype=torch.long, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    t_now = times[:, 0].clone()
    y = y0
    f0 = counting(t_now, y)
    if cfg.first_step is None:
        dt = stepper.initial_step(t_now, y, f0)
    else:
        dt = torch.full_like(t_now, cfg.first_step)
    dt = ctrl.clamp(dt)
    prev_ratio = torch.ones_like(t_now)
    # row j: every sample's output j; the extra last row takes the writes of samples without an
    # output due (so that no two writes of one call land on one element)
    out = torch.cat((y0.unsqueeze(0).expand(n_out, *y0.shape), y0.unsqueeze(0)))
    rows = torch.arange(B, device=dev)
    positions = torch.arange(n_out, device=dev)
    nxt = torch.ones(B, dtype=torch.long, device=dev)  # next output index per sample
    n_iter = 0
    active = nxt < n_out
    # a method whose dense output is poor on stiff dynamics steps onto every output time
    landing = method.lands_on_outputs
    go_on = n_out > 1
    # the budget counts every sample's steps (accepted or not) from one of its output times to
    # the next, as torchdiffeq's max_num_steps counts a solve's; every tenth of the budget: the
    # iterations the slowest sample still needs to its next output time at its largest recent
    # step size; a batch that would need far more (a stiff sample) stops early
    # (the iteration at which each sample last passed an output time, set by the iterations that
    # pass one; ``oldest`` is a lower bound of the active samples' oldest, read from the device
    # again only where it would end the solve)
    last = torch.zeros(B, dtype=torch.long, device=dev)
    oldest = 0
    check_every = projection_interval(cfg.max_num_steps)
    next_check, dt_recent = check_every, torch.zeros_like(t_now)
    # one read from the device per iteration (a synchronisation on a GPU): whether a sample is
    # not finite, how many outputs a sample passed at most, and whether any sample goes on
    while go_on:
        if n_iter - oldest >= cfg.max_num_steps:
            pending = last.masked_fill(~active, _FINISHED)
            worst = int(torch.argmin(pending))
            oldest = int(pending[worst])
            if n_iter - oldest >= cfg.max_num_steps:
                raise failure(Status.MAX_STEPS, where=_near(ev, t_now, worst),
                              limit=cfg.max_num_steps, rtol=cfg.rtol)  # fmt: skip
        n_iter += 1
        if n_iter == next_check:
            next_check += check_every
            t_next = times.gather(1, nxt.clamp(max=n_out - 1).unsqueeze(1)).squeeze(1)
            since = torch.where(active, n_iter - 1 - last, 0)
            _project(ev, cfg, since, (t_next - t_now).clamp(min=0.0), dt_recent, active, t_now)
            dt_recent = torch.zeros_like(dt_recent)
        counting.mask = active
        dt_eff = torch.where(active, dt, torch.zeros_like(dt))
        t1 = t_now + dt_eff
        if landing:  # a step that would pass its sample's next output ends on it
            t_next = times.gather(1, nxt.clamp(max=n_out - 1).unsqueeze(1)).squeeze(1)
            hit = active & (t1 >= t_next)
            dt_eff = torch.where(hit, t_next - t_now, dt_eff)
            t1 = torch.where(hit, t_next, t1)
        y1, ks = stepper.step(t_now, y, f0, dt_eff)
        ratio = stepper.error_ratio(y, y1, ks, dt_eff)
        with torch.no_grad():
            bad = torch.isnan(ratio) & active
            accept = ctrl.accept(ratio, dt_eff) & active
            acc += accept
            rej += (~accept) & active
            dt_recent = torch.maximum(dt_recent, torch.where(accept, dt_eff, 0.0))
            # (from the step taken: shortened where it landed on an output, as the joint lane)
            dt_new = ctrl.next_step(torch.where(active, dt_eff, dt), ratio, prev_ratio,
                                    method.order)  # fmt: skip
            prev_ratio = torch.where(accept, ctrl.remember(ratio), prev_ratio)
            passed = (positions >= nxt.unsqueeze(1)) & (times <= t1.unsqueeze(1))
            passed &= accept.unsqueeze(1)
            n_passed = passed.sum(dim=1)
            any_bad, most, go_on = torch.stack(
                (bad.any(), n_passed.max(), ((nxt + n_passed) < n_out).any())
            ).tolist()
        if any_bad:
            raise failure(Status.NONFINITE, time=float(ev.sign * t_now[bad][0]))
        counting.mask = accept
        f1, _ = stepper.end_slope(t1, y1, ks)
        if most:  # the outputs every sample passed, in one dense-output call
            with torch.no_grad():
                r = torch.arange(int(most), device=dev).unsqueeze(1)
                due = n_passed.unsqueeze(0) > r
                idx = (nxt.unsqueeze(0) + r).clamp(max=n_out - 1)
                t_out = times.gather(1, idx.T).T
                theta = ((t_out - t_now) / dt_eff.clamp(min=1e-300)).clamp(0.0, 1.0)
                idx = torch.where(due, idx, n_out)
            val = stepper.dense(y, y1, ks, f1, dt_eff, theta)
            out.index_put_((idx, rows.expand_as(idx)), val)  # (out is the loop's own tensor)
        nxt = nxt + n_passed
        if most:  # the budget starts again for the samples that passed an output time
            last.masked_fill_(n_passed > 0, n_iter)
        am = accept.reshape(k.view)
        y = torch.where(am, y1, y)
        f0 = torch.where(am, f1, f0)
        t_now = torch.where(accept, t1, t_now)
        dt = torch.where(active, dt_new, dt)
        active = nxt < n_out
        del ks, y1, f1  # free this step's stages before the next step makes its own
    # the batch takes as many steps as its hardest sample: report that sample's counters
    hardest = int(torch.argmax(acc + rej))
    stats.steps_accepted = (stats.steps_accepted or 0) + int(acc[hardest])
    stats.steps_rejected = (stats.steps_rejected or 0) + int(rej[hardest])
    stats.nfe_per_sample = counting.nfe.tolist()
    stats.steps_accepted_per_sample = acc.tolist()
    stats.steps_rejected_per_sample = rej.tolist()
    return list(out[:-1].unbind(0))
