"""Training throughput of this working tree against another git revision, interleaved.

A change to the training layer (the loop, its callbacks, the run folder) must not slow
training. This script imports both packages into one process (the revision's copy as
``neuralode_rev``, see ``compare_revisions.py``) and trains the same short run of each task with
each, alternating, into fresh temporary folders. It prints, per task, the median seconds of the
whole ``train()`` call (data, epochs, evaluation, checkpoints) and of the epochs alone
(``train_seconds``), the ratio ours / revision of each, and the spread of the per-pair ratios
(the interquartile range), so that "within noise" is a measured statement.

    python benchmarks/training_throughput.py [--rev HEAD] [--repeats 8] [--tasks spiral,mnist]
        [--data-dir ../shared/data]

MNIST needs its files under ``--data-dir`` (default: ``$NEURALODE_DATA_DIR``, else
``../shared/data``).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time

import torch

import neuralode

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_revisions import import_revision

ROOT = pathlib.Path(__file__).resolve().parents[1]
WARMUP = 2  # pairs not timed (with one, the first task listed ran 7-9% off either way)

# about two to five seconds each on one CPU thread; every task's loop, evaluation and checkpoint
RUNS = {
    "spiral": {"epochs": 2, "iters": 30},
    "cubic": {"epochs": 2, "iters": 30},
    "mnist": {
        "epochs": 1,
        "train_subset": 1024,
        "test_subset": 256,
        "batch_size": 64,
        "method": "rk4",
    },
    "density": {"epochs": 2, "iters": 15, "val_size": 500, "test_size": 1000},
    "timeseries": {"epochs": 2, "series": 200, "model": "latent_ode", "encoder": "rnn"},
}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD", help="git revision to compare against")
    p.add_argument("--repeats", type=int, default=8, help="interleaved pairs (at least 1)")
    p.add_argument("--tasks", default=",".join(RUNS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--data-dir",
        default=os.environ.get("NEURALODE_DATA_DIR", str(ROOT.parent / "shared" / "data")),
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the runs' INFO lines and the explosion warnings
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(RUNS))
    if unknown:
        p.error(f"unknown tasks {unknown}; choose from {', '.join(RUNS)}")
    with tempfile.TemporaryDirectory() as tmp:
        rev = import_revision(args.rev, pathlib.Path(tmp))
        sides = {"ours": neuralode, "rev": rev}
        print(f"training throughput: this tree / {args.rev}, {args.repeats} interleaved pairs, "
              f"{args.threads} thread(s)")  # fmt: skip
        print(f"{'task':<11} {'wall ours':>9} {'wall rev':>9} {'ratio':>6} {'IQR':>12}   "
              f"{'epochs ours':>11} {'epochs rev':>10} {'ratio':>6} {'IQR':>12}")  # fmt: skip
        for task in tasks:
            options = dict(RUNS[task], threads=args.threads, seed=0)
            if task == "mnist":
                options["data_dir"] = args.data_dir
            wall: dict[str, list[float]] = {"ours": [], "rev": []}
            epochs: dict[str, list[float]] = {"ours": [], "rev": []}
            for i in range(args.repeats + WARMUP):  # the first pairs warm up (imports, caches)
                order = ("ours", "rev") if i % 2 == 0 else ("rev", "ours")
                for side in order:
                    out = pathlib.Path(tmp) / f"{task}-{side}-{i}"
                    start = time.perf_counter()
                    summary = sides[side].train(task, str(out), progress=False, **options)
                    seconds = time.perf_counter() - start
                    if i >= WARMUP:
                        wall[side].append(seconds)
                        epochs[side].append(summary["train_seconds"])
            cells = []
            for kind in (wall, epochs):
                pairs = [a / b for a, b in zip(kind["ours"], kind["rev"], strict=True)]
                lo, hi = _quartiles(pairs)
                cells.append(f"{statistics.median(kind['ours']):>9.2f} "
                             f"{statistics.median(kind['rev']):>9.2f} "
                             f"{statistics.median(pairs):>6.3f} {lo:>5.3f}–{hi:<5.3f}")  # fmt: skip
            print(f"{task:<11} {cells[0]}   {cells[1]}", flush=True)


if __name__ == "__main__":
    main()
