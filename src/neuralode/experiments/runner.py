"""Resumable experiments: every finished configuration is saved at once; a rerun skips it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tasks.base import TrainOptions

from ..errors import ExperimentMismatch, InvalidArgumentError
from ..files import atomic_write, write_csv, write_json
from ..tasks import get_task, make_options
from ..training.loop import train

__all__ = ["BUDGETS", "Budget", "Experiment", "run_options", "train_configuration"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much training each configuration gets."""

    name: str
    train_subset: int | None
    test_subset: int | None
    epochs: int
    batch_size: int
    description: str


BUDGETS = {
    "smoke": Budget("smoke", 300, 200, 1, 50, "300 training and 200 test images, one epoch"),
    "full": Budget(
        "full", None, None, 1, 128, "all 60,000 training and 10,000 test images, one epoch"
    ),
}


class Experiment:
    """A folder of results: ``results.json`` (written after every configuration),
    ``results.csv``, plots and ``report.md``."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        title: str,
        command: Sequence[str] | None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.title = title
        self.settings = dict(settings or {})
        self.command = " ".join(shlex.quote(a) for a in (command or ["neuralode", *sys.argv[1:]]))
        self.path = self.out / "results.json"
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                self.rows = list(saved.get("rows", []))
                before = dict(saved.get("settings", {}))
            except (json.JSONDecodeError, OSError, AttributeError, TypeError) as err:
                raise InvalidArgumentError(
                    f"{self.path} is unreadable ({err}); delete it to start the experiment over"
                ) from None
            changed = {
                k: (before.get(k), v) for k, v in self.settings.items() if before.get(k) != v
            }
            if changed:
                details = ", ".join(f"{k} {a!r} then, {b!r} now" for k, (a, b) in changed.items())
                raise ExperimentMismatch(
                    f"{self.out} holds results of this experiment made with other settings "
                    f"({details}); rerun with the same settings to finish it, or choose another "
                    "--out"
                )
        self.out.mkdir(parents=True, exist_ok=True)

    def done(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("key") == key), None)

    def run(
        self, key: str, fn: Callable[[], dict[str, Any]], config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Result of configuration ``key``: from an earlier run, or computed now and saved.
        ``config`` describes the work; a saved result is reused only if it was made with the
        same ``config``."""
        config = json.loads(json.dumps(config or {}, default=str))  # as results.json stores it
        row = self.done(key)
        if row is not None:
            if row.get("config", {}) != config:
                old = row.get("config", {})
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                details = ", ".join(
                    f"{k}: {old.get(k)!r} then, {config.get(k)!r} now" for k in diff
                )
                raise ExperimentMismatch(
                    f"{self.out}: the saved result of {key!r} was made with another "
                    f"configuration ({details}); rerun with the settings it was made with, or "
                    "choose another --out"
                )
            logger.info("%s: %s already done, skipped", self.title, key)
            return row
        t0 = time.perf_counter()
        logger.info("%s: running %s", self.title, key)
        row = {"key": key, **fn(), "config": config}
        row.setdefault("seconds", round(time.perf_counter() - t0, 2))
        self.rows.append(row)
        self.save()
        return row

    def save(self) -> None:
        write_json(
            self.path,
            {
                "title": self.title,
                "command": self.command,
                "settings": self.settings,
                "rows": self.rows,
            },
        )
        write_csv(
            self.out / "results.csv",
            [{k: v for k, v in r.items() if k != "config"} for r in self.rows],
        )

    def report(
        self,
        columns: Sequence[tuple[str, str]],
        plots: Sequence[str],
        notes: str = "",
        sort_key: Callable[[dict[str, Any]], Any] | None = None,
    ) -> str:
        """Write ``report.md``: the command, a table of ``columns`` (key, heading), the plots."""
        lines = [f"# {self.title}", "", "Made with:", "", "```bash", self.command, "```", ""]
        if notes:
            lines += [notes, ""]
        lines.append("| " + " | ".join(h for _, h in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        rows = self.rows if sort_key is None else sorted(self.rows, key=sort_key)
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in columns) + " |")
        lines.append("")
        for p in plots:
            lines += [f"![{p}]({p})", ""]
        text = "\n".join(lines)
        atomic_write(self.out / "report.md", lambda fh: fh.write(text.encode()))
        return text


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(v)


def run_options(budget: Budget, data_dir: str | None, **overrides: Any) -> TrainOptions:
    """The MNIST task's options of one configuration under ``budget``."""
    return make_options(
        "mnist",
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        train_subset=budget.train_subset,
        test_subset=budget.test_subset,
        data_dir=data_dir,
        **overrides,
    ).normalize()


def train_configuration(
    exp: Experiment,
    key: str,
    budget: Budget,
    data_dir: str | None,
    progress: bool,
    **overrides: Any,
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    """The options of one configuration, and a function training it into ``OUT/runs/KEY``
    (resuming it if it was interrupted) and returning its summary."""
    options = run_options(budget, data_dir, **overrides)
    run_dir = exp.out / "runs" / key

    def run() -> dict[str, Any]:
        return train(get_task("mnist")(options), run_dir, resume="auto", progress=progress)

    config = {k: v for k, v in options.to_dict().items() if k not in ("data_dir", "threads")}
    return config, run
