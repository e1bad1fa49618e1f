"""The ``neuralode`` command: train, evaluate and diagnose (nothing imports this module)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

logger = logging.getLogger("neuralode.cli")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .models import list_models
    from .solvers import available_backends, get_backend
    from .training.config import DATASETS, GRADIENTS, OPTIMIZERS, SCHEDULES

    methods = sorted(get_backend("native").methods)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=list_models(), help="model to train (default: ode)")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        help="mnist (classification), spiral (the tutorial's spiral arm) or cubic "
        "(dy/dt = y³A): dynamics regression; default mnist",
    )
    g.add_argument("--num-blocks", type=int, help="residual blocks of a resnet (default 6)")
    g.add_argument("--hidden", type=int, help="hidden size (default 64)")
    g.add_argument("--augment-dim", type=int, help="ANODE: zero dimensions added to the state")
    g.add_argument(
        "--data-dir",
        help="folder holding mnist/ (default: $NEURALODE_DATA_DIR, "
        "then the user cache; downloaded if absent)",
    )
    g.add_argument("--train-subset", type=int, help="use only the first N training images")
    g.add_argument("--test-subset", type=int, help="use only the first N test images")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="number of epochs (default 1)")
    g.add_argument("--batch-size", type=_positive_int, help="global batch size (default 128)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default none)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--max-train-batches", type=int, help="stop each epoch after N batches")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g = p.add_argument_group("ODE solver")
    g.add_argument(
        "--method",
        choices=methods,
        metavar="METHOD",
        help=f"solver (default dopri5); one of: {', '.join(methods)}",
    )
    g.add_argument("--rtol", type=float, help="training rtol (default 1e-3)")
    g.add_argument("--atol", type=float, help="training atol (default 1e-4)")
    g.add_argument("--eval-rtol", type=float, help="evaluation rtol (default 1e-5)")
    g.add_argument("--eval-atol", type=float, help="evaluation atol (default 1e-6)")
    g.add_argument(
        "--gradient", choices=GRADIENTS, help="direct backprop (default), adjoint, or checkpoint"
    )
    g.add_argument("--backend", choices=available_backends(), help="solver engine (default native)")
    g.add_argument("--kinetic", type=float, help="kinetic-energy regularization weight")
    g.add_argument("--jacobian", type=float, help="Jacobian Frobenius regularization weight")
    g = p.add_argument_group("spiral dataset")
    g.add_argument("--spiral-window", type=int, help="time points per training window (10)")
    g.add_argument(
        "--spiral-noise", type=float, help="observation noise (default 0.1 spiral, 0.01 cubic)"
    )
    g.add_argument("--spiral-iters", type=int, help="iterations per epoch (default 100)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run")
    g.add_argument("--config", metavar="FILE", help="JSON or TOML file supplying defaults")
    g.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    g.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="keep the C library's default malloc thresholds (see README)",
    )


def _config_from_args(args: argparse.Namespace):
    from .training import TrainConfig

    values: dict[str, Any] = {}
    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        # resuming: the run's own configuration is the default; flags may only repeat it
        values.update(TrainConfig.from_file(saved))
    elif args.config:
        values.update(TrainConfig.from_file(args.config))
    for field in dataclasses.fields(TrainConfig):
        v = getattr(args, field.name, None)
        if v is not None:
            values[field.name] = v
    return TrainConfig.from_dict(values).validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    cfg = _config_from_args(args)
    summary = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if summary.get("world_size", 1) > 1 and _rank() != 0:
        return 0
    keys = [
        "parameters",
        "test_accuracy",
        "test_mse",
        "nfe_forward",
        "nfe_backward",
        "train_seconds",
        "peak_memory_mb",
    ]
    print(f"run folder: {args.out}")
    for k in keys:
        if summary.get(k) is not None:
            print(f"  {k:<15} {summary[k]}")
    return 0


def _rank() -> int:
    import os

    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:  # reported by the training's own check of the environment
        return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate_run

    res = evaluate_run(args.run_dir, args.data_dir, args.batch_size)
    print(f"evaluation of {args.run_dir} (rtol {res['eval_rtol']:g}, atol {res['eval_atol']:g})")
    for k, v in res.items():
        if k not in ("eval_rtol", "eval_atol"):
            print(f"  {k:<12} {v:.6g}" if isinstance(v, float) else f"  {k:<12} {v}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    import torch

    from .data import load_mnist
    from .diagnostics import diagnose
    from .training.config import trajectory_data
    from .training.loop import load_run

    model, cfg = load_run(Path(args.run_dir), args.data_dir)
    device = cfg.resolved_device()
    model.to(device)
    if cfg.dataset == "mnist":
        _, test = load_mnist(cfg.data_dir)
        batch = (test.x[: args.batch_size].to(device), test.y[: args.batch_size].to(device))
        report = diagnose(model, batch)
    else:
        data = trajectory_data(cfg)
        t = data.t[: cfg.spiral_window].to(device)
        y0 = data.y[: args.batch_size : max(1, data.split // args.batch_size)].to(device)

        class _Window(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(x, t)

        report = diagnose(_Window(model), y0)
    print(report)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuralode",
        description="Train, evaluate, diagnose and compare Neural ODEs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train a model and write a run folder")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("evaluate", help="evaluate a run with its evaluation tolerances")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=_positive_int)
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("diagnose", help="print the health report of a run's model")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.set_defaults(func=_cmd_diagnose)
    from .experiments import cli as experiments_cli

    experiments_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    rank = _rank()
    logging.basicConfig(
        level=level if rank == 0 else max(level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if rank != 0:  # other ranks still report their final weights (for checks)
        logging.getLogger("neuralode.training.digest").setLevel(logging.INFO)
    from .data import DataError
    from .training import CheckpointError, TrainingDiverged
    from .training.files import RunFolderBusy

    if args.command in ("train", "compare", "study") and not getattr(
        args, "no_allocator_tuning", False
    ):
        from .training.allocator import tune_allocator

        tune_allocator()
    try:
        return int(args.func(args) or 0)
    except TrainingDiverged as err:
        print(f"neuralode: training stopped: {err}", file=sys.stderr)
        return 3
    except (ValueError, CheckpointError, DataError, RunFolderBusy) as err:
        print(f"neuralode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused: say which file and why, in one line
        where = f" {err.filename}" if err.filename else ""
        print(f"neuralode {args.command}: error:{where} {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuralode: interrupted; resume with --resume", file=sys.stderr)
        return 130
