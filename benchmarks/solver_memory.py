"""Peak memory of one training step as the integration length grows (native engine).

For T = 1 … 64, each gradient method — direct backpropagation, the checkpointed discrete
adjoint and the continuous adjoint — runs one forward and backward pass in a fresh process; the
script prints the increase of the process's peak resident memory over a warmed-up baseline
(CPU; on a GPU, torch.cuda.max_memory_allocated is used instead), the steps taken, and the
ratio to T = 1. Expected: direct grows with steps × activations, checkpoint with steps × state,
adjoint stays flat.

    python benchmarks/solver_memory.py [--lengths 1 2 4 8 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

METHODS = ("direct", "checkpoint", "adjoint")


def child(method: str, T: float, device: str) -> dict:
    import torch
    from torch import nn

    import neuralode

    torch.manual_seed(0)
    torch.set_num_threads(1)
    f = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64)).to(device)
    for m in f:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.3)

    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = f

        def forward(self, t, y):
            return self.f(y)

    dyn = Dyn()
    y0 = torch.randn(256, 64, device=device)

    def step(length: float) -> neuralode.SolveStats:
        stats = neuralode.SolveStats()
        t = torch.tensor([0.0, length], device=device)
        kw = dict(rtol=1e-4, atol=1e-6, backend="native", stats=stats)
        if method == "adjoint":
            out = neuralode.odeint_adjoint(dyn, y0, t, **kw)
        else:
            out = neuralode.odeint(dyn, y0, t, gradient=method, **kw)
        out[-1].pow(2).mean().backward()
        return stats

    step(0.05)  # warm-up: libraries loaded, allocator primed
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = step(T)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak_mb": max(peak, 0) / 2**20, "steps": stats.steps_accepted}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=float, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], float(args.child[1]), args.device)))
        return
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for method in METHODS:
        for T in args.lengths:
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--child", method, str(T)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        "peak memory of one training step above baseline, MB "
        f"(dynamics 64→256→64, batch 256, dopri5 rtol 1e-4, {args.device})"
    )
    print(f"{'T':>5} {'steps':>6} " + " ".join(f"{m:>11}" for m in METHODS))
    for i, T in enumerate(args.lengths):
        row = " ".join(f"{results[m][i]['peak_mb']:>11.1f}" for m in METHODS)
        print(f"{T:>5g} {results['direct'][i]['steps']:>6} {row}")


if __name__ == "__main__":
    main()
