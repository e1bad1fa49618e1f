"""A batch of independent stiff systems on the per-sample lane, against one system alone and
against diffrax's ``Kvaerno5`` under ``jax.vmap``.

The batch: ``--batch`` Van der Pol oscillators (default 1,024) with μ spread evenly over
[500, 1500], from (2, 0) to t = 2,000, kvaerno5 at rtol 1e-6, atol 1e-8, float64, one thread.
Every sample takes its own steps, Newton iterations and Jacobian (one 2 × 2 block each).

diffrax runs in its own process (``--python`` names an interpreter with jax and diffrax, the
``bench`` extra; by default this one), kept alive and told to solve once per repeat, so that
its repeats alternate with ours; its JIT compilation happens before the first timed repeat.
Printed: the median wall time of each, the ratios, the evaluations, the largest disagreement
between the two batches in tolerance units, and whether the goals are met (batch ≤ 20× one
system alone; ours ≤ 2× diffrax's).

    python benchmarks/stiff_batch.py [--batch 1024] [--repeats 3] [--python /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import neuralode
from neuralode.solvers import Kvaerno5, PerSample, PIController

RTOL, ATOL, T_END = 1e-6, 1e-8, 2000.0
F64 = torch.float64

WORKER = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platform_name", "cpu")
import diffrax
batch = int(sys.argv[1])
rtol, atol, t_end = map(float, sys.argv[2:5])
mus = jnp.linspace(500.0, 1500.0, batch)
ts = jnp.linspace(0.0, t_end, 5)
def vf(t, y, mu):
    return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])
def one(mu):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), diffrax.Kvaerno5(), 0.0, t_end, None, jnp.array([2.0, 0.0]), args=mu,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=100_000)
    return sol.ys, sol.stats["num_steps"]
solve = jax.jit(jax.vmap(one))
ys, steps = solve(mus)
ys.block_until_ready()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    ys, steps = solve(mus)
    ys.block_until_ready()
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "ys": np.asarray(ys).tolist(),
                      "steps": int(np.max(np.asarray(steps)))}), flush=True)
"""


def van_der_pol(mu: torch.Tensor):
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack((v, mu * (1 - x * x) * v - x), dim=-1)

    return f


def ours(mu: torch.Tensor, per_sample: bool):
    y0 = torch.tensor([2.0, 0.0], dtype=F64).expand(mu.numel(), 2).clone()
    t = torch.linspace(0.0, T_END, 5, dtype=F64)
    ctrl = PIController(rtol=RTOL, atol=ATOL)
    lane = PerSample() if per_sample else None
    start = time.perf_counter()
    with torch.no_grad():
        sol = neuralode.solve(van_der_pol(mu.reshape(-1) if per_sample else mu), y0, t,
                              method=Kvaerno5(), controller=ctrl, lane=lane)  # fmt: skip
    return time.perf_counter() - start, sol


def reference(mu: float) -> np.ndarray:
    """The states at the output times by scipy's Radau at rtol 1e-11."""

    def rhs(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    def jac(t, y):
        return [[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)]]

    t = np.linspace(0.0, T_END, 5)
    sol = solve_ivp(rhs, (0.0, T_END), [2.0, 0.0], method="Radau", t_eval=t, rtol=1e-11,
                    atol=ATOL * 1e-3, jac=jac)  # fmt: skip
    return sol.y.T


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--python", default=sys.executable, help="an interpreter with diffrax")
    args = p.parse_args()
    torch.set_num_threads(1)
    mus = torch.linspace(500.0, 1500.0, args.batch, dtype=F64)
    middle = torch.tensor(1000.0, dtype=F64)
    worker = None
    try:
        worker = subprocess.Popen(
            [args.python, "-c", WORKER, str(args.batch), str(RTOL), str(ATOL), str(T_END)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                 "OMP_NUM_THREADS": "1", "PATH": ""},
        )  # fmt: skip
        if json.loads(worker.stdout.readline() or "{}").get("ready") is None:
            raise RuntimeError("no diffrax")
    except (OSError, RuntimeError, json.JSONDecodeError):
        print(f"diffrax is not importable by {args.python} (pip install -e '.[bench]'); "
              "timing neuralode only", file=sys.stderr)  # fmt: skip
        worker = None
    ours(middle, False)  # warm-up (imports, first Jacobian traces)
    ours(mus[:2], True)
    alone, batch, theirs = [], [], []
    for _ in range(args.repeats):
        wall, one = ours(middle, False)
        alone.append(wall)
        wall, sol = ours(mus, True)
        batch.append(wall)
        if worker is not None:
            worker.stdin.write("go\n")
            worker.stdin.flush()
            result = json.loads(worker.stdout.readline())
            theirs.append(result["wall"])
    a, b = statistics.median(alone), statistics.median(batch)
    steps = [x + y for x, y in zip(sol.stats.steps_accepted_per_sample,
                                   sol.stats.steps_rejected_per_sample, strict=True)]  # fmt: skip
    print(
        f"Van der Pol, mu in [500, 1500], t in [0, {T_END:g}], kvaerno5, rtol {RTOL:g}, "
        f"atol {ATOL:g}, float64, 1 thread, {args.repeats} interleaved repeats (median)"
    )
    print("| run | wall time (s) | evaluations | steps (largest) |")
    print("|---|---|---|---|")
    print(
        f"| neuralode, one system (mu = 1000) | {a:.3f} | {one.stats.nfe} | "
        f"{one.stats.steps_accepted + one.stats.steps_rejected} |"
    )
    print(
        f"| neuralode, {args.batch} systems, per-sample lane | {b:.3f} | "
        f"{sum(sol.stats.nfe_per_sample):,} (all samples) | {max(steps)} |"
    )
    if worker is not None:
        d = statistics.median(theirs)
        print(
            f"| diffrax Kvaerno5, jax.vmap, {args.batch} systems | {d:.3f} | - | "
            f"{result['steps']} |"
        )
    # accuracy on 8 samples spread over the batch, against scipy's Radau at rtol 1e-11
    picks = np.linspace(0, args.batch - 1, 8).round().astype(int)
    ref = np.stack([reference(float(mus[i])) for i in picks])  # (8, times, 2)
    runs = {"neuralode": sol.ys.permute(1, 0, 2).numpy()[picks]}
    if worker is not None:
        runs["diffrax"] = np.asarray(result["ys"])[picks]
    print()
    for name, ys in runs.items():
        err = np.abs(ys - ref) / (ATOL + RTOL * np.abs(ref))
        print(f"{name}: largest error on 8 samples against Radau: {err.max():.2f} tolerance units")
    print(f"\nbatch / one system: {b / a:.1f}x (goal <= 20x): {verdict(b / a <= 20)}")
    if worker is not None:
        print(f"neuralode / diffrax: {b / d:.2f}x (goal <= 2x): {verdict(b / d <= 2)}")
        worker.stdin.close()
        worker.wait()


if __name__ == "__main__":
    main()
