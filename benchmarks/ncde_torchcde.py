"""Our neural CDE against torchcde's, trained by the same task on the same data, side by side.

Both models have the same layout (the timeseries task's ``ncde`` with its default
``observed="none"``): path channels are the time since the series' start and the values (last
observation carried forward), over the observation index; ``z0`` a linear map of the path's
start; the field ``Linear(hidden, 64) → Softplus → Linear(64, hidden × channels) → tanh``; a
linear readout at each series' end. Ours solves on neuralode's engine with its natural cubic
spline (each series' own points, constant after its end, the ends as ``jump_t``); the peer is
Kidger et al.'s library — ``torchcde.natural_cubic_coeffs`` over the padded series,
``torchcde.cdeint`` (dopri5 through torchdiffeq, direct backpropagation), the state read at each
series' last point — at the same tolerances (the task's training tolerances while training, its
evaluation tolerances in evaluation).

Every run is ``neuralode train timeseries --dataset japanese_vowels`` (or ``--dataset
basic_motions``) with points dropped at random, 40 epochs, batch 32, Adam at 3e-3 with a cosine
schedule (``timeseries_models.py``'s recipe), one thread per run; a run's test accuracy is that
of the epoch chosen on the validation split. ``--split uea`` (the default) trains on the
archive's training series (1/7 held out to validate) and tests on its test series; ``--split
pooled`` pools both and splits them 70/15/15 by the seed, as Kidger et al. (2020) do.
``--models`` adds the task's other classifiers (``grud``, ``odernn``, ``gru_dt``) to the table.

    pip install -e ".[timeseries]"   # torchcde, aeon (JapaneseVowels)
    python benchmarks/ncde_torchcde.py [--dataset basic_motions] [--split pooled]
        [--drops 0.3 0.7] [--seeds 0 1 2] [--models ncde torchcde_ncde grud] [--jobs 2]

Goal (issue 27): our neural CDE within 1 accuracy point of torchcde's, at every fraction dropped
(the mean over the seeds), on both splits.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

import neuralode
from neuralode.series import IrregularSeries
from neuralode.tasks.timeseries import MODELS, _classes

RECIPE = {"epochs": 40, "batch_size": 32, "lr": 3e-3}
NCDES = ("ncde", "torchcde_ncde")


class _Field(nn.Module):
    """``g(z)`` as a ``(hidden, channels)`` matrix, torchcde's ``func(t, z)``."""

    def __init__(self, hidden: int, channels: int) -> None:
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.g = nn.Sequential(
            nn.Linear(hidden, 64), nn.Softplus(), nn.Linear(64, hidden * channels), nn.Tanh()
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.g(z).view(z.shape[0], self.hidden, self.channels)


class TorchcdeNCDE(nn.Module):
    """The task's neural CDE (``observed="none"``) with torchcde's spline and ``cdeint``."""

    def __init__(self, channels: int, classes: int, hidden: int, solver: dict[str, Any]) -> None:
        super().__init__()
        path_channels = 1 + channels
        self.initial = nn.Linear(path_channels, hidden)
        self.field = _Field(hidden, path_channels)
        self.readout = nn.Linear(hidden, classes)
        self.train_tol = (solver["rtol"], solver["atol"])
        self.eval_tol = (solver["eval_rtol"], solver["eval_atol"])

    def forward(self, series: IrregularSeries) -> torch.Tensor:
        import torchcde

        n = series.times.shape[1]
        index = torch.arange(n, dtype=series.values.dtype, device=series.values.device)
        elapsed = (series.times - series.times[:, :1]).unsqueeze(-1)
        x = torch.cat((elapsed, series.filled()), -1)
        X = torchcde.CubicSpline(torchcde.natural_cubic_coeffs(x, t=index), t=index)
        rtol, atol = self.train_tol if self.training else self.eval_tol
        z0 = self.initial(X.evaluate(X.interval[0]))
        zs = torchcde.cdeint(X=X, func=self.field, z0=z0, t=index, adjoint=False,
                             method="dopri5", rtol=rtol, atol=atol)  # fmt: skip
        last = (series.lengths.clamp(min=2) - 1).to(zs.device)
        return self.readout(zs[torch.arange(len(last)), last])


@MODELS.register("torchcde_ncde", "benchmark only: the neural CDE on torchcde (Kidger's library)")
def _torchcde_ncde(dataset: str, hidden: int, solver: dict[str, Any]) -> TorchcdeNCDE:
    channels, classes = _classes(dataset, "ncde")
    return TorchcdeNCDE(channels, classes, hidden, solver)


def _train(out: Path, options: dict) -> dict:
    torch.set_num_threads(1)
    summary = neuralode.train("timeseries", out=out, progress=False, threads=1, **options)
    best = summary["best"]
    return {"accuracy": best["test_accuracy"], "last": summary["test_accuracy"],
            "seconds": summary["train_seconds"], "epoch": best["epoch"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dataset", default="japanese_vowels", choices=("japanese_vowels", "basic_motions")
    )
    p.add_argument("--split", default="uea", choices=("uea", "pooled"))
    p.add_argument(
        "--models",
        nargs="+",
        default=["ncde", "torchcde_ncde"],
        help="ncde and torchcde_ncde, and any of grud, odernn, gru_dt beside them",
    )
    p.add_argument("--drops", type=float, nargs="+", default=[0.3, 0.7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    p.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    args = p.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="ncde_torchcde_"))
    models = ("ncde", "torchcde_ncde", *(m for m in args.models if m not in NCDES))
    recipe = {**RECIPE, "epochs": args.epochs}
    runs = {}
    for drop in args.drops:
        for seed in args.seeds:
            for model in models:
                options = dict(dataset=args.dataset, split=args.split, model=model, drop=drop,
                               seed=seed)  # fmt: skip
                runs[drop, model, seed] = (root / f"{drop}_{model}_seed{seed}", options | recipe)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {key: pool.submit(_train, out, opts) for key, (out, opts) in runs.items()}
        got = {key: f.result() for key, f in futures.items()}
    split = "UEA split" if args.split == "uea" else "pooled 70/15/15 split"
    print(f"{args.dataset} ({split}), {args.epochs} epochs, seeds {args.seeds}")
    print("| dropped | model | accuracy (best epoch) | accuracy (last) | train s |")
    print("|---|---|---:|---:|---:|")
    means = {}
    for drop in args.drops:
        for model in models:
            rs = [got[drop, model, s] for s in args.seeds]
            acc = [r["accuracy"] for r in rs]
            last = [r["last"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            means[drop, model] = statistics.fmean(acc)
            print(f"| {drop:.0%} | {model} | {means[drop, model]:.3f} ± {sd:.3f} | "
                  f"{statistics.fmean(last):.3f} | "
                  f"{statistics.fmean(r['seconds'] for r in rs):.0f} |")  # fmt: skip
    for drop in args.drops:
        gap = 100 * (means[drop, "torchcde_ncde"] - means[drop, "ncde"])
        verdict = "met" if gap <= 1.0 else "NOT met"
        print(f"{drop:.0%} dropped: torchcde − ours = {gap:+.1f} points (goal ≤ 1: {verdict})")
        for model in models[2:]:
            lead = 100 * (means[drop, model] - means[drop, "ncde"])
            print(f"{drop:.0%} dropped: {model} − our neural CDE = {lead:+.1f} points")


if __name__ == "__main__":
    main()
