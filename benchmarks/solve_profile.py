"""Where the time of one solve goes: the small-MLP problem of ``solver_speed.py`` (dynamics
Linear(64,128) → tanh → Linear(128,64), batch 128, dopri5, rtol 1e-3, atol 1e-5, no grad, 1
thread), profiled three ways.

* **Python calls**: every Python function call of one solve (``sys.setprofile``), per solve and
  per step, grouped by module — the engine's own and the user's dynamics apart;
* **tensor allocations**: every ``aten::empty*`` of one solve (``torch.profiler``), per step;
* **overhead in µs**: the solve's time less the bare cost of the same evaluations, per solve,
  per step and per evaluation (medians of interleaved repeats: solve, bare evaluations, floor,
  the order rotated by one every round);
* **a floor**: the same solve written as one plain loop (the same evaluations at the same times,
  the same fused C kernels for the stage sums, the error norm and the dense output, the step
  sizes the solve took, no checks, no objects): what the C kernels and Python's loop cost
  without the engine's structure around them;
* **the loop alone**: the engine's adaptive loop called directly, its method, controller and
  configuration made once outside the timing, so that per solve only what every solve makes
  is timed (the evaluator, the kernels and the stepper, the loop, the stacked result): the
  solve less this is what reading and checking the call's arguments and preparing the solve
  cost.

    python benchmarks/solve_profile.py [--repeats 200] [--width 128] [--beside-torchdiffeq]

``--beside-torchdiffeq`` adds torchdiffeq's solve of the same problem to every round (not
reported), as ``solver_speed.py``'s rounds have it: the engine's code then runs with colder
caches, as it does there.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys

import torch
from timing import interleaved  # (benchmarks/timing.py, beside this script)
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


def floor_loop(f, y0: torch.Tensor, t_end: float, calls: list[float]):
    """The recorded dopri5 solve from t = 0 (``calls``: its evaluation times) as one plain loop
    over the fused kernels, for a float32 state and a solve without rejected steps; returns
    ``fn()`` doing it, or ``None`` where the solve is not of that kind."""
    from neuralode.solvers import Dopri5
    from neuralode.solvers._kernels import _fused

    tab = Dopri5().tableau
    if _fused is None or y0.dtype != torch.float32 or (len(calls) - 2) % 6:
        return None
    steps, t_now = [], 0.0
    for s in range((len(calls) - 2) // 6):
        dt = (calls[2 + 6 * s] - t_now) / tab.c[1]
        steps.append((t_now, dt))
        t_now += dt
    if not steps or steps[-1][0] >= t_end or t_now < t_end:
        return None
    n, lincomb, ratio = y0.numel(), _fused.lincomb, _fused.error_ratio
    rows, nodes, err = tab.a_flat[1:], tab.c[1:], tab.b_err_flat
    h0 = calls[1]

    def fn() -> torch.Tensor:
        with torch.no_grad():
            k0 = f(torch.scalar_tensor(0.0), y0)
            ya, ka = y0.data_ptr(), k0.data_ptr()
            ratio(False, n, n, ya, ya, 1e-3, 1e-5, 0, [ya], (0, 1.0), 1.0)  # Hairer's d0, d1
            ratio(False, n, n, ya, ya, 1e-3, 1e-5, 0, [ka], (0, 1.0), 1.0)
            probe = torch.empty_like(y0)
            lincomb(False, n, probe.data_ptr(), ya, [ka], (0, 1.0), h0)
            k1 = f(torch.scalar_tensor(h0), probe)
            ratio(False, n, n, ya, ya, 1e-3, 1e-5, 0, [k1.data_ptr(), ka], (0, 1.0, 1, -1.0), 1.0)
            y = y0
            for t0, dt in steps:
                ks, addresses, base = [k0], [k0.data_ptr()], y.data_ptr()
                for terms, c in zip(rows, nodes):
                    yi = torch.empty_like(y0)
                    lincomb(False, n, yi.data_ptr(), base, addresses, terms, dt)
                    k = f(torch.scalar_tensor(t0 + c * dt), yi)
                    ks.append(k)
                    addresses.append(k.data_ptr())
                r = ratio(False, n, n, base, yi.data_ptr(), 1e-3, 1e-5, 0, addresses, err, dt)
                _ = min(10.0, max(1.0, 0.9 * r**-0.2))  # the controller's factor
                if t0 + dt >= t_end:
                    theta = (t_end - t0) / dt
                    terms = []
                    for j, (q1, q2, q3, q4) in tab.dense_poly:
                        terms += [j, theta * (q1 + theta * (q2 + theta * (q3 + theta * q4)))]
                    out = torch.empty_like(y0)  # (the slope at the end is the last stage)
                    dense = [*addresses, addresses[-1]]
                    lincomb(False, n, out.data_ptr(), base, dense, tuple(terms), dt)
                    return torch.stack([y0, out])
                y, k0 = yi, ks[-1]
        raise AssertionError("the recorded steps end before t_end")

    return fn


def loop_alone(f, y0: torch.Tensor, t: torch.Tensor):
    """``fn()`` running the engine's adaptive loop (dopri5, rtol 1e-3, atol 1e-5, no grad) on
    objects made here, once: only the evaluator, kernels, stepper and result are made per call."""
    from neuralode.solvers import Dopri5, PIController
    from neuralode.solvers._evaluator import Evaluator
    from neuralode.solvers._loops import RMS_NORM, AdaptiveConfig, solve_adaptive

    method, times = Dopri5(), t.tolist()
    cfg = AdaptiveConfig(rtol=1e-3, atol=1e-5, norm=RMS_NORM,
                         controller=PIController(rtol=1e-3, atol=1e-5))  # fmt: skip

    def fn() -> torch.Tensor:
        with torch.no_grad():
            ev = Evaluator(f, 1.0, y0.dtype, y0.device, neuralode.SolveStats())
            return torch.stack(solve_adaptive(ev, method, y0, times, cfg))

    return fn


def allocations(fn) -> int:
    """Tensor allocations (``aten::empty*``) made by ``fn()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::empty"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--width", type=int, default=128)
    p.add_argument(
        "--beside-torchdiffeq",
        action="store_true",
        help="add torchdiffeq's solve to every round, as solver_speed.py does",
    )
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
    eval_times: list[float] = []

    def recording(t_, y):
        eval_times.append(float(t_))
        return f(t_, y)

    with torch.no_grad():
        reference = neuralode.odeint(recording, y0, t, rtol=1e-3, atol=1e-5)
    floor = floor_loop(f, y0, 1.0, eval_times)
    if floor is not None and not torch.allclose(floor(), reference, rtol=1e-5, atol=1e-6):
        raise AssertionError("the floor loop does not reproduce the solve")
    loop = loop_alone(f, y0, t)
    if not torch.equal(loop(), reference):
        raise AssertionError("the loop alone does not reproduce the solve")

    def bare():
        with torch.no_grad():
            for _ in range(nfe):
                f(t[0], y0)

    for _ in range(20):
        solve()
        bare()
        loop()
    runs = {"solve": solve, "bare": bare, "loop": loop}
    if floor is not None:
        runs["floor"] = floor
    if args.beside_torchdiffeq:
        import torchdiffeq

        def beside():
            with torch.no_grad():
                torchdiffeq.odeint(f, y0, t, rtol=1e-3, atol=1e-5)

        runs["torchdiffeq"] = beside
    times = interleaved(runs, args.repeats, warmup=0)  # (warmed up above)
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
    t_loop = statistics.median(times["loop"])
    print(f"the loop alone (no argument checks, no preparation): {t_loop * 1e6:.0f} µs "
          f"(×{t_loop / t_bare:.3f}); the call's checks and preparation "
          f"{(t_solve - t_loop) * 1e6:.0f} µs")  # fmt: skip
    if floor is not None:
        t_floor = statistics.median(times["floor"])
        print(f"floor (the same solve as one plain loop over the same kernels): "
              f"{t_floor * 1e6:.0f} µs (×{t_floor / t_bare:.3f}), overhead "
              f"{(t_floor - t_bare) * 1e6:.0f} µs")  # fmt: skip
    else:
        print("floor: not measured (the solve rejected steps, or its state is not float32)")
    print(f"engine Python calls: {engine} per solve, {engine / steps:.1f} per step")
    for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<40} {n:6d}")
    own = allocs - dyn_allocs
    print(f"tensor allocations: {allocs} per solve, of which the dynamics' {dyn_allocs}; the "
          f"engine's {own}, {own / steps:.1f} per step")  # fmt: skip


if __name__ == "__main__":
    main()
