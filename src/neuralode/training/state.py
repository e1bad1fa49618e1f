"""What a training checkpoint holds, as one typed, versioned record: :class:`RunState`.

One writer (:meth:`RunState.save`: atomic, behind a SHA-256 header) and one reader
(:meth:`RunState.load`: the digest verified, the fields checked, earlier formats migrated). The
formats:

* **2** (this version): the fields of :class:`RunState`, ``format`` 2;
* **1** (neuralode up to commit 2c5f785): the same dictionary without ``format`` and ``step``,
  the best epoch a plain dictionary — read as format 2 (the step is not known; 0);
* **0**: format 1 without the digest header (checkpoints written before checkpoints carried
  one). Nothing in the file proves it unaltered, so :class:`~.run_folder.RunFolder` checks it
  against what its run folder still records before it trusts it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import has_digest, load_checkpoint, save_checkpoint

__all__ = ["FORMAT", "BestRecord", "RunState"]

logger = logging.getLogger(__name__)

FORMAT = 2
"""The format :meth:`RunState.save` writes."""


@dataclasses.dataclass
class BestRecord:
    """The best validation epoch so far: its number, the metric and its value, its metrics,
    and the weights it ended with (on the CPU)."""

    epoch: int
    metric: str
    value: float
    metrics: dict[str, Any]
    model: dict[str, torch.Tensor]

    @classmethod
    def of(
        cls, epoch: int, metric: str, value: float, row: dict[str, Any], model: nn.Module
    ) -> BestRecord:
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        metrics = {k: v for k, v in row.items() if k.startswith(("val_", "test_"))}
        return cls(epoch, metric, value, metrics, weights)


@dataclasses.dataclass
class RunState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
        model, optimizer, scheduler: the state dicts (``scheduler`` ``None`` without one).
        rng: every random generator's state (:func:`~.checkpoint.capture_rng`).
        epoch: epochs completed; ``step``: optimizer steps taken (0 where unknown).
        rows: one row of metrics per epoch (what ``metrics.csv`` shows).
        train_seconds: training time so far.
        best: the best validation epoch, or ``None``.
        warnings: what the explosion warnings said so far.
        config: the run's configuration (``config.json``).
        format: the format this state was read from (``FORMAT`` once written).
        verified: whether the file carried a digest that matched (format 1 and 2).
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    epoch: int
    step: int
    rows: list[dict[str, Any]]
    train_seconds: float
    best: BestRecord | None
    warnings: list[str]
    config: dict[str, Any]
    format: int = FORMAT
    verified: bool = True

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's contents (format 2)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("verified")
        out["format"] = FORMAT
        out["best"] = None if self.best is None else dataclasses.asdict(self.best)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state atomically behind its digest (the one writer)."""
        save_checkpoint(path, self.to_dict())

    def copy(self) -> RunState:
        return copy.copy(self)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: Any = "cpu") -> RunState:
        """Read and check a checkpoint of any format (the one reader)."""
        path = Path(path)
        raw = load_checkpoint(path, map_location=map_location)
        return cls.from_dict(raw, path, verified=has_digest(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path, verified: bool = True) -> RunState:
        fmt = raw.get("format", 1 if verified else 0)
        if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt > FORMAT or fmt < 0:
            raise CheckpointError(
                f"{path} is a checkpoint of format {fmt!r}, which this version of neuralode "
                f"does not read (it reads formats 0 to {FORMAT}); update neuralode"
            )
        for key, kind in _FIELDS.items():
            value = raw.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                found = type(value).__name__ if key in raw else "missing"
                raise CheckpointError(
                    f"{path} is not a neuralode training checkpoint: its {key!r} entry is {found}"
                )
        if not all(isinstance(v, torch.Tensor) for v in raw["model"].values()):
            raise CheckpointError(f"{path}: its model entry is not a state_dict of tensors")
        step = raw.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"{path}: its 'step' entry is not a step count")
        return cls(
            model=raw["model"],
            optimizer=raw["optimizer"],
            scheduler=raw.get("scheduler"),
            rng=raw["rng"],
            epoch=raw["epoch"],
            step=step,
            rows=[_renamed(row) for row in raw["rows"]] if fmt < 2 else list(raw["rows"]),
            train_seconds=float(raw["train_seconds"]),
            best=_best(raw.get("best"), path, fmt),
            warnings=list(raw.get("warnings", [])),
            config=raw["config"],
            format=fmt,
            verified=verified,
        )


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "optimizer": dict,
    "rng": dict,
    "epoch": int,
    "rows": list,
    "train_seconds": (int, float),
    "config": dict,
}


def _renamed(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metric names of format 0/1 in today's: the timeseries task's ``val_nfe``/``test_nfe``
    (evaluations per batch) are every task's ``val_nfe_forward``/``test_nfe_forward`` now."""
    out = {}
    for key, value in metrics.items():
        new = key + "_forward" if key in ("val_nfe", "test_nfe") else key
        out[new if new not in metrics else key] = value
    return out


def _best(raw: Any, path: Path, fmt: int = FORMAT) -> BestRecord | None:
    if raw is None:
        return None
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("model"), dict)
        and isinstance(raw.get("epoch"), int)
    ):
        raise CheckpointError(f"{path}: its 'best' entry is not a best-checkpoint record")
    return BestRecord(
        epoch=raw["epoch"],
        metric=raw.get("metric", ""),
        value=raw.get("value", float("nan")),
        metrics=_renamed(raw.get("metrics", {})) if fmt < 2 else dict(raw.get("metrics", {})),
        model=raw["model"],
    )
