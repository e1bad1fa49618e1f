"""The experiment subcommands of the ``neuralode`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .runner import Experiment

__all__ = ["register"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget",
        choices=("smoke", "full"),
        default="smoke",
        help="smoke: a few hundred images (under a minute); full: one epoch of all "
        "of MNIST per configuration",
    )
    p.add_argument("--data-dir", help="folder holding mnist/ (as for train)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="results folder (reruns skip finished configurations)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")


def _report(exp: Experiment) -> int:
    print((exp.out / "report.md").read_text())
    print(f"results: {exp.out}/results.csv, {exp.out}/results.json, {exp.out}/report.md")
    return 0


def _run(args: argparse.Namespace, callbacks: Sequence[Any] = ()) -> int:
    from . import run_compare, run_depth_study, run_tolerance_study

    runners: dict[str, Callable[..., Experiment]] = {
        "compare": run_compare,
        "tolerance": run_tolerance_study,
        "depth": run_depth_study,
    }
    runner = runners[getattr(args, "study", None) or args.command]
    exp = runner(
        args.out,
        args.budget,
        args.data_dir,
        args.device,
        not args.no_progress,
        command=["neuralode", *sys.argv[1:]],
    )
    return _report(exp)


def register(sub: Any) -> None:
    """Add the ``compare`` subcommand to the command line's subparsers ``sub``."""
    p = sub.add_parser("compare", help="Neural ODE against the ResNet of the same stem and head")
    _common(p)
    p.set_defaults(func=_run)
    p = sub.add_parser("study", help="tolerance or depth study")
    studies = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    s = studies.add_parser("tolerance", help="accuracy against NFE and time over (rtol, atol)")
    _common(s)
    s.set_defaults(func=_run)
    s = studies.add_parser("depth", help="ResNets of 2…32 blocks against the Neural ODE")
    _common(s)
    s.set_defaults(func=_run)
