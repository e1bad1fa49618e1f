"""The experiment subcommands of the ``neuralode`` command."""

from __future__ import annotations

import argparse
import sys

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


def _report(exp) -> int:
    print((exp.out / "report.md").read_text())
    print(f"results: {exp.out}/results.csv, {exp.out}/results.json, {exp.out}/report.md")
    return 0


def _compare(args) -> int:
    from . import run_compare

    return _report(
        run_compare(
            args.out,
            args.budget,
            args.data_dir,
            args.device,
            not args.no_progress,
            ["neuralode", *sys.argv[1:]],
        )
    )


def _tolerance(args) -> int:
    from . import run_tolerance_study

    return _report(
        run_tolerance_study(
            args.out,
            args.budget,
            args.data_dir,
            args.device,
            not args.no_progress,
            command=["neuralode", *sys.argv[1:]],
        )
    )


def _depth(args) -> int:
    from . import run_depth_study

    return _report(
        run_depth_study(
            args.out,
            args.budget,
            args.data_dir,
            args.device,
            not args.no_progress,
            command=["neuralode", *sys.argv[1:]],
        )
    )


def register(sub) -> None:
    p = sub.add_parser("compare", help="Neural ODE against the ResNet of the same stem and head")
    _common(p)
    p.set_defaults(func=_compare)
    p = sub.add_parser("study", help="tolerance or depth study")
    studies = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    s = studies.add_parser("tolerance", help="accuracy against NFE and time over (rtol, atol)")
    _common(s)
    s.set_defaults(func=_tolerance)
    s = studies.add_parser("depth", help="ResNets of 2…32 blocks against the Neural ODE")
    _common(s)
    s.set_defaults(func=_depth)
