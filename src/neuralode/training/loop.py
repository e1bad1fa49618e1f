"""The one training loop every task runs through. :class:`Trainer` sequences the hooks of its
callbacks (:mod:`.callbacks`): it seeds, restores, steps, evaluates and stops on a NaN loss;
checkpoints, the best model, the progress bar, warnings, ``metrics.csv``, the pictures and
``summary.json`` are the callbacks' duties. The run folder is :class:`~.run_folder.RunFolder`'s.

What differs between tasks (data, models, the loss, metrics, plots) comes from the
:class:`~neuralode.tasks.Task`; this module never names a task.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diagnostics import diagnose
from ..errors import CheckpointError, SolverError, TrainingDiverged
from ..solvers import record
from ..tasks import Task
from ..tasks.base import TrainOptions
from .callbacks import BatchEnd, Callback, default_callbacks
from .checkpoint import restore_rng
from .distributed import Distributed
from .run_folder import BEST, CHECKPOINT, DIAGNOSIS, RunFolder, run_config
from .runs import load_weights
from .state import RunState

__all__ = ["BatchEnd", "Callback", "Trainer", "peak_memory_mb", "train"]

logger = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA max-allocated on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _optimizer(o: TrainOptions, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def _scheduler(
    o: TrainOptions, opt: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
    if o.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, o.epochs // 3), gamma=0.1)
    return None


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


@dataclasses.dataclass
class EpochTotals:
    """An epoch's running sums on this process (the progress bar reads them)."""

    samples: int = 0
    loss_sum: float = 0.0
    nfe_forward: int = 0
    nfe_backward: int = 0
    steps: int = 0
    last_nfe: int = 0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- train


