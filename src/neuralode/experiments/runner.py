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
from typing import Any

from ..training import TrainConfig, train
from ..training.files import atomic_write, write_csv, write_json

__all__ = ["BUDGETS", "Budget", "Experiment", "train_configuration"]

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

    def __init__(self, out_dir: str | os.PathLike, title: str, command: Sequence[str] | None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.command = " ".join(shlex.quote(a) for a in (command or ["neuralode", *sys.argv[1:]]))
        self.path = self.out / "results.json"
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                self.rows = list(saved.get("rows", []))
            except (json.JSONDecodeError, OSError) as err:
                raise ValueError(
                    f"{self.path} is unreadable ({err}); delete it to start the experiment over"
                ) from None

    def done(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("key") == key), None)

    def run(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Result of configuration ``key``: from an earlier run, or computed now and saved."""
        row = self.done(key)
        if row is not None:
            logger.info("%s: %s already done, skipped", self.title, key)
            return row
        t0 = time.perf_counter()
        logger.info("%s: running %s", self.title, key)
        row = {"key": key, **fn()}
        row.setdefault("seconds", round(time.perf_counter() - t0, 2))
        self.rows.append(row)
        self.save()
        return row

    def save(self) -> None:
        write_json(self.path, {"title": self.title, "command": self.command, "rows": self.rows})
        write_csv(self.out / "results.csv", self.rows)

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


def train_configuration(
    exp: Experiment, key: str, budget: Budget, data_dir: str | None, progress: bool, **overrides
) -> dict[str, Any]:
    """Train one configuration into ``OUT/runs/KEY`` (resuming it if it was interrupted)."""
    run_dir = exp.out / "runs" / key
    cfg = TrainConfig(
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        train_subset=budget.train_subset,
        test_subset=budget.test_subset,
        data_dir=data_dir,
        **overrides,
    )
    resume = (run_dir / "checkpoint.pt").is_file()
    summary = train(cfg, run_dir, resume=resume, progress=progress)
    return summary
