"""Time-series models against their baselines on the same data and budget, through the
``timeseries`` task (the same code ``neuralode train timeseries`` runs):

- forecasting (spirals and periodic series, 30% of the observed half dropped): the latent ODE
  against the GRU-Δt, by extrapolation MSE over the unseen half (goal: the latent ODE's lower);
- classification (UEA JapaneseVowels from aeon's wheel, 30/50/70% of every series' points
  dropped): the neural CDE and the ODE-RNN against GRU-D, by test accuracy (goal: at or above
  GRU-D's), with the GRU-Δt for reference.

Every number is printed: losses, metrics, NFE and training time, for every seed, then each
model's mean and standard deviation over the seeds; the goals compare the means. Each model
gets the same epochs, batch size, learning rate and seeds for a dataset; its test metrics are
those of the epoch chosen on the validation split (the run's ``best.pt``), the last epoch's
beside them. Runs use one CPU thread each; ``--jobs`` runs that many at once (their training
times then share the machine).

    python benchmarks/timeseries_models.py [--quick] [--seeds 0 1 2] [--jobs 2] [--out DIR]
                                           [--resume]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import neuralode
from neuralode.training.run_folder import CHECKPOINT

FORECAST = {"epochs": 20, "series": 600, "batch_size": 50, "lr": 1e-2, "drop": 0.3}
CLASSIFY = {"epochs": 40, "batch_size": 32, "lr": 3e-3}
FORECAST_DATA, FORECAST_MODELS = ("spirals", "periodic"), ("latent_ode", "gru_dt")
DROPS, CLASSIFIERS = (0.3, 0.5, 0.7), ("ncde", "odernn", "grud", "gru_dt")


def _train(out: Path, options: dict, resume: bool) -> dict:
    """The test metrics of the epoch chosen on the validation split (the run's ``best.pt``),
    with that epoch's training loss (each model's own objective: the latent ODE's negative
    ELBO per value, the GRU-Δt's MSE, cross entropy) and the last epoch's test metrics
    (``last_*``). ``resume``: continue the run already in ``out``, if any (its options must be
    these; a finished run is only evaluated again)."""
    torch.set_num_threads(1)
    resume = resume and (out / CHECKPOINT).is_file()
    summary = neuralode.train(
        "timeseries", out=out, resume=resume, progress=False, threads=1, **options
    )
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    best = summary["best"]
    result = {k[len("test_") :]: v for k, v in best.items() if k.startswith("test_")}
    result.update({"last_" + k[len("test_") :]: v for k, v in summary.items()
                   if k.startswith("test_")})  # fmt: skip
    result["epoch"] = best["epoch"]
    result["train_loss"] = float(rows[best["epoch"] - 1]["train_loss"])
    result["train_seconds"] = summary["train_seconds"]
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# column: printed format (its width also the header's)
FORECAST_COLUMNS = {"epoch": "5.0f", "train_loss": "10.4f", "interp_mse": "10.4f",
                    "extrap_mse": "10.4f", "last_extrap_mse": "15.4f", "nfe": "9.0f",
                    "train_seconds": "13.1f"}  # fmt: skip
CLASSIFY_COLUMNS = {"epoch": "5.0f", "train_loss": "10.4f", "loss": "9.4f", "accuracy": "8.3f",
                    "last_accuracy": "13.3f", "nfe": "9.0f", "train_seconds": "13.1f"}  # fmt: skip
SUMMARISED = ("train_loss", "interp_mse", "extrap_mse", "last_extrap_mse", "loss", "accuracy",
              "last_accuracy")  # fmt: skip


def _table(got, groups, models, seeds, label, columns) -> dict:
    """Print one row per run and a mean ± sd row per model; return the means by group, model
    and column."""
    print(
        f"{label:9s} {'model':10s} {'seed':>4s} "
        + " ".join(f"{c:>{f.split('.')[0]}s}" for c, f in columns.items())
    )
    means: dict = {}
    for group in groups:
        name = f"{group:.0%}" if isinstance(group, float) else group
        for model in models:
            runs = [got[(group, model, seed)] for seed in seeds]
            for seed, r in zip(seeds, runs):
                print(f"{name:9s} {model:10s} {seed:4d} "
                      + " ".join(f"{r[c]:{f}}" for c, f in columns.items()))  # fmt: skip
            stats = {c: _mean_std([r[c] for r in runs]) for c in columns if c in SUMMARISED}
            means.setdefault(group, {})[model] = {c: m for c, (m, _) in stats.items()}
            cells = ", ".join(f"{c} {m:.4f} ± {sd:.4f}" for c, (m, sd) in stats.items())
            print(f"{name:9s} {model:10s} mean ± sd: {cells}")
    return means


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few epochs: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the runs already in --out (an interrupted benchmark; each run's options "
        "are checked to be the same)",
    )  # fmt: skip
    args = p.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="timeseries_bench_"))
    forecast, classify = dict(FORECAST), dict(CLASSIFY)
    if args.quick:
        forecast.update(epochs=2, series=100)
        classify.update(epochs=2)

    runs = {}  # (group, model, seed) -> (folder, options)
    for seed in args.seeds:
        for dataset in FORECAST_DATA:
            for model in FORECAST_MODELS:
                runs[(dataset, model, seed)] = (
                    root / f"{dataset}_{model}_seed{seed}",
                    dict(dataset=dataset, model=model, seed=seed, **forecast),
                )
        for drop in DROPS:
            for model in CLASSIFIERS:
                runs[(drop, model, seed)] = (
                    root / f"vowels_{drop}_{model}_seed{seed}",
                    dict(dataset="japanese_vowels", model=model, drop=drop, seed=seed, **classify),
                )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {
            key: pool.submit(_train, out, opts, args.resume) for key, (out, opts) in runs.items()
        }
        got = {key: f.result() for key, f in futures.items()}

    verdicts = []
    print(f"forecasting: {forecast}, seeds {args.seeds}")
    means = _table(got, FORECAST_DATA, FORECAST_MODELS, args.seeds, "data", FORECAST_COLUMNS)
    for dataset in FORECAST_DATA:
        ode, gru = (
            means[dataset]["latent_ode"]["extrap_mse"],
            means[dataset]["gru_dt"]["extrap_mse"],
        )
        verdicts.append(
            f"{dataset}: latent ODE mean extrapolation MSE {ode:.4f} vs GRU-Δt {gru:.4f} "
            f"(goal: below): {'met' if ode < gru else 'NOT met'}"
        )
    print(f"\nclassification, japanese_vowels: {classify}, seeds {args.seeds}")
    means = _table(got, DROPS, CLASSIFIERS, args.seeds, "dropped", CLASSIFY_COLUMNS)
    for drop in DROPS:
        grud = means[drop]["grud"]["accuracy"]
        for model in ("ncde", "odernn"):
            acc = means[drop][model]["accuracy"]
            verdicts.append(
                f"japanese_vowels, {drop:.0%} dropped: {model} mean accuracy {acc:.3f} vs GRU-D "
                f"{grud:.3f} (goal: at or above): {'met' if acc >= grud else 'NOT met'}"
            )
    print("\ngoals")
    for line in verdicts:
        print("  " + line)
    print(
        "published anchors: not reachable here. Kidger et al. (2020) report CharacterTrajectories "
        "and Speech Commands, Rubanova et al. (2019) MuJoCo and PhysioNet; none ships in a "
        "package wheel and nothing here may download."
    )
    print(f"run folders: {root}")


if __name__ == "__main__":
    main()
