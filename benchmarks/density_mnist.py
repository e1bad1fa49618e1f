"""MNIST bits/dim in a stated CPU budget, with and without RNODE, side by side.

Trains the density task's multiscale flow (``neuralode train density --dataset mnist``; here a
small configuration a CPU can move in minutes: ``--hidden``, ``--depth``, ``--blocks``, batch
``--batch``, Hutchinson trace, dopri5 at ``--tol``) twice from the same weights on the same
batches — unregularized, and with RNODE's kinetic and Jacobian terms — interleaved in chunks
whose order alternates, each until it has used ``--minutes`` of CPU time (``process_time``
while it trains). Then both are evaluated on the first ``--test`` test images (bits/dim,
evaluation noise from a fixed seed) and compared. Anchors: FFJORD 0.99 bits/dim and RNODE 0.97
(full models, GPU, many hours).

    python benchmarks/density_mnist.py --data-dir ../shared/data [--minutes 10]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from density_common import table

from neuralode import regularization_loss, solve_stats
from neuralode.tasks import get_task, make_options

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--minutes", type=float, default=10.0, help="CPU minutes per model")
    p.add_argument("--chunk", type=int, default=5, help="iterations per interleaved chunk")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kinetic", type=float, default=0.01)
    p.add_argument("--jacobian", type=float, default=0.01)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    common = dict(dataset="mnist", data_dir=a.data_dir, hidden=a.hidden, depth=a.depth,
                  blocks=a.blocks, rtol=a.tol, atol=a.tol, eval_rtol=a.tol, eval_atol=a.tol,
                  test_subset=a.test, batch_size=a.batch)  # fmt: skip
    tasks = {
        "unregularized": get_task("density")(make_options("density", **common)),
        "RNODE": get_task("density")(
            make_options("density", kinetic=a.kinetic, jacobian=a.jacobian, **common)
        ),
    }
    torch.manual_seed(0)
    models = {k: t.build_model() for k, t in tasks.items()}
    models["RNODE"].load_state_dict(copy.deepcopy(models["unregularized"].state_dict()))
    data = tasks["unregularized"].load_data()
    opts = {k: torch.optim.Adam(m.parameters(), lr=a.lr) for k, m in models.items()}
    cpu = dict.fromkeys(models, 0.0)
    iters = dict.fromkeys(models, 0)
    nfe = dict.fromkeys(models, 0)
    budget = a.minutes * 60
    gen = torch.Generator().manual_seed(0)
    chunk_no = 0
    while min(cpu.values()) < budget:
        batches = []
        for _ in range(a.chunk):
            idx = torch.randint(0, len(data.train), (a.batch,), generator=gen)
            u = torch.rand(data.train[idx].shape, generator=gen)
            batches.append((data.train[idx].float() + u) / 256)
        order = list(models) if chunk_no % 2 == 0 else list(models)[::-1]
        for name in order:
            if cpu[name] >= budget:
                continue
            model, task = models[name], tasks[name]
            t0 = time.process_time()
            for x in batches:
                loss = task.training_step(model, x, torch.device("cpu")).loss
                reg = regularization_loss(model)
                opts[name].zero_grad(set_to_none=True)
                (loss if reg is None else loss + reg).backward()
                opts[name].step()
                nfe[name] += solve_stats(model).nfe_forward
                iters[name] += 1
            cpu[name] += time.process_time() - t0
        chunk_no += 1
    rows = [["model", "test bits/dim", "iterations", "CPU s", "NFE/iter", "eval NFE"]]
    for name, model in models.items():
        ev = tasks[name].evaluate(model, data, "test", torch.device("cpu"))
        rows.append([name, f"{ev['bpd']:.3f}", str(iters[name]), f"{cpu[name]:.0f}",
                     f"{nfe[name] / iters[name]:.1f}", f"{ev['nfe_forward']:.0f}"])  # fmt: skip
    print(f"MNIST, multiscale flow hidden {a.hidden}×{a.depth}, {a.blocks} block(s) per scale, "
          f"batch {a.batch}, tolerance {a.tol}, {a.minutes:g} CPU minutes each, "
          f"test on {a.test} images; RNODE kinetic {a.kinetic}, jacobian {a.jacobian}")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
