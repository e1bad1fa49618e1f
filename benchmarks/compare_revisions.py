"""The native engine of this working tree against the one of another git revision, interleaved.

A change to the engine must not make it slower; two benchmark runs minutes apart on a shared
machine differ by more than the change. This script imports both engines into one process (the
revision's copy as the package ``neuralode_rev``, its C kernels built in a temporary folder)
and times them on the problem of ``solver_speed.py`` in alternating repeats, so that load from a
noisy neighbour lands on both sides. It prints the median time per solve of each and the ratio.

    python benchmarks/compare_revisions.py [--rev HEAD~1] [--repeats 60] [--width 128]
                                           [--modes forward,adjoint,per-sample,stiff,
                                            stiff-per-sample,stiff-adjoint,timeseries]

The modes per-sample, stiff, stiff-per-sample, stiff-adjoint and timeseries need a revision
that has them (per-sample times, kvaerno5, implicit methods on the per-sample lane,
neuralode.series).

Needs git and a C compiler (as ``pip install`` does for the kernels).
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import torch
from torch import nn

import neuralode

ROOT = pathlib.Path(__file__).resolve().parents[1]


def import_revision(rev: str, folder: pathlib.Path):
    """``src/neuralode`` of ``rev`` as the package ``neuralode_rev`` (its imports are relative)."""
    archive = folder / "src.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "archive", rev, "src/neuralode"], cwd=ROOT, stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    (folder / "src" / "neuralode").rename(folder / "neuralode_rev")
    build = (
        "from setuptools import Extension, setup; setup(name='rev', script_args=['build_ext', "
        "'--inplace', '-q'], ext_modules=[Extension('neuralode_rev.solvers._fused', "
        "['neuralode_rev/solvers/_fused.c'], extra_compile_args=['-O3', '-fopenmp-simd'])])"
    )
    subprocess.run([sys.executable, "-c", build], cwd=folder, check=True, capture_output=True)
    sys.path.insert(0, str(folder))
    return importlib.import_module("neuralode_rev")


class Dynamics(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim))

    def forward(self, t, y):
        return self.net(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD~1", help="git revision to compare against")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="forward,forward+backward,checkpoint,adjoint",
                   help="comma-separated modes to time")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rev = import_revision(args.rev, pathlib.Path(tmp))
        torch.manual_seed(0)
        func = Dynamics(64, args.width)
        y0 = torch.randn(128, 64)
        t = torch.tensor([0.0, 1.0])
        kw = dict(rtol=1e-3, atol=1e-5, method="dopri5")

        def forward(lib):
            with torch.no_grad():
                lib.odeint(func, y0, t, **kw)

        def backward(lib, **extra):
            y = y0.clone().requires_grad_(True)
            solve = lib.odeint_adjoint if extra.pop("adjoint", False) else lib.odeint
            solve(func, y, t, **kw, **extra)[-1].sum().backward()

        # the adjoint with the seminorm named: revisions before the adjoint took torchdiffeq's
        # default norm used the seminorm by default, so this is the same work on both sides
        seminorm = {"adjoint_options": {"norm": "seminorm"}}

        # per-sample times (revisions since a51288a): 64 series of a 4-dim tanh MLP, each with
        # 10-20 observations of its own over up to 10 time units
        small = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4)).double()
        rows = torch.sort(torch.rand(64, 20, dtype=torch.float64) * 10, dim=1).values
        rows[:, 0] = 0.0
        for b, n in enumerate(torch.randint(10, 21, (64,)).tolist()):
            rows[b, n:] = rows[b, n - 1]
        y_small = torch.randn(64, 4, dtype=torch.float64)

        def per_sample(lib):
            with torch.no_grad():
                lib.odeint(lambda t, y: small(y), y_small, rows, rtol=1e-5, atol=1e-7,
                           options={"batch_mode": "per_sample"})  # fmt: skip

        # stiff (revisions since f15bf9a): kvaerno5 on Van der Pol, mu = 1000, through its first
        # relaxation jump
        def vdp(t, y):
            return torch.stack((y[1], 1000.0 * (1 - y[0] ** 2) * y[1] - y[0]))

        y_vdp = torch.tensor([2.0, 0.0], dtype=torch.float64)
        t_vdp = torch.tensor([0.0, 1000.0], dtype=torch.float64)

        def stiff(lib):
            # the same work on both sides: kvaerno5's error estimate as the tableau gives it
            # and torchdiffeq's step rule (revisions since 2026-12-06 multiply the estimate by
            # error_factor = 2.5 and let a step shrink after an accepted one by default)
            solvers = getattr(lib, "solvers", None)
            implicit = getattr(solvers, "_implicit", None)
            opts = {}
            if "error_factor" in getattr(implicit, "IMPLICIT_OPTIONS", ()):
                opts["error_factor"] = 1.0
            if hasattr(getattr(solvers, "PIController", None), "accept_floor"):
                opts["accept_floor"] = 1.0
            lib.odeint(vdp, y_vdp, t_vdp, rtol=1e-6, atol=1e-6, method="kvaerno5",
                       options=opts or None)  # fmt: skip

        # stiff on the per-sample lane (revisions since e122bd0): kvaerno5 on 16 Van der Pol
        # systems, mu from 10 to 1,000, each its own steps and Newton iterations
        mus = torch.logspace(1, 3, 16, dtype=torch.float64)
        y_sweep = torch.tensor([[2.0, 0.0]] * 16, dtype=torch.float64)
        t_sweep = torch.tensor([0.0, 20.0], dtype=torch.float64)

        def sweep(t, y):
            x, v = y[..., 0], y[..., 1]
            return torch.stack([v, mus * (1 - x * x) * v - x], dim=-1)

        def stiff_per_sample(lib):
            with torch.no_grad():
                lib.odeint(sweep, y_sweep, t_sweep, rtol=1e-6, atol=1e-8, method="kvaerno5",
                           options={"batch_mode": "per_sample"})  # fmt: skip

        # the adjoint of a stiff solve (revisions since 4ca7641): kvaerno5 on Van der Pol,
        # mu = 50, through two relaxation oscillations; the gradient of the end state with
        # respect to the start and mu
        class _VdP(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mu = nn.Parameter(torch.tensor(50.0, dtype=torch.float64))

            def forward(self, t, y):
                return torch.stack([y[1], self.mu * (1 - y[0] ** 2) * y[1] - y[0]])

        vdp50 = _VdP()
        y_adj = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
        t_adj = torch.tensor([0.0, 30.0], dtype=torch.float64)

        def stiff_adjoint(lib):
            y = lib.odeint_adjoint(vdp50, y_adj, t_adj, rtol=1e-6, atol=1e-8, method="kvaerno5")
            torch.autograd.grad(y[-1].sum(), (y_adj, vdp50.mu))

        # time series (revisions since ead01f8): a latent ODE's ELBO and its gradient on 32
        # periodic series (ODE-RNN encoder and decoder on per-sample times), each revision's
        # model built from the same seed
        latent = {}

        def timeseries(lib):
            if lib not in latent:
                series = lib.series.make_periodic(32, 20, seed=0)
                torch.manual_seed(1)
                model = lib.series.LatentODE(1, latent=4, hidden=16, encoder_hidden=16).double()
                latent[lib] = (model, *lib.series.split_at(series))
            model, past, future = latent[lib]
            model(past, future)["loss"].backward()

        modes = {
            "forward": forward,
            "forward+backward": backward,
            "checkpoint": lambda lib: backward(lib, gradient="checkpoint"),
            "adjoint": lambda lib: backward(lib, adjoint=True, **seminorm),
            "per-sample": per_sample,
            "stiff": stiff,
            "stiff-per-sample": stiff_per_sample,
            "stiff-adjoint": stiff_adjoint,
            "timeseries": timeseries,
        }
        print(f"this tree vs {args.rev}: dopri5, batch 128, width {args.width}, "
              f"{args.threads} thread(s), {args.repeats} alternating repeats (per-sample: 64 "
              "series with times of their own; stiff: kvaerno5 on Van der Pol, mu = 1000)"
              )  # fmt: skip
        print(f"{'mode':<18} {args.rev:>12} {'this tree':>12} {'ratio':>7}   (ratio = this tree "
              "over the revision, of the medians)")  # fmt: skip
        for name, fn in modes.items():
            if name not in args.modes.split(","):
                continue
            times: dict[str, list[float]] = {"rev": [], "tree": []}
            for lib in (rev, neuralode, rev, neuralode):  # warm-up
                fn(lib)
            for r in range(args.repeats):
                pair = [("rev", rev), ("tree", neuralode)]
                for key, lib in pair if r % 2 == 0 else pair[::-1]:
                    t0 = time.perf_counter()
                    fn(lib)
                    times[key].append(time.perf_counter() - t0)
            old, new = (statistics.median(times[k]) for k in ("rev", "tree"))
            # the spread of the ratio: medians of the pairs' ratios over halves of the repeats
            pairs = [n / o for o, n in zip(times["rev"], times["tree"], strict=True)]
            half = len(pairs) // 2
            halves = [statistics.median(pairs[:half]), statistics.median(pairs[half:])]
            q = statistics.quantiles(pairs, n=4)
            print(f"{name:<18} {old * 1e3:10.3f}ms {new * 1e3:10.3f}ms {new / old:7.3f}   "
                  f"pair ratios: median {statistics.median(pairs):.3f}, IQR {q[0]:.3f}–{q[2]:.3f}, "
                  f"halves {halves[0]:.3f}/{halves[1]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
