"""Where the time of one solve goes: the small-MLP problem of ``solver_speed.py`` (dynamics
Linear(64,128) → tanh → Linear(128,64), batch 128, dopri5, rtol 1e-3, atol 1e-5, no grad, 1
thread), profiled three ways.

* **Python calls**: every Python function call of one solve (``sys.setprofile``), per solve and
  per step, grouped by module — the engine's own and the user's dynamics apart;
* **tensor allocations**: every ``aten::empty*`` of one solve (``torch.profiler``), per step;
* **overhead in µs**: the solve's time less the bare cost of the same evaluations, per solve,
  per step and per evaluation (medians of interleaved repeats: solve, bare evaluations, solve,
  ...).

    python benchmarks/solve_profile.py [--repeats 200] [--width 128]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import torch
from torch import nn

import neuralode


class Dynamics(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim))

    def forward(self, t, y):
        return self.net(y)


def python_calls(fn) -> collections.Counter:
    """Python function calls made by ``fn()``, by the module their code is in."""
    pkg = os.path.dirname(neuralode.__file__)
    counts: collections.Counter = collections.Counter()

    def profile(frame, event, arg):
        if event == "call":
            path = frame.f_code.co_filename
            if path.startswith(pkg):
                counts["neuralode/" + os.path.relpath(path, pkg)] += 1
            elif "torch" in path:
                counts["torch (the dynamics' modules)"] += 1
            else:
                counts["other"] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts


def allocations(fn) -> int:
    """Tensor allocations (``aten::empty*``) made by ``fn()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::empty"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--width", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    f = Dynamics(64, args.width)
    y0 = torch.randn(128, 64)
    t = torch.tensor([0.0, 1.0])
    stats = neuralode.SolveStats()

    def solve(s=None):
        with torch.no_grad():
            neuralode.odeint(f, y0, t, rtol=1e-3, atol=1e-5, stats=s)

    solve(stats)
    nfe, steps = stats.nfe_forward, stats.steps_accepted + stats.steps_rejected

    def bare():
        with torch.no_grad():
            for _ in range(nfe):
                f(t[0], y0)

    for _ in range(20):
        solve()
        bare()
    times: dict[str, list[float]] = {"solve": [], "bare": []}
    for r in range(args.repeats):
        for name, fn in (
            (("solve", solve), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("solve", solve))
        ):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_solve, t_bare = (statistics.median(times[k]) for k in ("solve", "bare"))
    over = t_solve - t_bare
    calls = python_calls(solve)
    engine = sum(v for k, v in calls.items() if k.startswith("neuralode/"))
    allocs = allocations(solve)
    dyn_allocs = allocations(bare)  # the same evaluations alone

    print(
        f"dopri5 on Linear(64,{args.width})→tanh→Linear({args.width},64), batch 128, rtol 1e-3, "
        f"atol 1e-5, no grad, 1 thread, torch {torch.__version__}: {nfe} evaluations, "
        f"{steps} steps"
    )
    print(f"solve {t_solve * 1e6:.0f} µs, bare evaluations {t_bare * 1e6:.0f} µs "
          f"(×{t_solve / t_bare:.3f}), {args.repeats} interleaved repeats")  # fmt: skip
    print(f"overhead: {over * 1e6:.0f} µs per solve, {over / steps * 1e6:.1f} µs per step, "
          f"{over / nfe * 1e6:.1f} µs per evaluation")  # fmt: skip
    print(f"engine Python calls: {engine} per solve, {engine / steps:.1f} per step")
    for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<40} {n:6d}")
    own = allocs - dyn_allocs
    print(f"tensor allocations: {allocs} per solve, of which the dynamics' {dyn_allocs}; the "
          f"engine's {own}, {own / steps:.1f} per step")  # fmt: skip


if __name__ == "__main__":
    main()