def train(
    task: Task,
    out_dir: Any,
    resume: bool | str = False,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train ``task`` (its options validated here), writing the run folder ``out_dir``;
    return the summary (also written as ``summary.json``).

    Raises:
        InvalidArgumentError: a bad option, or a folder that is not this task's run (before
            any work, with nothing written).
        CheckpointError: ``resume`` without a usable run, or a new run over an existing one.
        TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
    """
    folder = RunFolder(out_dir)
    task.options.validate()
    task.check_options()
    task.options.normalize()
    dist = Distributed.from_environment(task.options)
    failed = interrupted = False
    try:
        state = folder.start(task, resume, lock=dist.is_main)
        trainer = Trainer(task, folder, dist, [*default_callbacks(progress), *callbacks])
        return trainer.run(state)
    except KeyboardInterrupt:
        failed = interrupted = True
        raise
    except BaseException:
        failed = True
        raise
    finally:
        folder.close(failed, interrupted)
        dist.close()


class Trainer:
    """Runs the epochs of one task in one run folder and calls its callbacks' hooks."""

    def __init__(
        self, task: Task, folder: RunFolder, dist: Distributed, callbacks: Sequence[Callback]
    ) -> None:
        self.task, self.folder, self.dist = task, folder, dist
        self.options = task.options
        self.callbacks = list(callbacks)
        self.device = dist.device
        self.totals = EpochTotals()
        self.batches_per_epoch = 0

    @property
    def out(self) -> Path:
        """The run folder."""
        return self.folder.path

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order."""
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    # ------------------------------------------------------------------ the run
    def run(self, saved: RunState | None) -> dict[str, Any]:
        self._setup(saved)
        self.folder.started = True  # the folder is the user's run now: kept whatever happens
        self.emit("on_train_start", self)
        for epoch in range(self.state.epoch + 1, self.options.epochs + 1):
            self._epoch(epoch)
        summary = self._summary()
        self.emit("on_train_end", self, summary)
        return summary

    def _setup(self, saved: RunState | None) -> None:
        task, o, dist = self.task, self.options, self.dist
        if o.threads is not None:
            torch.set_num_threads(o.threads)
        torch.manual_seed(o.seed)
        self.model = task.build_model().to(self.device)
        self.optimizer = _optimizer(o, self.model.parameters())
        self.scheduler = _scheduler(o, self.optimizer)
        self.state = self._fresh_state() if saved is None else self._restore(saved)
        self.data = dist.load(lambda: task.load_data(progress=False))
        task.check_data(self.data, dist.world)
        if dist.is_main:
            self.folder.write_config(task)
        if saved is not None:
            self.emit("on_checkpoint_load", self, self.state)
        self.wrapped = dist.wrap(self.model)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _fresh_state(self) -> RunState:
        return RunState(model={}, optimizer={}, scheduler=None, rng={}, epoch=0, step=0,
                        rows=[], train_seconds=0.0, best=None, warnings=[],
                        config=run_config(self.task))  # fmt: skip

    def _restore(self, saved: RunState) -> RunState:
        self._check_schedule(saved)
        path = self.folder.file(CHECKPOINT)
        load_weights(self.model, saved.model, path)
        try:
            self.optimizer.load_state_dict(saved.optimizer)
            if self.scheduler is not None and saved.scheduler is not None:
                self.scheduler.load_state_dict(saved.scheduler)
            restore_rng(saved.rng)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise CheckpointError(
                f"{path}: the optimizer, schedule or random state cannot be restored "
                f"({type(err).__name__}: {err}); the run cannot be resumed exactly"
            ) from err
        logger.info("resuming %s after epoch %d", self.out, saved.epoch)
        return saved

    def _check_schedule(self, saved: RunState) -> None:
        o, old = self.options, saved.config
        if o.schedule != "none" and o.epochs != old.get("epochs"):
            # the schedule's length is its number of epochs: a new length would rewrite the
            # learning rates of the epochs already trained (cosine would rise again)
            raise CheckpointError(
                f"--resume --epochs {o.epochs}: the run in {self.out} follows a {o.schedule} "
                f"learning-rate schedule laid out for {old.get('epochs')} epochs, which cannot be "
                f"stretched without changing the epochs already trained. Resume with --epochs "
                f"{old.get('epochs')}, or start a new run (with --schedule none, runs can be "
                "extended)"
            )

    # ------------------------------------------------------------------ one epoch
    def _epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        n = self.task.batches_per_epoch(self.data, self.dist.world)
        limit = self.options.max_train_batches
        self.batches_per_epoch = n if limit is None else min(n, limit)  # (the progress bar's)
        self.emit("on_epoch_start", self, epoch)
        self._train_epoch(epoch)
        self.emit("on_validation_start", self, epoch)
        metrics = self._evaluate()
        self.emit("on_validation_end", self, epoch, metrics)
        row = self._row(epoch, metrics, time.perf_counter() - t0)
        self.state.rows.append(row)
        self.state.epoch = epoch
        self.emit("on_epoch_end", epoch, row, self.out)
        self.dist.barrier()

    def _train_epoch(self, epoch: int) -> None:
        task, o, dist = self.task, self.options, self.dist
        gen = torch.Generator().manual_seed(o.seed * 100003 + epoch)
        self.totals = EpochTotals()
        self.model.train()
        for step, batch in enumerate(task.train_batches(self.data, gen, dist.rank, dist.world), 1):
            if step > self.batches_per_epoch:
                break
            loss = self._step(batch, epoch, step)
            self.state.step += 1
            global_step = (epoch - 1) * self.batches_per_epoch + step
            self.emit("on_batch_end", BatchEnd(task, self.model, epoch, step, global_step, loss,
                                               self.out, self))  # fmt: skip

    def _step(self, batch: Any, epoch: int, step: int) -> float:
        """One optimizer step; the loss (before regularization)."""
        try:
            with record() as rec:  # every solve of the step, and every regularizer's term
                result = self.task.training_step(self.wrapped, batch, self.device)
            reg = rec.regularization
            total = result.loss if reg is None else result.loss + reg
            if not math.isfinite(float(total.detach())):
                raise self._diverged(batch, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
        except SolverError as err:
            raise self._diverged(batch, epoch, step) from err
        self.optimizer.step()
        loss = float(result.loss.detach())
        t = self.totals
        t.nfe_forward += rec.nfe_forward
        t.nfe_backward += rec.nfe_backward
        t.steps, t.samples, t.last_nfe = t.steps + 1, t.samples + result.samples, rec.nfe_forward
        t.loss_sum += loss * result.samples
        for k, v in result.sums.items():
            t.sums[k] = t.sums.get(k, 0.0) + v
        return loss

    def _evaluate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for split in ("val", "test"):
            values = self.task.evaluate(self.model, self.data, split, self.device, self.dist)
            metrics.update({f"{split}_{k}": v for k, v in values.items() if k != "samples"})
        return metrics

    def _row(self, epoch: int, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
        t = self.totals
        keys = sorted(t.sums)
        sums = self.dist.sum([t.samples, t.loss_sum, t.nfe_forward, t.nfe_backward, t.steps,
                              *(t.sums[k] for k in keys)])  # fmt: skip
        samples, loss_sum, nfe_f, nfe_b, steps = sums[:5]
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(samples, 1)}
        row.update({f"train_{k}": v / max(samples, 1) for k, v in zip(keys, sums[5:])})
        row.update(metrics)
        row["nfe_forward"] = nfe_f / max(steps, 1)
        row["nfe_backward"] = nfe_b / max(steps, 1)
        if self.scheduler is not None:
            self.scheduler.step()
        self.state.train_seconds += seconds
        row.update(epoch_seconds=round(seconds, 3),
                   peak_memory_mb=round(peak_memory_mb(self.device), 1),
                   lr=self.optimizer.param_groups[0]["lr"])  # fmt: skip
        return {k: _round(v) for k, v in row.items()}

    def _diverged(self, batch: Any, epoch: int, step: int) -> TrainingDiverged:
        module, inputs = self.task.diagnosis_view(self.model, batch, self.device)[:2]
        report = diagnose(module, inputs)
        text = str(report)
        if self.dist.is_main:
            self.folder.write_text(DIAGNOSIS, text + "\n")
        return TrainingDiverged(
            f"the loss became NaN/inf at epoch {epoch}, batch {step}; the last good checkpoint "
            f"is kept in {self.out}. Diagnosis:\n{text}\nTry a smaller learning rate (--lr), "
            "tighter tolerances (--rtol/--atol), or a kinetic-energy regularizer (--kinetic "
            "0.01).",
            report,
        )

    # ------------------------------------------------------------------ the end
    def _summary(self) -> dict[str, Any]:
        state, last = self.state, (self.state.rows[-1] if self.state.rows else {})
        summary: dict[str, Any] = {
            "task": self.task.name,
            "model": self.task.model_name,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "epochs": state.epoch,
            "train_seconds": round(state.train_seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "nfe_forward": last.get("nfe_forward"),
            "nfe_backward": last.get("nfe_backward"),
        }
        summary.update({k: v for k, v in last.items() if k.startswith(("val_", "test_"))})
        best = state.best
        summary["best"] = None if best is None else {
            "epoch": best.epoch, "file": BEST, "metric": best.metric, **best.metrics,
        }  # fmt: skip
        summary.update(world_size=self.dist.world, warnings=state.warnings,
                       config=run_config(self.task))  # fmt: skip
        return summary
