"""The ``neuralode`` command: train, resume, evaluate, diagnose and the experiments.

The options of ``neuralode train TASK`` are derived from the task's options dataclass (their
help, defaults and choices are written once, there). Errors neuralode raises on purpose
(:class:`neuralode.errors.NeuralODEError`) are one line and their class's exit code; anything
else is a bug and gets its traceback. Nothing imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["build_parser", "main"]

logger = logging.getLogger("neuralode.cli")


class _Parser(argparse.ArgumentParser):
    """argparse with numbers such as ``-1e-3`` taken as values (so that ``--rtol -1e-3``
    reaches validation and its message) and a one-line usage error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _typed(kind: type) -> Callable[[str], Any]:
    names = {int: "an integer", float: "a number", str: "a string"}

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {names[kind]}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# ---------------------------------------------------------------------------- train


def _add_task_parser(sub: Any, task_cls: type[Task]) -> None:
    from .tasks.base import option_type

    models = task_cls.models
    lines = [f"  {m:<16} {models.description(m)}" for m in models.names()]
    p = sub.add_parser(
        task_cls.name,
        help=task_cls.description,
        description=f"Train: {task_cls.description}.",
        epilog="models:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(task_cls.Options):
        meta = f.metadata
        name = meta.get("group", "options")
        if name not in groups:
            groups[name] = p.add_argument_group(name)
        kind = option_type(task_cls.Options, f.name)
        choices = meta.get("choices")
        if callable(choices):
            choices = list(choices())
        names = [str(c) for c in choices or ()]
        default = "none" if f.default is None else f.default
        kw: dict[str, Any] = {"dest": f.name, "default": None}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _typed(kind)
            if choices is not None:
                kw["choices"] = choices
                kw["metavar"] = "{" + ",".join(names) + "}" if len(names) <= 8 else "NAME"
            else:
                kw["metavar"] = {int: "N", float: "X"}.get(kind, f.name.upper())
        extra = f"; one of: {', '.join(names)}" if names and len(names) > 8 else ""
        kw["help"] = f"{meta.get('help', '')} (default: {default}{extra})"
        groups[name].add_argument("--" + f.name.replace("_", "-"), **kw)
    g = groups.get("run") or p.add_argument_group("run")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--config", metavar="FILE", help="JSON or TOML file supplying defaults")
    _add_run_flags(g)
    p.set_defaults(func=_cmd_train, task=task_cls.name)


def _add_run_flags(g: Any) -> None:
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="log the metrics for TensorBoard in RUN_DIR/tensorboard (the tensorboard extra)",
    )
    g.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="keep the C library's default malloc thresholds (see docs/guide/training.md)",
    )


def _explicit_options(args: argparse.Namespace, options_cls: type) -> dict[str, Any]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(options_cls)
        if getattr(args, f.name, None) is not None
    }


def _cmd_train(args: argparse.Namespace, callbacks: Sequence[Any]) -> int:
    from .tasks import get_task
    from .training import RunFolder, TensorBoardLogger, train

    config: Any = args.config
    saved = RunFolder(args.out).stored_config(args.task) if args.resume else None
    if saved is not None:  # resuming: the run's options are the defaults; flags may repeat them
        config = saved
    options = _explicit_options(args, get_task(args.task).Options)
    if args.tensorboard:
        callbacks = [*callbacks, TensorBoardLogger()]
    summary = train(
        args.task,
        args.out,
        config=config,
        resume=args.resume,
        progress=not args.no_progress,
        callbacks=callbacks,
        **options,
    )
    return _print_summary(args.out, summary)


def _cmd_resume(args: argparse.Namespace, callbacks: Sequence[Any]) -> int:
    from .tasks.base import RESUMABLE
    from .training import TensorBoardLogger, resume

    if args.tensorboard:
        callbacks = [*callbacks, TensorBoardLogger()]
    changes = {k: getattr(args, k) for k in RESUMABLE if getattr(args, k) is not None}
    summary = resume(args.run_dir, progress=not args.no_progress, callbacks=callbacks, **changes)
    return _print_summary(args.run_dir, summary)


def _print_summary(out: str, summary: dict[str, Any]) -> int:
    if summary.get("world_size", 1) > 1 and _rank() != 0:
        return 0
    print(f"run folder: {out}")
    keys = ["task", "model", "parameters"]
    keys += [k for k in summary if k.startswith("test_")]
    keys += ["nfe_forward", "nfe_backward", "train_seconds", "peak_memory_mb"]
    for k in keys:
        if summary.get(k) is not None:
            print(f"  {k:<17} {summary[k]}")
    best = summary.get("best")
    if best:
        metric = best["metric"]
        test = "test_" + metric.removeprefix("val_")
        print(
            f"  {'best':<17} epoch {best['epoch']} ({best['file']}): {metric} {best[metric]}, "
            f"{test} {best.get(test)}"
        )
    for w in summary.get("warnings", []):
        print(f"  warning: {w}")
    return 0


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:  # reported by the training's own check of the environment
        return 0


