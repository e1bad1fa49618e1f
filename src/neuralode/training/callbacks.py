"""The training loop's duties, one callback each, and the hooks a callback of one's own uses.

The loop (:class:`~.loop.Trainer`) only sequences the hooks; what happens at them is here:
:class:`ProgressBar`, :class:`ExplosionWarnings`, :class:`BestModel` (the best validation
epoch, ``best.pt``), :class:`Checkpointer` (``checkpoint.pt``), :class:`CSVLogger`
(``metrics.csv``), :class:`EpochLog` (a log line per epoch), :class:`Pictures` and
:class:`SummaryFile` (``summary.json``); :class:`TensorBoardLogger` is one more, on request
(the ``tensorboard`` extra). A logger of one's own is a :class:`Callback` passed as
``train(..., callbacks=[...])`` (or ``neuralode.cli.main(argv, callbacks=[...])``).

Hooks, in the order a run calls them (the built-in callbacks first, then the user's, in the
order given)::

    on_checkpoint_load(trainer, state)          a resumed run, its state restored
    on_train_start(trainer)
      on_epoch_start(trainer, epoch)
        on_batch_end(batch)                     after each optimizer step
        on_validation_start(trainer, epoch)
        on_validation_end(trainer, epoch, metrics)
      on_epoch_end(epoch, row, out)             the row of metrics.csv
        on_checkpoint_save(trainer, state)      (from the checkpointer, at epoch end)
    on_train_end(trainer, summary)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..files import write_csv, write_json
from .checkpoint import capture_rng
from .run_folder import METRICS, SUMMARY, run_config, weights_digest
from .state import BestRecord, RunState

if TYPE_CHECKING:
    from .loop import Trainer

__all__ = [
    "BatchEnd",
    "BestModel",
    "CSVLogger",
    "Callback",
    "Checkpointer",
    "EpochLog",
    "ExplosionWarnings",
    "Pictures",
    "ProgressBar",
    "SummaryFile",
    "TensorBoardLogger",
    "default_callbacks",
    "explosion_warnings",
]

logger = logging.getLogger("neuralode.training.loop")
digest_logger = logging.getLogger("neuralode.training.digest")


@dataclasses.dataclass
class BatchEnd:
    """What a callback sees after each training batch (the optimizer has stepped)."""

    task: Any
    model: torch.nn.Module
    epoch: int
    step: int  # batch within the epoch, from 1
    global_step: int  # batches since the run began, from 1
    loss: float
    out: Path
    trainer: Trainer | None = None


class Callback:
    """Hooks into the loop, passed as ``train(..., callbacks=[...])``. Override what you need;
    ``trainer`` gives the task, the model, the optimizer, the run's :class:`RunState`
    (``trainer.state``), its folder and the process group (``trainer.dist``)."""

    def on_checkpoint_load(self, trainer: Trainer, state: RunState) -> None:
        """A resumed run's state was read and restored (before ``on_train_start``)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """The model, optimizer and data are ready; the first (or next) epoch follows."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before an epoch's first batch."""

    def on_batch_end(self, batch: BatchEnd) -> None:
        """After each training batch."""

    def on_validation_start(self, trainer: Trainer, epoch: int) -> None:
        """The epoch's batches are done; its evaluation follows."""

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """The epoch's validation and test metrics (``val_…``, ``test_…``)."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        """After each epoch's metrics are complete; ``row`` is its line of metrics.csv."""

    def on_checkpoint_save(self, trainer: Trainer, state: RunState) -> None:
        """The checkpoint of ``state`` was written."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """The run finished; ``summary`` is what ``summary.json`` holds (it may be added to)."""


class _Attached(Callback):
    """A built-in callback: it keeps the trainer it serves."""

    trainer: Trainer

    def on_checkpoint_load(self, trainer: Trainer, state: RunState) -> None:
        self.trainer = trainer

    def on_train_start(self, trainer: Trainer) -> None:
        self.trainer = trainer


# ---------------------------------------------------------------------------- built-ins


class ProgressBar(_Attached):
    """A tqdm bar per epoch (main process only): the running loss, the task's sums and NFE."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not trainer.dist.is_main:
            return
        from tqdm.auto import tqdm

        total = trainer.batches_per_epoch
        desc = f"epoch {epoch}/{trainer.options.epochs}"
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)

    def on_batch_end(self, batch: BatchEnd) -> None:
        if self.bar is None:
            return
        totals = self.trainer.totals
        shown = {k: f"{v / totals.samples:.3f}" for k, v in totals.sums.items()}
        loss = f"{totals.loss_sum / totals.samples:.4g}"
        self.bar.set_postfix(loss=loss, **shown, nfe=totals.last_nfe, refresh=False)
        self.bar.update(1)

    def on_validation_start(self, trainer: Trainer, epoch: int) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# thresholds of the explosion warning
LOSS_RISE, LOSS_LIMIT = 100.0, 1e6
NFE_RISE, NFE_FLOOR, NFE_LIMIT = 10.0, 1000, 10_000


