"""Stiff problems: the implicit methods against dopri5 and scipy's Radau and BDF, side by side.

For each problem every solver runs in turn, in alternating repeats (so that a noisy neighbour
lands on all of them), and the script prints the median wall time, the evaluations of the
dynamics (and Jacobians), and the largest error at the output times in units of the tolerance
(``|y - ref| / (atol + rtol |ref|)``) against a tight Radau reference. dopri5 runs with a budget
of 200,000 steps: where it needs more it is reported as not finishing.

    python benchmarks/stiff.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import neuralode
from neuralode import SolveStats

F64 = torch.float64


def probe(t, h):
    return -1e4 * (h - torch.cos(t))


def van_der_pol(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 1000.0 * (1 - x * x) * v - x], dim=-1)


def robertson(t, y):
    a, b, c = y[0], y[1], y[2]
    return torch.stack([-0.04 * a + 1e4 * b * c, 0.04 * a - 1e4 * b * c - 3e7 * b * b, 3e7 * b * b])


PROBLEMS = {
    "dh/dt = -1e4 (h - cos t)": (probe, [0.0], np.linspace(0.0, 1.0, 5), 1e-8),
    "Van der Pol, mu = 1000": (van_der_pol, [2.0, 0.0], np.linspace(0.0, 2000.0, 5), 1e-8),
    "Robertson": (robertson, [1.0, 0.0, 0.0], np.array([0, 1e-2, 1, 1e2, 1e4, 1e6]), 1e-10),
}
RTOL = 1e-6


def scipy_solve(f, y0, t, method, rtol, atol):
    nfe = [0]

    def rhs(s, y):
        nfe[0] += 1
        with torch.no_grad():
            return f(torch.tensor(s, dtype=F64), torch.from_numpy(y)).numpy()

    sol = solve_ivp(rhs, (t[0], t[-1]), np.asarray(y0, dtype=float), method=method,
                    t_eval=t, rtol=rtol, atol=atol)  # fmt: skip
    return (sol.y.T if sol.success else None), f"{nfe[0]} (+{sol.njev} Jacobians)"


def ours(f, y0, t, method, rtol, atol):
    stats = SolveStats()
    opts = {"max_num_steps": 200_000} if method == "dopri5" else None
    try:
        with torch.no_grad():
            y = neuralode.odeint(f, torch.tensor(y0, dtype=F64), torch.from_numpy(t), method=method,
                                 rtol=rtol, atol=atol, options=opts, stats=stats)  # fmt: skip
    except neuralode.SolverError:
        return None, f">{stats.nfe_forward} (did not finish)"
    jac = f" (+{stats.jacobians} Jacobians)" if stats.jacobians else ""
    return y.numpy(), f"{stats.nfe_forward}{jac}"


SOLVERS = {
    "neuralode kvaerno3": lambda *a: ours(*a[:2], a[2], "kvaerno3", *a[3:]),
    "neuralode kvaerno5": lambda *a: ours(*a[:2], a[2], "kvaerno5", *a[3:]),
    "neuralode trbdf2": lambda *a: ours(*a[:2], a[2], "trbdf2", *a[3:]),
    "neuralode dopri5": lambda *a: ours(*a[:2], a[2], "dopri5", *a[3:]),
    "scipy Radau": lambda *a: scipy_solve(*a[:3], "Radau", *a[3:]),
    "scipy BDF": lambda *a: scipy_solve(*a[:3], "BDF", *a[3:]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    for name, (f, y0, t, atol) in PROBLEMS.items():
        ref, _ = scipy_solve(f, y0, t, "Radau", 1e-11, atol * 1e-3)
        times = {s: [] for s in SOLVERS}
        result = {}
        for _ in range(args.repeats):
            for solver, run in SOLVERS.items():
                start = time.perf_counter()
                result[solver] = run(f, y0, t, RTOL, atol)
                times[solver].append(time.perf_counter() - start)
        print(f"\n{name} (rtol {RTOL:g}, atol {atol:g})")
        print("| solver | wall time (s) | evaluations | error / tolerance |")
        print("|---|---|---|---|")
        for solver in SOLVERS:
            y, nfe = result[solver]
            scaled = None if y is None else np.abs(y - ref) / (atol + RTOL * np.abs(ref))
            err = "-" if scaled is None else f"{scaled.max():.2f}"
            wall = statistics.median(times[solver])
            print(f"| {solver} | {wall:.3f} | {nfe} | {err} |")


if __name__ == "__main__":
    main()
