"""MNIST bits/dim in a stated CPU budget, with and without RNODE, side by side.

Trains the density task's multiscale flow (``neuralode train density --dataset mnist``; here a
small configuration a CPU can move in minutes: ``--size`` 28, or MNIST averaged over 2×2 or
4×4 blocks of pixels (14, 7: the task's ``--image-size``), ``--hidden``, ``--depth``,
``--blocks``, batch ``--batch``, Hutchinson trace, dopri5 at ``--tol``) twice from the same
weights on the same batches — unregularized, and with RNODE's kinetic and Jacobian terms —
interleaved in chunks whose order alternates, each until it has used ``--minutes`` of CPU time
(``process_time`` while it trains). Every ``--eval-every`` iterations each is evaluated on the
first ``--val`` validation images (outside its CPU time). At the end: test bits/dim on the first
``--test`` test images, NFE per iteration, and the CPU time each took to reach the
unregularized flow's last validation bits/dim + 0.02 (or ``--threshold``), with issue 27's
goals (RNODE ≥ 2× fewer evaluations per iteration, ≥ 1.7× less time to the same bits/dim)
printed met or NOT met. Anchors: FFJORD 0.99 bits/dim and RNODE 0.97 on 28×28 (full models,
GPU, many hours).

    python benchmarks/density_mnist.py --data-dir ../shared/data [--minutes 10] [--size 7]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
    p.add_argument("--size", type=int, default=28, choices=(28, 14, 7), help="image side")
    p.add_argument("--chunk", type=int, default=5, help="iterations per interleaved chunk")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kinetic", type=float, default=0.01)
    p.add_argument("--jacobian", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=50, help="iterations between evaluations")
    p.add_argument("--val", type=int, default=500, help="validation images per evaluation")
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--threshold", type=float, default=None, help="bits/dim to time")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.eval_every % a.chunk:
        p.error("--eval-every must be a multiple of --chunk")
    torch.set_num_threads(a.threads)
    common = dict(dataset="mnist", data_dir=a.data_dir, image_size=a.size, hidden=a.hidden,
                  depth=a.depth, blocks=a.blocks, rtol=a.tol, atol=a.tol, eval_rtol=a.tol,
                  eval_atol=a.tol, test_subset=a.test, batch_size=a.batch)  # fmt: skip
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
    val = dataclasses.replace(data, val=data.val[: a.val])
    opts = {k: torch.optim.Adam(m.parameters(), lr=a.lr) for k, m in models.items()}
    cpu = dict.fromkeys(models, 0.0)
    iters = dict.fromkeys(models, 0)
    nfe = dict.fromkeys(models, 0)
    window = dict.fromkeys(models, 0)  # evaluations since the last evaluation
    curve: dict[str, list[tuple[int, float, float, float]]] = {k: [] for k in models}
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
                n = solve_stats(model).nfe_forward
                nfe[name] += n
                window[name] += n
                iters[name] += 1
            cpu[name] += time.process_time() - t0
            if iters[name] % a.eval_every == 0:
                bpd = task.evaluate(model, val, "val", torch.device("cpu"))["bpd"]
                curve[name].append((iters[name], cpu[name], bpd, window[name] / a.eval_every))
                window[name] = 0
                model.train()
        chunk_no += 1
    print(f"MNIST {a.size}×{a.size}, multiscale flow hidden {a.hidden}×{a.depth}, {a.blocks} "
          f"block(s) per scale, batch {a.batch}, tolerance {a.tol}, {a.minutes:g} CPU minutes "
          f"each; validation on {a.val} images every {a.eval_every} iterations, test on "
          f"{a.test}; RNODE kinetic {a.kinetic}, jacobian {a.jacobian}")  # fmt: skip
    rows = [["iteration", *(f"{k}: CPU s / val bits/dim / NFE/iter" for k in models)]]
    for points in zip(*curve.values()):
        cells = [f"{c:.0f} / {b:.3f} / {w:.1f}" for _, c, b, w in points]
        rows.append([str(points[0][0]), *cells])
    print(table(rows))
    rows = [["model", "test bits/dim", "iterations", "CPU s", "NFE/iter", "eval NFE"]]
    for name, model in models.items():
        ev = tasks[name].evaluate(model, data, "test", torch.device("cpu"))
        rows.append([name, f"{ev['bpd']:.3f}", str(iters[name]), f"{cpu[name]:.0f}",
                     f"{nfe[name] / iters[name]:.1f}", f"{ev['nfe_forward']:.0f}"])  # fmt: skip
    print(table(rows))
    plain, rnode = (nfe[k] / iters[k] for k in models)
    verdict = {True: "met", False: "NOT met"}
    print(f"NFE per iteration: RNODE {plain / rnode:.2f}× fewer (goal ≥ 2): "
          f"{verdict[plain / rnode >= 2]}")  # fmt: skip
    if not all(curve.values()):
        print("no evaluation was made: train longer than --eval-every iterations")
        return
    threshold = a.threshold if a.threshold is not None else curve["unregularized"][-1][2] + 0.02
    reached = {
        k: next((c for _, c, b, _ in pts if b <= threshold), None) for k, pts in curve.items()
    }
    times = ", ".join(
        f"{k} {'not reached' if c is None else f'{c:.0f} s'}" for k, c in reached.items()
    )
    if None in reached.values():
        print(f"CPU time to val bits/dim ≤ {threshold:.3f}: {times}: goal (≥ 1.7× less) NOT met")
    else:
        ratio = reached["unregularized"] / reached["RNODE"]
        print(f"CPU time to val bits/dim ≤ {threshold:.3f}: {times}; RNODE {ratio:.2f}× less "
              f"(goal ≥ 1.7): {verdict[ratio >= 1.7]}")  # fmt: skip


if __name__ == "__main__":
    main()