# ---------------------------------------------------------------------------- runs


def _cmd_evaluate(args: argparse.Namespace, callbacks: Sequence[Any]) -> int:
    from .training import evaluate_run

    res = evaluate_run(args.run_dir, args.data_dir, args.batch_size, args.best)
    print(
        f"evaluation of {args.run_dir} ({res['checkpoint']} checkpoint; rtol "
        f"{res['eval_rtol']:g}, atol {res['eval_atol']:g})"
    )
    for k, v in res.items():
        if k not in ("eval_rtol", "eval_atol", "checkpoint"):
            print(f"  {k:<12} {v:.6g}" if isinstance(v, float) else f"  {k:<12} {v}")
    return 0


def _cmd_diagnose(args: argparse.Namespace, callbacks: Sequence[Any]) -> int:
    from .training import diagnose_run

    report = diagnose_run(args.run_dir, args.data_dir, args.batch_size, args.best)
    print(report)
    return 0 if report.ok else 1


def _add_run_dir_parser(
    sub: Any,
    name: str,
    help: str,
    func: Callable[[argparse.Namespace, Sequence[Any]], int],
    batch_default: int | None,
) -> None:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (as given to --out)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding the task's data, if it moved since training (default: the run's)",
    )
    what = "the run's own" if batch_default is None else str(batch_default)
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=batch_default,
        metavar="N",
        help=f"samples per batch (default: {what})",
    )
    p.add_argument(
        "--best",
        action="store_true",
        help="use the best validation epoch's weights (best.pt) instead of the last",
    )
    p.set_defaults(func=func)


# ---------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The ``neuralode`` command line: its subcommands (``train``, ``evaluate``, ``diagnose``, the
    experiments) and every registered task's options."""
    from . import __version__
    from .tasks import get_task, list_tasks

    parser = _Parser(
        prog="neuralode",
        description="Train, evaluate, diagnose and compare Neural ODEs.",
    )
    parser.add_argument("--version", action="version", version=f"neuralode {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "train",
        help="train a task's model and write a run folder",
        description="Train a model on a task; `neuralode train TASK --help` lists its options.",
    )
    tasks = p.add_subparsers(dest="task_name", required=True, metavar="TASK")
    for name in list_tasks():
        _add_task_parser(tasks, get_task(name))
    p = sub.add_parser(
        "resume",
        help="continue an interrupted run (or extend one) with its own options",
        description="Continue the run in RUN_DIR from its last checkpoint, bit for bit.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (as given to --out)")
    p.add_argument("--epochs", type=_positive_int, metavar="N", help="train up to N epochs")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: the run's)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for PyTorch")
    p.add_argument("--data-dir", metavar="DIR", help="the task's data folder, if it moved")
    _add_run_flags(p)
    p.set_defaults(func=_cmd_resume)
    _add_run_dir_parser(
        sub, "evaluate", "evaluate a run's model on its test data at its evaluation tolerances",
        _cmd_evaluate, None,
    )  # fmt: skip
    _add_run_dir_parser(
        sub, "diagnose", "print the health report of a run's model on a batch of its data",
        _cmd_diagnose, 64,
    )  # fmt: skip
    from .experiments import cli as experiments_cli

    experiments_cli.register(sub)
    return parser


def main(argv: list[str] | None = None, callbacks: Sequence[Any] = ()) -> int:
    """Run the command ``argv``; ``callbacks`` (:class:`neuralode.training.Callback`) reach
    the training loop of ``train`` and ``resume``."""
    from .errors import NeuralODEError, TrainingDiverged

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
    if args.command in ("train", "resume", "compare", "study") and not getattr(
        args, "no_allocator_tuning", False
    ):
        from .training.allocator import tune_allocator

        tune_allocator()
    try:
        return int(args.func(args, callbacks) or 0)
    except TrainingDiverged as err:
        print(f"neuralode: training stopped: {err}", file=sys.stderr)
        return err.exit_code
    except NeuralODEError as err:
        print(f"neuralode {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # the reader went away (`neuralode evaluate RUN | head -1`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141  # 128 + SIGPIPE, as for any command whose reader stopped reading
    except OSError as err:  # the file system refused: say which file and why, in one line
        where = f" {err.filename}" if err.filename else ""
        print(f"neuralode {args.command}: error:{where} {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuralode: interrupted; resume with: neuralode resume RUN_DIR", file=sys.stderr)
        return 130
