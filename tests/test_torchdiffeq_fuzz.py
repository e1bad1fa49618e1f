"""neuralode.odeint beside torchdiffeq.odeint on seeded random problems: the same outcome (both
finish, or both stop), the same values to rounding, no more evaluations, and — with the first
step given, so that torchdiffeq's initial-step heuristic leaves no derivative of its own in the
graph — the same gradients. Problems: an MLP dynamics with a time input, tensor or tuple state,
batch or not, increasing or decreasing times, every method both have (dopri8 aside: its dense
output is our own) and random options (tolerances, first/largest step, step budget, safety and
step factors, step_t, jump_t; step size, grid, perturb and interpolation on a fixed grid).

Fuzzing so found two differences, fixed: the step budget counted the whole solve where
torchdiffeq counts the steps between two output times, and the initial step's probe was held
to max_step. The default run takes 60 problems, ``pytest -m slow`` 600 more."""

import random
import warnings

import pytest
import torch
import torchdiffeq
from torch import nn

import neuralode

F64 = torch.float64
ADAPTIVE = ["dopri5", "bosh3", "adaptive_heun", "fehlberg2"]
FIXED = ["euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams",
         "fixed_adams"]  # fmt: skip


class Dynamics(nn.Module):
    def __init__(self, dim: int, split: int | None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 16), nn.Tanh(), nn.Linear(16, dim)).double()
        self.split, self.calls = split, 0

    def forward(self, t, y):
        self.calls += 1
        z = torch.cat(y, -1) if self.split is not None else y
        out = self.net(torch.cat([z, t.to(z).expand(*z.shape[:-1], 1)], -1))
        return (out[..., : self.split], out[..., self.split :]) if self.split is not None else out


def _problem(seed: int):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dim = rng.choice([1, 2, 3, 5])
    split = 1 if dim >= 2 and rng.random() < 0.2 else None
    f = Dynamics(dim, split)
    y0 = torch.randn(*rng.choice([(), (4,)]), dim, dtype=F64)
    if split is not None:
        y0 = (y0[..., :split].clone(), y0[..., split:].clone())
    times = sorted({round(rng.uniform(0.01, 2), 6) for _ in range(rng.choice([1, 2, 4]))})
    t = torch.tensor([0.0, *times], dtype=F64) * (-1 if rng.random() < 0.3 else 1)
    lo, hi = float(t.min()), float(t.max())
    kw: dict = {}
    opts: dict = {}
    if rng.random() < 0.6:
        kw["method"] = rng.choice(ADAPTIVE)
        kw["rtol"], kw["atol"] = 10 ** rng.uniform(-8, -3), 10 ** rng.uniform(-9, -4)
        if rng.random() < 0.3:
            opts["max_num_steps"] = rng.choice([5, 20, 10_000])
        if rng.random() < 0.2:
            opts["max_step"] = rng.uniform(0.05, 0.5)
        for name, low, high in (("safety", 0.7, 0.95), ("ifactor", 2, 10), ("dfactor", 0.1, 0.3)):
            if rng.random() < 0.2:
                opts[name] = rng.uniform(low, high)
        for name in ("step_t", "jump_t"):
            if rng.random() < 0.2:
                opts[name] = torch.tensor(sorted(rng.uniform(lo, hi) for _ in range(2)), dtype=F64)
    else:
        kw["method"] = rng.choice(FIXED)
        if rng.random() < 0.75:
            opts["step_size"] = rng.choice([0.1, 0.07, 0.3])
            if rng.random() < 0.3:
                opts["interp"] = rng.choice(["linear", "cubic"])
        else:
            opts["grid_constructor"] = lambda func, y0, t: torch.linspace(
                float(t[0]), float(t[-1]), 9, dtype=F64
            )
        if rng.random() < 0.3:
            opts["perturb"] = True
    return f, y0, t, kw, opts, rng.random() < 0.4


def _run(lib, f, y0, t, kw, opts, grad):
    f.calls = 0
    f.zero_grad()
    leaves = tuple(y.clone().requires_grad_(grad) for y in (y0 if isinstance(y0, tuple) else (y0,)))
    start = leaves if isinstance(y0, tuple) else leaves[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = lib.odeint(f, start, t, options=dict(opts), **kw)
    except (AssertionError, neuralode.SolverError) as err:  # torchdiffeq asserts
        return "stopped", err
    outs = out if isinstance(out, tuple) else (out,)
    calls, grads = f.calls, None
    if grad:
        sum((o**2).sum() for o in outs).backward()
        grads = [p.grad for p in f.parameters()] + [y.grad for y in leaves]
    return "finished", ([o.detach() for o in outs], calls, grads)


def _check(seed: int) -> None:
    f, y0, t, kw, opts, grad = _problem(seed)
    if grad and kw["method"] in ADAPTIVE:
        opts["first_step"] = 0.05  # (torchdiffeq's heuristic would carry its own derivative)
    theirs = _run(torchdiffeq, f, y0, t, kw, opts, grad)
    ours = _run(neuralode, f, y0, t, kw, opts, grad)
    where = f"seed {seed}: {kw} {opts}"
    assert ours[0] == theirs[0], f"{where}: torchdiffeq {theirs}, neuralode {ours}"
    if ours[0] == "stopped":
        return
    (ys, calls, grads), (ref, ref_calls, ref_grads) = ours[1], theirs[1]
    for a, b in zip(ys, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=where)
    assert calls <= ref_calls, where
    if grad:
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=where)


@pytest.mark.parametrize("block", range(6))
def test_random_problems_solve_as_in_torchdiffeq(block):
    for seed in range(10 * block, 10 * block + 10):
        _check(seed)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(6))
def test_more_random_problems_solve_as_in_torchdiffeq(block):
    for seed in range(1000 + 100 * block, 1000 + 100 * block + 100):
        _check(seed)
