"""RNODE pays: the same flow trained with and without RNODE's regularizers, side by side.

Both models start from the same weights and see the same batches for the same number of
iterations (the density task's model; Adam with a cosine learning rate). They train
interleaved, in chunks of iterations whose order alternates, so that a noisy neighbour lands
on both. It prints each one's exact test NLL (100,000 fresh samples — a standard error near
0.005 nats — at the evaluation tolerances),
its forward NFE per iteration (mean over the last half of training, when the dynamics have
taken shape), its training wall time, and the ratios against the goals.

    python benchmarks/density_rnode.py [--dataset 8gaussians] [--iters 2000]
        [--kinetic 0.05] [--jacobian 0.05]

Goals: issue 14's — NLL within 0.05 nats of the unregularized flow, with ≥ 2× fewer NFE per
iteration and ≥ 1.7× less wall time; issue 27's for 2-D data — ≥ 1.5× fewer NFE per iteration
at equal NLL (within 0.02 nats).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from density_common import build, cosine, table, test_nll, train_step

from neuralode.regularizers import JacobianFrobenius, KineticEnergy
from neuralode.toy_densities import TOY_DATASETS, get_toy

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="8gaussians", choices=list(TOY_DATASETS))
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=25, help="iterations per interleaved chunk")
    p.add_argument("--kinetic", type=float, default=0.05)
    p.add_argument("--jacobian", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dynamics", default="fourier", choices=("fourier", "concatsquash"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    base, _ = build(a.dataset, dynamics=a.dynamics)
    rnode, _ = build(a.dataset, dynamics=a.dynamics, kinetic=a.kinetic, jacobian=a.jacobian)
    rnode.load_state_dict(copy.deepcopy(base.state_dict()))
    assert any(isinstance(r, (KineticEnergy, JacobianFrobenius))
               for r in rnode.flow.layers[0].flow_regularizers)  # fmt: skip
    models = {"unregularized": base, "RNODE": rnode}
    opts = {k: torch.optim.Adam(m.parameters(), lr=a.lr) for k, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    nfe = {k: [] for k in models}
    dist = get_toy(a.dataset)
    gen = torch.Generator().manual_seed(a.seed)
    done = 0
    while done < a.iters:
        n = min(a.chunk, a.iters - done)
        batches = [dist.sample(a.batch, gen) for _ in range(n)]
        order = list(models) if (done // a.chunk) % 2 == 0 else list(models)[::-1]
        for name in order:
            t0 = time.perf_counter()
            for i, x in enumerate(batches):
                for g in opts[name].param_groups:
                    g["lr"] = cosine(a.lr, (done + i) / a.iters)
                nfe[name].append(train_step(models[name], opts[name], x)["nfe_forward"])
            seconds[name] += time.perf_counter() - t0
        done += n
    half = a.iters // 2
    res = {k: {"nll": test_nll(m, a.dataset, n=100_000),
               "nfe": sum(nfe[k][half:]) / len(nfe[k][half:]),
               "nfe_all": sum(nfe[k]) / len(nfe[k]), "seconds": seconds[k]}
           for k, m in models.items()}  # fmt: skip
    b, r = res["unregularized"], res["RNODE"]
    print(f"{a.dataset}, {a.iters} iterations of batch {a.batch}, RNODE kinetic {a.kinetic} "
          f"jacobian {a.jacobian}, interleaved in chunks of {a.chunk}")  # fmt: skip
    rows = [["model", "test NLL", "NFE/iter (2nd half)", "NFE/iter (all)", "train s"]]
    for k, v in res.items():
        rows.append([k, f"{v['nll']:.3f}", f"{v['nfe']:.1f}", f"{v['nfe_all']:.1f}",
                     f"{v['seconds']:.1f}"])  # fmt: skip
    print(table(rows))
    d_nll = r["nll"] - b["nll"]
    nfe_ratio = b["nfe"] / r["nfe"]
    wall_ratio = b["seconds"] / r["seconds"]
    print(
        f"NLL difference (RNODE − unregularized): {d_nll:+.3f} nats (goal ≤ 0.05: "
        f"{'met' if d_nll <= 0.05 else 'NOT met'})"
    )
    print(
        f"NFE per iteration: {nfe_ratio:.2f}× fewer with RNODE (goal ≥ 2: "
        f"{'met' if nfe_ratio >= 2 else 'NOT met'})"
    )
    print(
        f"wall time: {wall_ratio:.2f}× less with RNODE (goal ≥ 1.7: "
        f"{'met' if wall_ratio >= 1.7 else 'NOT met'})"
    )
    equal = abs(d_nll) <= 0.02
    print(
        f"issue 27 (2-D): {nfe_ratio:.2f}× fewer NFE at an NLL {d_nll:+.3f} nats away (goal ≥ 1.5× "
        f"within 0.02: {'met' if equal and nfe_ratio >= 1.5 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
