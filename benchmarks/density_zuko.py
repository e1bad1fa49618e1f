"""The density task's default 2-D flow against zuko's CNF at equal CPU time, side by side.

For each dataset and seed, one process trains both models from the same seed on the same
stream of fresh batches (512 samples, Adam at 3e-3 decayed to 0 by a cosine schedule over each
model's own budget — the task's recipe), in alternating chunks of iterations, each until it has
used ``--seconds`` of CPU time (``time.process_time`` around its own iterations only, so that a
busy neighbour does not shorten either budget). Then it prints each model's exact test NLL on the
density task's 100,000 test samples with its standard error, and the gap to the data's entropy
(quadrature, or exact for the checkerboard).

* neuralode: ``neuralode train density``'s model — one CNF block, T = 0.5, an MLP 64×3 with
  Fourier time features (ELU), exact trace, dopri5 at 1e-5 (``--dynamics concatsquash`` runs
  FFJORD's concat-squash MLP instead, the task's default before);
* zuko: ``zuko.flows.CNF(2, hidden_features=(64, 64, 64))`` — its defaults: ELU, 3 time
  frequencies, T = 1, its adaptive solver at atol 1e-6, rtol 1e-5, exact trace.

    pip install -e ".[bench]"   # zuko
    python benchmarks/density_zuko.py [--seconds 180] [--seeds 0 1 2] [--jobs 2]

Goal (issue 27): at equal CPU time on 8 Gaussians and the checkerboard, our default reaches a
lower test NLL than zuko's CNF, for every seed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
import warnings

import torch
from density_common import TEST_SEED, build, cosine

from neuralode.toy_densities import entropy, get_toy

warnings.filterwarnings("ignore")

DATASETS = ("8gaussians", "checkerboard")
TEST_SIZE = 100_000


class _Trainee:
    """One model, its optimizer and the CPU time its own iterations used."""

    def __init__(self, name: str, log_prob, module: torch.nn.Module, lr: float) -> None:
        self.name, self.log_prob, self.module = name, log_prob, module
        self.opt = torch.optim.Adam(module.parameters(), lr=lr)
        self.lr, self.used, self.iters = lr, 0.0, 0

    def step(self, x: torch.Tensor, budget: float) -> None:
        start = time.process_time()
        for group in self.opt.param_groups:
            group["lr"] = cosine(self.lr, self.used / budget)
        self.module.train()
        loss = -self.log_prob(x).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.iters += 1
        self.used += time.process_time() - start

    @torch.no_grad()
    def test(self, x: torch.Tensor) -> tuple[float, float]:
        self.module.eval()
        nll = torch.cat([-self.log_prob(xb) for xb in x.split(5000)]).double()
        return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))


def _ours(dataset: str, lr: float, dynamics: str) -> _Trainee:
    model, _ = build(dataset, dynamics=dynamics)
    return _Trainee("neuralode", model, model, lr)


def _zuko(lr: float) -> _Trainee:
    import zuko

    flow = zuko.flows.CNF(2, hidden_features=(64, 64, 64))
    return _Trainee("zuko", lambda x: flow().log_prob(x), flow, lr)


def run(job: tuple[str, int, float, float, int, int, str]) -> dict:
    dataset, seed, seconds, lr, batch, chunk, dynamics = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    ours = _ours(dataset, lr, dynamics)
    torch.manual_seed(seed)
    peer = _zuko(lr)
    dist = get_toy(dataset)
    gens = {m.name: torch.Generator().manual_seed(seed) for m in (ours, peer)}
    turn = 0
    while ours.used < seconds or peer.used < seconds:
        # alternate chunks, the order swapping each round: load lands on both alike
        order = (ours, peer) if turn % 2 == 0 else (peer, ours)
        for m in order:
            for _ in range(chunk):
                if m.used < seconds:
                    m.step(dist.sample(batch, gens[m.name]), seconds)
        turn += 1
    test = dist.sample(TEST_SIZE, torch.Generator().manual_seed(TEST_SEED))
    h, _ = entropy(dataset)
    out: dict = {"dataset": dataset, "seed": seed, "entropy": h}
    for m in (ours, peer):
        nll, se = m.test(test)
        out[m.name] = {"nll": nll, "se": se, "gap": nll - h, "iterations": m.iters,
                       "cpu_seconds": round(m.used, 1)}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=180.0, help="CPU seconds per model")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--chunk", type=int, default=10, help="iterations per turn")
    p.add_argument("--dynamics", default="fourier", choices=("fourier", "concatsquash"))
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    jobs = [(d, s, a.seconds, a.lr, a.batch, a.chunk, a.dynamics)
            for d in a.datasets for s in a.seeds]  # fmt: skip
    if a.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(a.jobs) as pool:
            results = pool.map(run, jobs)
    else:
        results = [run(j) for j in jobs]
    print(f"{a.seconds:g} CPU s per model, dynamics {a.dynamics}, lr {a.lr:g}, batch {a.batch}")
    print("| dataset | seed | neuralode NLL (gap) | iterations | zuko NLL (gap) | iterations |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        o, z = r["neuralode"], r["zuko"]
        print(f"| {r['dataset']} | {r['seed']} | {o['nll']:.4f} ± {o['se']:.4f} "
              f"({o['gap']:.4f}) | {o['iterations']} | {z['nll']:.4f} ± {z['se']:.4f} "
              f"({z['gap']:.4f}) | {z['iterations']} |")  # fmt: skip
    print()
    for d in a.datasets:
        rs = [r for r in results if r["dataset"] == d]
        ours = [r["neuralode"]["gap"] for r in rs]
        peer = [r["zuko"]["gap"] for r in rs]
        wins = sum(o < z for o, z in zip(ours, peer, strict=True))
        met = "met" if wins == len(rs) else "NOT met"
        print(f"{d}: mean gap neuralode {statistics.mean(ours):.4f}, zuko "
              f"{statistics.mean(peer):.4f}; lower NLL in {wins} of {len(rs)} seeds: "
              f"{met}")  # fmt: skip
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