def explosion_warnings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What looks like a run blowing up in its last epoch: a loss 100× its lowest earlier value
    or above 1e6, or an NFE per forward pass 10× the first epoch's (and over 1,000) or above
    10,000."""
    if not rows:
        return []
    last, found = rows[-1], []
    loss = last.get("train_loss")
    earlier = [r["train_loss"] for r in rows[:-1] if isinstance(r.get("train_loss"), float)]
    if isinstance(loss, float):
        low = min(earlier, default=None)
        if low is not None and low > 0 and loss > LOSS_RISE * low:
            found.append(f"the training loss rose to {loss:.4g}, {loss / low:.0f}× its lowest")
        elif loss > LOSS_LIMIT:
            found.append(f"the training loss is {loss:.4g}")
    for key in ("nfe_forward", "test_nfe_forward"):
        nfe, first = last.get(key), rows[0].get(key)
        if not isinstance(nfe, (int, float)):
            continue
        if len(rows) > 1 and first and nfe >= NFE_FLOOR and nfe > NFE_RISE * first:
            found.append(f"{key} rose to {nfe:,.0f}, {nfe / first:.0f}× the first epoch's")
        elif nfe > NFE_LIMIT:
            found.append(f"{key} is {nfe:,.0f} function evaluations per forward pass")
    return found


class ExplosionWarnings(_Attached):
    """Logs what looks like a run blowing up and records it (``summary.json``'s
    ``warnings``)."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        state = self.trainer.state
        for warning in explosion_warnings(state.rows):
            message = f"epoch {epoch}: {warning}; run `neuralode diagnose {out}` to see why"
            logger.warning(message)
            state.warnings.append(message)


class BestModel(_Attached):
    """The best validation epoch (by the task's metric): kept in the run's state and written
    as ``best.pt`` once the checkpoint that records it is written."""

    def __init__(self) -> None:
        self.improved = False

    def on_checkpoint_load(self, trainer: Trainer, state: RunState) -> None:
        super().on_checkpoint_load(trainer, state)
        if trainer.dist.is_main:  # a kill between the two writes: the checkpoint is the authority
            trainer.folder.sync_best(state)

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        task, state = self.trainer.task, self.trainer.state
        key = f"val_{task.metric}"
        value = row.get(key)
        self.improved = False
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        if state.best is not None:
            old = state.best.value
            if (value <= old) if task.maximize else (value >= old):
                return
        state.best = BestRecord.of(epoch, key, value, row, self.trainer.model)
        self.improved = True

    def on_checkpoint_save(self, trainer: Trainer, state: RunState) -> None:
        if self.improved:
            trainer.folder.save_best(state)


class Checkpointer(_Attached):
    """``checkpoint.pt`` after every epoch (main process), atomically: the run's state, from
    which it resumes exactly."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        t = self.trainer
        if not t.dist.is_main:
            return
        state = t.state
        state.model = t.model.state_dict()
        state.optimizer = t.optimizer.state_dict()
        state.scheduler = None if t.scheduler is None else t.scheduler.state_dict()
        state.rng = capture_rng()
        state.config = run_config(t.task)
        t.folder.save_state(state)
        t.emit("on_checkpoint_save", t, state)


class CSVLogger(_Attached):
    """``metrics.csv``: a row per epoch (rewritten from the checkpoint on resume, so that a
    kill between the two writes cannot leave them apart)."""

    def on_checkpoint_load(self, trainer: Trainer, state: RunState) -> None:
        super().on_checkpoint_load(trainer, state)
        if trainer.dist.is_main:
            write_csv(trainer.folder.file(METRICS), state.rows)

    def on_checkpoint_save(self, trainer: Trainer, state: RunState) -> None:
        write_csv(trainer.folder.file(METRICS), state.rows)


class EpochLog(_Attached):
    """A log line per epoch with its metrics."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        metrics = ", ".join(f"{k}={v}" for k, v in row.items() if k != "epoch")
        logger.info("epoch %d: %s", epoch, metrics)


class Pictures(_Attached):
    """The training curves and the task's own pictures, at the end (main process)."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if not trainer.dist.is_main:
            return
        rows, out = trainer.state.rows, trainer.folder.path
        plots = []
        if rows:
            from ..plotting import plot_training_curves

            plot_training_curves(rows, out / "training_curves.png", trainer.task.metric)
            plots.append("training_curves.png")
        plots += trainer.task.plots(trainer.model, trainer.data, out, trainer.device)
        summary["plots"] = plots


class SummaryFile(_Attached):
    """``summary.json`` (main process), with the SHA-256 of the final weights (logged on every
    rank, for the distributed tests)."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        digest = weights_digest(trainer.model)
        digest_logger.info("final weights sha256 (rank %d): %s", trainer.dist.rank, digest)
        summary["weights_sha256"] = digest
        if trainer.dist.is_main:
            write_json(trainer.folder.file(SUMMARY), summary)


class TensorBoardLogger(Callback):
    """Every epoch's metrics and every batch's loss as TensorBoard scalars, in ``log_dir``
    (default: the run folder's ``tensorboard``). Needs the ``tensorboard`` extra
    (``pip install neuralode[tensorboard]``); main process only."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as err:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(
                "the TensorBoard logger needs the tensorboard package: pip install "
                "'neuralode[tensorboard]'"
            ) from err
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir or trainer.folder.file("tensorboard")
        # a resumed run continues at its next step (TensorBoard drops later points on purge)
        self.writer = SummaryWriter(str(log_dir), purge_step=trainer.state.step + 1)

    def on_batch_end(self, batch: BatchEnd) -> None:
        if self.writer is not None:
            self.writer.add_scalar("batch/loss", batch.loss, batch.global_step)

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def default_callbacks(progress: bool) -> list[Callback]:
    """The loop's duties, in the order they run at each hook."""
    duties: list[Callback] = [ProgressBar()] if progress else []
    return [*duties, ExplosionWarnings(), BestModel(), Checkpointer(), CSVLogger(), EpochLog(),
            Pictures(), SummaryFile()]  # fmt: skip
