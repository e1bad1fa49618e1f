"""A batch of series, each observed at its own irregular times: per-sample solving against the
union of all times (torchdiffeq's only way) and against a Python loop over the series.

Every series has its own length and observation times. The ways run in turn, in alternating
repeats (so that a noisy neighbour lands on all of them), on the same dynamics (a small tanh
MLP, as a latent ODE's):

- per-sample: ``neuralode.odeint`` with ``t`` of shape ``(batch, n)``;
- the union of all times solved by torchdiffeq (what a torchdiffeq user must do) and by
  neuralode's joint lane (our own engine on the same workaround);
- a Python loop over the series (neuralode, one solve each).

It prints the median time of each, the ratios, the goals (per-sample ≥ 2× faster than
torchdiffeq's union, ≥ 5× faster than the loop), the ratio to our own union for the record,
and whether every series took the steps it takes alone.

    python benchmarks/per_sample_times.py [--batch 128] [--obs 30] [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchdiffeq
from torch import nn

import neuralode
from neuralode import SolveStats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--obs", type=int, default=30, help="observations per series (at most)")
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-7)
    p.add_argument("--device", default="cpu", help="cpu, cuda, …: where every way runs")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    B, n, D = args.batch, args.obs, args.dim
    net = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, D)).double().to(device)

    def f(t, y):
        return net(y)

    y0 = torch.randn(B, D, dtype=torch.float64)
    # every series starts at 0 (as the union of times needs) and has 10..n observations of its
    # own over up to 10 time units
    times = torch.sort(torch.rand(B, n, dtype=torch.float64) * 10, dim=1).values
    times[:, 0] = 0.0
    lengths = torch.randint(10, n + 1, (B,))
    for b in range(B):
        times[b, lengths[b] :] = times[b, lengths[b] - 1]
    y0, times = y0.to(device), times.to(device)
    kw = dict(rtol=args.rtol, atol=args.atol)

    def per_sample():
        stats = SolveStats()
        out = neuralode.odeint(f, y0, times, options={"batch_mode": "per_sample"}, stats=stats,
                               **kw)  # fmt: skip
        return out, stats

    union_t = torch.unique(torch.cat([times[b, : lengths[b]] for b in range(B)]))

    def union():  # the whole batch at every series' times; each series then picks its own
        return neuralode.odeint(f, y0, union_t, **kw), None

    def union_torchdiffeq():
        return torchdiffeq.odeint(f, y0, union_t, **kw), None

    def loop():
        return [neuralode.odeint(f, y0[b : b + 1], times[b, : lengths[b]], **kw)
                for b in range(B)], None  # fmt: skip

    ways = {
        "per-sample": per_sample,
        "union, torchdiffeq": union_torchdiffeq,
        "union, neuralode": union,
        "loop over series": loop,
    }
    spent = {w: [] for w in ways}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, run in ways.items():
                _sync(device)
                start = time.perf_counter()
                result = run()
                _sync(device)
                spent[name].append(time.perf_counter() - start)
                if name == "per-sample":
                    stats = result[1]
        # each series alone: its own steps and NFE in the per-sample lane
        alone = []
        for b in range(B):
            s = SolveStats()
            neuralode.odeint(f, y0[b : b + 1], times[b : b + 1], stats=s,
                             options={"batch_mode": "per_sample"}, **kw)  # fmt: skip
            alone.append(s.nfe_per_sample[0])
    print(
        f"{B} series, {D}-dim tanh MLP dynamics, 10..{n} observations each at their own "
        f"times ({len(union_t)} distinct times in all), dopri5 rtol {args.rtol:g}, "
        f"{'1 thread' if device.type == 'cpu' else device}"
    )
    med = {w: statistics.median(v) for w, v in spent.items()}
    for w, v in med.items():
        print(f"  {w:18s} {1e3 * v:9.1f} ms")
    vs_union = med["union, torchdiffeq"] / med["per-sample"]
    vs_own = med["union, neuralode"] / med["per-sample"]
    vs_loop = med["loop over series"] / med["per-sample"]
    same = stats.nfe_per_sample == alone
    print(f"per-sample vs torchdiffeq on the union of times: {vs_union:.2f}× faster "
          f"(goal ≥ 2×: {'met' if vs_union >= 2 else 'NOT met'})")  # fmt: skip
    print(f"per-sample vs loop over series: {vs_loop:.2f}× faster "
          f"(goal ≥ 5×: {'met' if vs_loop >= 5 else 'NOT met'})")  # fmt: skip
    print(f"per-sample vs neuralode's joint lane on the union of times: {vs_own:.2f}× "
          f"(no goal; the joint lane's fused dense output makes the union cheap)")  # fmt: skip
    print(f"every series took the evaluations it takes alone: {same} "
          f"(per-sample NFE {sum(stats.nfe_per_sample)} in all, mean "
          f"{sum(alone) / B:.0f} per series)")  # fmt: skip


if __name__ == "__main__":
    main()
