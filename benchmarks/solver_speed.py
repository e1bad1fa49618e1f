"""Native engine vs torchdiffeq (and torchode when installed), side by side in one process.

Problem (issue #3): dynamics Linear(64,128) → tanh → Linear(128,64), batch 128, t = [0, 1],
dopri5, rtol 1e-3, atol 1e-5, CPU, 1 thread. For each engine and mode it prints the time per
solve (median), the NFE, and the ratio to the *bare* cost of the same number of function
evaluations (what an ideal solver with zero overhead would cost).

    python benchmarks/solver_speed.py [--width 128] [--repeats 30] [--threads 1]

Modes: forward (no grad), forward+backward (direct backprop), checkpoint (the checkpointed
discrete adjoint: forward without graph, each step recomputed in the backward pass; its bare cost
counts the forward evaluations without grad and the recomputed ones with grad), adjoint
(continuous adjoint / backsolve: bare = forward evaluations + vector-Jacobian products).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings

import torch
from torch import nn

import neuralode

warnings.filterwarnings("ignore")


class Dynamics(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim))
        self.calls = 0
        self.counting = False

    def forward(self, t, y):
        if self.counting:
            self.calls += 1
        return self.net(y)


def median_time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_nfe(f: Dynamics, fn) -> int:
    f.calls, f.counting = 0, True
    fn()
    f.counting = False
    return f.calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    f = Dynamics(args.dim, args.width)
    params = list(f.parameters())
    y0 = torch.randn(args.batch, args.dim)
    t = torch.tensor([0.0, 1.0])
    tol = dict(rtol=args.rtol, atol=args.atol)

    # ---- bare costs of one evaluation (measured before and after the engines; the lower
    # median is used, so that a noisy neighbour cannot flatter the ratios)
    def fwd_once():
        with torch.no_grad():
            f(t[0], y0)

    def fwd_bwd_20():
        y = y0.clone().requires_grad_(True)
        total = sum(f(t[0], y).sum() for _ in range(20))
        total.backward()

    def vjp_once():
        y = y0.clone().requires_grad_(True)
        out = f(t[0], y)
        torch.autograd.grad(out, [y, *params], torch.ones_like(out))

    def bare_costs() -> tuple[float, float, float]:
        return (
            median_time(fwd_once, 300),
            median_time(fwd_bwd_20, 40) / 20,
            median_time(vjp_once, 300),
        )

    bare_before = bare_costs()

    # ---- engines
    import torchdiffeq

    engines: dict[str, dict[str, object]] = {
        "torchdiffeq": {
            "forward": lambda: torchdiffeq.odeint(f, y0, t, **tol),
            "forward+backward": lambda: torchdiffeq.odeint(f, y0, t, **tol)[-1].sum().backward(),
            "adjoint": lambda: torchdiffeq.odeint_adjoint(f, y0, t, **tol)[-1].sum().backward(),
        },
        "native": {
            "forward": lambda: neuralode.odeint(f, y0, t, backend="native", **tol),
            "forward+backward": lambda: (
                neuralode.odeint(f, y0, t, backend="native", **tol)[-1].sum().backward()
            ),
            "checkpoint": lambda: (
                neuralode.odeint(f, y0, t, backend="native", gradient="checkpoint", **tol)[-1]
                .sum()
                .backward()
            ),
            "adjoint": lambda: (
                neuralode.odeint_adjoint(f, y0, t, backend="native", **tol)[-1].sum().backward()
            ),
        },
    }
    try:
        import torchode as to

        term = to.ODETerm(f)
        step = to.Dopri5(term=term)
        ctrl = to.IntegralController(atol=args.atol, rtol=args.rtol, term=term)
        autodiff = to.AutoDiffAdjoint(step, ctrl)
        backsolve = to.BacksolveAdjoint(term, step, ctrl)
        t_eval = t.expand(args.batch, 2)
        ivp = to.InitialValueProblem(y0=y0, t_eval=t_eval)
        engines["torchode"] = {
            "forward": lambda: autodiff.solve(ivp),
            "forward+backward": lambda: autodiff.solve(ivp).ys[:, -1].sum().backward(),
            "adjoint": lambda: backsolve.solve(ivp).ys[:, -1].sum().backward(),
        }
    except Exception as err:  # torchode is optional
        print(f"(torchode not available: {type(err).__name__}: {err})")

    rows = []
    results: dict[tuple[str, str], float] = {}
    for name, modes in engines.items():
        for mode, fn in modes.items():
            no_grad = mode == "forward"

            def run(fn=fn, no_grad=no_grad):
                for prm in params:
                    prm.grad = None
                if no_grad:
                    with torch.no_grad():
                        fn()
                else:
                    fn()

            nfe_f = count_nfe(f, lambda fn=fn: _forward_only(fn))
            total = count_nfe(f, run)
            nfe_b = 0 if no_grad else total - nfe_f
            secs = median_time(run, args.repeats)
            results[(name, mode)] = secs
            rows.append((name, mode, secs, nfe_f, nfe_b))
    t_f, t_fb, t_vjp = (min(a, b) for a, b in zip(bare_before, bare_costs()))

    print(
        f"dynamics Linear({args.dim},{args.width})→tanh→Linear({args.width},{args.dim}), "
        f"batch {args.batch}, dopri5, rtol {args.rtol:g}, atol {args.atol:g}, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        f"bare cost per evaluation: forward {t_f * 1e6:.1f} µs, forward+backward "
        f"{t_fb * 1e6:.1f} µs, vjp {t_vjp * 1e6:.1f} µs\n"
    )
    header = f"{'engine':<12} {'mode':<17} {'time/solve':>11} {'NFE f/b':>9} {'×bare':>7}"
    print(header)
    print("-" * len(header))
    for name, mode, secs, nfe_f, nfe_b in rows:
        bare = bare_of(mode, nfe_f, nfe_b, t_f, t_fb, t_vjp)
        print(
            f"{name:<12} {mode:<17} {secs * 1e3:>8.2f} ms {nfe_f:>4}/{nfe_b:<4} {secs / bare:>7.2f}"
        )
    print()
    ratios = {}
    for name, mode, secs, nfe_f, nfe_b in rows:
        if name == "native":
            ratios[mode] = secs / bare_of(mode, nfe_f, nfe_b, t_f, t_fb, t_vjp)
    for mode, goal in GOALS.items():
        if mode in ratios:
            met = "met" if ratios[mode] <= goal else "NOT met"
            print(f"goal native {mode} ≤ {goal}× bare: {ratios[mode]:.2f}× ({met})")
    for mode in ("forward", "forward+backward", "adjoint"):
        if ("native", mode) in results:
            ref = results[("torchdiffeq", mode)] / results[("native", mode)]
            line = f"speed-up of native over torchdiffeq, {mode}: {ref:.2f}×"
            if ("torchode", mode) in results:
                other = results[("torchode", mode)] / results[("native", mode)]
                line += f"; over torchode: {other:.2f}×"
            print(line)


GOALS = {"forward": 1.3, "forward+backward": 1.4, "adjoint": 1.6}  # issue #3, width 128


def bare_of(mode: str, nfe_f: int, nfe_b: int, t_f: float, t_fb: float, t_vjp: float) -> float:
    """The cost of the same number of bare evaluations as the solve made."""
    if mode == "forward":
        return nfe_f * t_f
    if mode == "adjoint":
        return nfe_f * t_f + nfe_b * t_vjp
    if mode == "checkpoint":
        return nfe_f * t_f + nfe_b * t_fb
    return nfe_f * t_fb


def _forward_only(fn) -> None:
    """Run only the forward part of a benchmark closure (for counting forward NFE)."""
    # backward() under no_grad raises once the forward part has run
    with torch.no_grad(), contextlib.suppress(RuntimeError):
        fn()


if __name__ == "__main__":
    main()
