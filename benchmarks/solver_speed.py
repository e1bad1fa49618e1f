"""Native engine vs torchdiffeq (and torchode when installed), side by side in one process.

Problem (issue #3): dynamics Linear(64,128) → tanh → Linear(128,64), batch 128, t = [0, 1],
dopri5, rtol 1e-3, atol 1e-5, CPU, 1 thread. For each engine and mode it prints the time per
solve (median), the NFE, and the ratio to the *bare* cost of the same number of function
evaluations (what an ideal solver with zero overhead would cost). Every solve and the bare
evaluations are timed in the same rounds, interleaved.

    python benchmarks/solver_speed.py [--width 128] [--repeats 30] [--threads 1]

Modes: forward (no grad), forward+backward (direct backprop), checkpoint (the checkpointed
discrete adjoint: forward without graph, each step recomputed in the backward pass; its bare cost
counts the forward evaluations without grad and the recomputed ones with grad), adjoint
(continuous adjoint / backsolve with the seminorm: bare = forward evaluations + vector-Jacobian
products), adjoint (full) (the same with torchdiffeq's default norm, the whole augmented state).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import warnings

import torch
from timing import interleaved  # (benchmarks/timing.py, beside this script)
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

    # ---- bare costs of twenty evaluations (timed in the same rounds as the solves)
    def fwd_20():
        with torch.no_grad():
            for _ in range(20):
                f(t[0], y0)

    def fwd_bwd_20():
        y = y0.clone().requires_grad_(True)
        total = sum(f(t[0], y).sum() for _ in range(20))
        total.backward()

    def vjp_20():
        y = y0.clone().requires_grad_(True)
        for _ in range(20):
            out = f(t[0], y)
            torch.autograd.grad(out, [y, *params], torch.ones_like(out))

    bare_runs = {"forward": fwd_20, "forward+backward": fwd_bwd_20, "vjp": vjp_20}

    # ---- engines
    import torchdiffeq

    engines: dict[str, dict[str, object]] = {
        "torchdiffeq": {
            "forward": lambda: torchdiffeq.odeint(f, y0, t, **tol),
            "forward+backward": lambda: torchdiffeq.odeint(f, y0, t, **tol)[-1].sum().backward(),
            "adjoint": lambda: (
                torchdiffeq.odeint_adjoint(f, y0, t, **tol, **SEMINORM)[-1].sum().backward()
            ),
            "adjoint (full)": lambda: (
                torchdiffeq.odeint_adjoint(f, y0, t, **tol)[-1].sum().backward()
            ),
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
                neuralode.odeint_adjoint(f, y0, t, backend="native", **tol, **SEMINORM)[-1]
                .sum()
                .backward()
            ),
            "adjoint (full)": lambda: (
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

    runs: dict[tuple[str, str], object] = {}
    counts: dict[tuple[str, str], tuple[int, int]] = {}
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
            counts[(name, mode)] = (nfe_f, 0 if no_grad else total - nfe_f)
            runs[(name, mode)] = run
    # each mode on its own: its engines and the bare evaluations it is measured against, in
    # interleaved rounds (so that a heavy run of another mode does not cool the caches of one
    # side only)
    bare_of_mode = {"forward": "forward", "forward+backward": "forward+backward"}
    times: dict = {}
    for mode in dict.fromkeys(m for _, m in runs):
        group = {key: fn for key, fn in runs.items() if key[1] == mode}
        if mode == "checkpoint":
            group.update({("bare", "forward"): bare_runs["forward"],
                          ("bare", "forward+backward"): bare_runs["forward+backward"]})  # fmt: skip
        elif mode in bare_of_mode:
            group[("bare", mode)] = bare_runs[bare_of_mode[mode]]
        else:  # the adjoints: forward evaluations and vector-Jacobian products
            group.update({("bare", "forward"): bare_runs["forward"],
                          ("bare", "vjp"): bare_runs["vjp"]})  # fmt: skip
        for key, values in interleaved(group, args.repeats).items():
            times.setdefault(key, {})[mode] = values
    results = {}
    for key, by_mode in times.items():
        if key[0] != "bare":
            results[key] = statistics.median(by_mode[key[1]])
    bare_in: dict = {}  # (mode, bare kind) -> the bare cost of 20 evaluations measured there
    for (kind, bare_mode), by_mode in times.items():
        if kind == "bare":
            for mode, values in by_mode.items():
                bare_in[(mode, bare_mode)] = statistics.median(values)
    rows = [(*key, results[key], *counts[key]) for key in counts]

    def costs(mode: str) -> tuple[float, float, float]:
        """Bare costs per evaluation as measured beside ``mode``'s runs."""
        get = lambda kind: bare_in.get((mode, kind), math.nan) / 20  # noqa: E731
        return get("forward"), get("forward+backward"), get("vjp")

    print(
        f"dynamics Linear({args.dim},{args.width})→tanh→Linear({args.width},{args.dim}), "
        f"batch {args.batch}, dopri5, rtol {args.rtol:g}, atol {args.atol:g}, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    t_f, t_fb, t_vjp = costs("forward")[0], costs("forward+backward")[1], costs("adjoint")[2]
    print(
        f"bare cost per evaluation: forward {t_f * 1e6:.1f} µs, forward+backward "
        f"{t_fb * 1e6:.1f} µs, vjp {t_vjp * 1e6:.1f} µs (each measured beside its mode's runs)\n"
    )
    header = f"{'engine':<12} {'mode':<17} {'time/solve':>11} {'NFE f/b':>9} {'×bare':>7}"
    print(header)
    print("-" * len(header))
    for name, mode, secs, nfe_f, nfe_b in rows:
        bare = bare_of(mode, nfe_f, nfe_b, *costs(mode))
        print(
            f"{name:<12} {mode:<17} {secs * 1e3:>8.2f} ms {nfe_f:>4}/{nfe_b:<4} {secs / bare:>7.2f}"
        )
    print()
    ratios = {}
    for name, mode, secs, nfe_f, nfe_b in rows:
        if name == "native":
            ratios[mode] = secs / bare_of(mode, nfe_f, nfe_b, *costs(mode))
    for mode, goal in GOALS.items():
        if mode in ratios:
            met = "met" if ratios[mode] <= goal else "NOT met"
            print(f"goal native {mode} ≤ {goal}× bare: {ratios[mode]:.2f}× ({met})")
    for mode in ("forward", "forward+backward", "adjoint", "adjoint (full)"):
        if ("native", mode) in results:
            ref = results[("torchdiffeq", mode)] / results[("native", mode)]
            line = f"speed-up of native over torchdiffeq, {mode}: {ref:.2f}×"
            if ("torchode", mode) in results:
                other = results[("torchode", mode)] / results[("native", mode)]
                line += f"; over torchode: {other:.2f}×"
            print(line)


GOALS = {"forward": 1.2, "forward+backward": 1.25, "adjoint": 1.5}  # issue 23, width 128
SEMINORM = {"adjoint_options": {"norm": "seminorm"}}


def bare_of(mode: str, nfe_f: int, nfe_b: int, t_f: float, t_fb: float, t_vjp: float) -> float:
    """The cost of the same number of bare evaluations as the solve made."""
    if mode == "forward":
        return nfe_f * t_f
    if mode.startswith("adjoint"):
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
