"""Time-series models against their baselines on the same data and budget, through the
``timeseries`` task (the same code ``neuralode train timeseries`` runs):

- forecasting (spirals and periodic series, 30% of the observed half dropped): the latent ODE
  against the GRU-Δt, by extrapolation MSE over the unseen half (goal: the latent ODE's lower);
- classification (UEA JapaneseVowels from aeon's wheel, 30/50/70% of every series' points
  dropped): the neural CDE and the ODE-RNN against GRU-D, by test accuracy (goal: at or above
  GRU-D's), with the GRU-Δt for reference.

Every number is printed: losses, metrics, NFE and training time. Each model gets the same
epochs, batch size, learning rate and seed for a dataset; its test metrics are those of the
epoch chosen on the validation split (the run's ``best.pt``), the last epoch's beside them.

    python benchmarks/timeseries_models.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch

import neuralode

FORECAST = {"epochs": 20, "series": 600, "batch_size": 50, "lr": 1e-2, "drop": 0.3}
CLASSIFY = {"epochs": 40, "batch_size": 32, "lr": 3e-3}


def _train(out: Path, **options) -> dict:
    """The test metrics of the epoch chosen on the validation split (the run's ``best.pt``),
    with that epoch's training loss (each model's own objective: the latent ODE's negative
    ELBO per value, the GRU-Δt's MSE, cross entropy) and the last epoch's test metrics
    (``last_*``)."""
    summary = neuralode.train("timeseries", out=out, progress=False, threads=1, **options)
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    best = summary["best"]
    result = {k[len("test_") :]: v for k, v in best.items() if k.startswith("test_")}
    result.update({"last_" + k[len("test_") :]: v for k, v in summary.items()
                   if k.startswith("test_")})  # fmt: skip
    result["epoch"] = best["epoch"]
    result["train_loss"] = float(rows[best["epoch"] - 1]["train_loss"])
    result["train_seconds"] = summary["train_seconds"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few epochs: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    root = args.out or Path(tempfile.mkdtemp(prefix="timeseries_bench_"))
    forecast, classify = dict(FORECAST), dict(CLASSIFY)
    if args.quick:
        forecast.update(epochs=2, series=100)
        classify.update(epochs=2)
    verdicts = []

    print(f"forecasting: {forecast}, seed {args.seed}")
    print(f"{'data':9s} {'model':10s} {'epoch':>5s} {'train loss':>10s} {'interp MSE':>10s} "
          f"{'extrap MSE':>10s} {'(last)':>8s} {'test NFE':>9s} {'train s':>8s}")  # fmt: skip
    for dataset in ("spirals", "periodic"):
        got = {}
        for model in ("latent_ode", "gru_dt"):
            s = _train(root / f"{dataset}_{model}", dataset=dataset, model=model,
                       seed=args.seed, **forecast)  # fmt: skip
            got[model] = s
            print(f"{dataset:9s} {model:10s} {s['epoch']:5d} {s['train_loss']:10.4f} "
                  f"{s['interp_mse']:10.4f} {s['extrap_mse']:10.4f} {s['last_extrap_mse']:8.4f} "
                  f"{s['nfe']:9.0f} {s['train_seconds']:8.1f}")  # fmt: skip
        ok = got["latent_ode"]["extrap_mse"] < got["gru_dt"]["extrap_mse"]
        verdicts.append(
            f"{dataset}: latent ODE extrapolation MSE {got['latent_ode']['extrap_mse']:.4f} "
            f"vs GRU-Δt {got['gru_dt']['extrap_mse']:.4f} (goal: below): "
            f"{'met' if ok else 'NOT met'}"
        )

    print(f"\nclassification, japanese_vowels: {classify}, seed {args.seed}")
    print(f"{'dropped':7s} {'model':7s} {'epoch':>5s} {'train loss':>10s} {'test loss':>9s} "
          f"{'accuracy':>8s} {'(last)':>6s} {'test NFE':>9s} {'train s':>8s}")  # fmt: skip
    for drop in (0.3, 0.5, 0.7):
        acc = {}
        for model in ("ncde", "odernn", "grud", "gru_dt"):
            s = _train(root / f"vowels_{drop}_{model}", dataset="japanese_vowels", model=model,
                       drop=drop, seed=args.seed, **classify)  # fmt: skip
            acc[model] = s["accuracy"]
            print(f"{drop:7.0%} {model:7s} {s['epoch']:5d} {s['train_loss']:10.4f} "
                  f"{s['loss']:9.4f} {s['accuracy']:8.3f} {s['last_accuracy']:6.3f} "
                  f"{s['nfe']:9.0f} {s['train_seconds']:8.1f}")  # fmt: skip
        for model in ("ncde", "odernn"):
            ok = acc[model] >= acc["grud"]
            verdicts.append(
                f"japanese_vowels, {drop:.0%} dropped: {model} accuracy {acc[model]:.3f} vs "
                f"GRU-D {acc['grud']:.3f} (goal: at or above): {'met' if ok else 'NOT met'}"
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
