"""The one training loop every task runs through: seeding, epochs, progress bars, evaluation,
atomic checkpoints (the last and the best), exact resume, a NaN stop with a diagnosis,
data-parallel training, ``metrics.csv``, ``summary.json`` and a training-curve plot.

What differs between tasks (data, models, the loss, metrics, plots) comes from the
:class:`~neuralode.tasks.Task`; this module never names a task.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..diagnostics import diagnose
from ..errors import CheckpointError, SolverError, TrainingDiverged
from ..solvers import record
from ..tasks import Task
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .distributed import Distributed
from .files import RunLock, check_folder, remove_stale_temporaries, write_csv, write_json
from .run_folder import (
    BEST,
    CHECKPOINT,
    differing,
    load_weights,
    read_json,
    read_run_checkpoint,
    run_config,
    upgrade_config,
    weights_digest,
)

__all__ = ["BatchEnd", "Callback", "peak_memory_mb", "train"]

logger = logging.getLogger(__name__)
digest_logger = logging.getLogger("neuralode.training.digest")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA max-allocated on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- callbacks


@dataclasses.dataclass
class BatchEnd:
    """What a callback sees after each training batch (the optimizer has stepped)."""

    task: Task
    model: nn.Module
    epoch: int
    step: int  # batch within the epoch, from 1
    global_step: int  # batches since the run began, from 1
    loss: float
    out: Path


class Callback:
    """Hooks into the loop, passed as ``train(..., callbacks=[...])``. Override what you need.
    (The tests inject faults this way: a kill or a NaN weight after N batches.)"""

    def on_batch_end(self, batch: BatchEnd) -> None:
        """After each training batch."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any], out: Path) -> None:
        """After each epoch's checkpoint is written; ``row`` is its line of metrics.csv."""


# --------------------------------------------------------------------------- pieces


def _optimizer(o, params) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def _scheduler(o, opt: torch.optim.Optimizer):
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
    if o.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, o.epochs // 3), gamma=0.1)
    return None


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


@dataclasses.dataclass
class _State:
    epoch: int = 0  # epochs completed
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    best: dict[str, Any] | None = None  # epoch, value, metrics, model (a state_dict)
    warnings: list[str] = dataclasses.field(default_factory=list)


# thresholds of the explosion warning
LOSS_RISE, LOSS_LIMIT = 100.0, 1e6
NFE_RISE, NFE_FLOOR, NFE_LIMIT = 10.0, 1000, 10_000


def explosion_warnings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What looks like a run blowing up in its last epoch: a loss 100× its lowest earlier value
    or above 1e6, or an NFE per forward pass 10× the first epoch's (and over 1,000) or above
    10,000. The training loop logs each and records it in summary.json."""
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


# --------------------------------------------------------------------------- train


def train(
    task: Task,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train ``task`` (its options validated here), writing the run folder ``out_dir``;
    return the summary (also written as ``summary.json``).

    Raises:
        InvalidArgumentError: a bad option (before any work).
        CheckpointError: ``resume`` without a usable run, or a new run over an existing one.
        TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
    """
    task.options.validate()
    task.check_options()
    task.options.normalize()
    out = check_folder(out_dir)
    new_folder = not out.exists()
    dist = Distributed.from_environment(task.options)
    lock = RunLock(out)
    loop = _Loop(task, out, progress, dist, list(callbacks))
    locked = False
    try:
        if dist.is_main:  # one writer per run folder; the OS drops the lock if we are killed
            lock.acquire()
            locked = True
            stale = remove_stale_temporaries(out)
            if stale:
                logger.info("removed temporary files of an interrupted write: %s", stale)
        has_run = (out / CHECKPOINT).is_file()
        if resume and not has_run:
            stored = read_json(out / "config.json") if out.is_dir() else None
            if stored is None:
                raise CheckpointError(
                    f"--resume: no run to resume in {out} (no {CHECKPOINT}); start it without "
                    "--resume"
                )
            # interrupted before its first epoch ended: nothing was trained, so the same run
            # starts again from its beginning (its seed makes it the run it would have been)
            loop.check_same_config(upgrade_config(stored))
            logger.info(
                "%s: no epoch had finished (no %s); starting the run from its beginning",
                out, CHECKPOINT,
            )  # fmt: skip
            resume = False
        if not resume and has_run:
            raise CheckpointError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        return loop.run(resume)
    except BaseException:
        if new_folder and locked and not loop.started:
            # a failed start (bad data, bad option found late) of the folder this process
            # created and holds: leave nothing behind (the lock is released just after)
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()
        dist.close()


class _Loop:
    def __init__(
        self, task: Task, out: Path, progress: bool, dist: Distributed, callbacks: list[Callback]
    ) -> None:
        self.task, self.out, self.progress, self.dist = task, out, progress, dist
        self.callbacks = callbacks
        self.o = task.options
        self.started = False  # the first epoch began: the run folder is the user's now

    # ------------------------------------------------------------------ setup
    def run(self, resume: bool) -> dict[str, Any]:
        task, o, dist, out = self.task, self.o, self.dist, self.out
        device = dist.device
        if o.threads is not None:
            torch.set_num_threads(o.threads)
        torch.manual_seed(o.seed)
        model = task.build_model().to(device)
        opt = _optimizer(o, model.parameters())
        sched = _scheduler(o, opt)
        state = _State()
        if resume:
            state = self._restore(model, opt, sched, device)
        data = dist.load(lambda: task.load_data(progress=self.progress and dist.is_main))
        task.check_data(data, dist.world)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", run_config(task))
            if resume:  # a kill between the checkpoint and metrics.csv: the checkpoint's rows win
                write_csv(out / "metrics.csv", state.rows)
                self._sync_best_file(state)
        wrapped = dist.wrap(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.started = True
        for epoch in range(state.epoch + 1, o.epochs + 1):
            self._epoch(epoch, model, wrapped, opt, sched, data, state, device)
        return self._finish(model, data, state, device)

    def _restore(self, model, opt, sched, device) -> _State:
        path = self.out / CHECKPOINT
        saved = read_run_checkpoint(path, map_location=device)
        self._check_resume(saved)
        load_weights(model, saved["model"], path)
        try:
            opt.load_state_dict(saved["optimizer"])
            if sched is not None and saved.get("scheduler") is not None:
                sched.load_state_dict(saved["scheduler"])
            restore_rng(saved["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise CheckpointError(
                f"{path}: the optimizer, schedule or random state cannot be restored "
                f"({type(err).__name__}: {err}); the run cannot be resumed exactly"
            ) from err
        logger.info("resuming %s after epoch %d", self.out, saved["epoch"])
        return _State(
            saved["epoch"],
            list(saved["rows"]),
            float(saved["train_seconds"]),
            saved.get("best"),
            list(saved.get("warnings", [])),
        )

    def check_same_config(self, old: dict[str, Any]) -> None:
        """The run's recorded configuration ``old`` must be this task's, up to the options a
        resume may change."""
        new = run_config(self.task)
        diff = differing(new, old)
        if diff:
            details = ", ".join(f"{k}: run has {old.get(k)!r}, now {new.get(k)!r}" for k in diff)
            raise CheckpointError(
                f"--resume: the run in {self.out} was made with a different configuration "
                f"({details}); resume with the same options, or start a new run with another --out"
            )

    def _check_resume(self, saved: dict[str, Any]) -> None:
        self.check_same_config(saved["config"])
        old, out, o = saved["config"], self.out, self.o
        if o.schedule != "none" and o.epochs != old.get("epochs"):
            # the schedule's length is its number of epochs: a new length would rewrite the
            # learning rates of the epochs already trained (cosine would rise again)
            raise CheckpointError(
                f"--resume --epochs {o.epochs}: the run in {out} follows a {o.schedule} "
                f"learning-rate schedule laid out for {old.get('epochs')} epochs, which cannot be "
                f"stretched without changing the epochs already trained. Resume with --epochs "
                f"{old.get('epochs')}, or start a new run (with --schedule none, runs can be "
                "extended)"
            )

    # ------------------------------------------------------------------ one epoch
    def _epoch(self, epoch, model, wrapped, opt, sched, data, state: _State, device) -> None:
        task, o, dist = self.task, self.o, self.dist
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(o.seed * 100003 + epoch)
        n_batches = task.batches_per_epoch(data, dist.world)
        if o.max_train_batches is not None:
            n_batches = min(n_batches, o.max_train_batches)
        bar = _bar(n_batches, f"epoch {epoch}/{o.epochs}", self.progress and dist.is_main)
        model.train()
        samples, loss_sum, nfe_f, nfe_b, steps = 0, 0.0, 0, 0, 0
        sums: dict[str, float] = {}
        for step, batch in enumerate(task.train_batches(data, gen, dist.rank, dist.world), 1):
            if step > n_batches:
                break
            try:
                with record() as rec:  # every solve of the step, and every regularizer's term
                    result = task.training_step(wrapped, batch, device)
                reg = rec.regularization
                total = result.loss if reg is None else result.loss + reg
                if not math.isfinite(float(total.detach())):
                    raise self._diverged(model, batch, epoch, step, device)
                opt.zero_grad(set_to_none=True)
                total.backward()
            except SolverError as err:
                raise self._diverged(model, batch, epoch, step, device) from err
            opt.step()
            nfe_f += rec.nfe_forward
            nfe_b += rec.nfe_backward
            steps += 1
            samples += result.samples
            loss = float(result.loss.detach())
            loss_sum += loss * result.samples
            for k, v in result.sums.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar is not None:
                shown = {k: f"{v / samples:.3f}" for k, v in sums.items()}
                bar.set_postfix(
                    loss=f"{loss_sum / samples:.4g}", **shown, nfe=rec.nfe_forward, refresh=False
                )
                bar.update(1)
            end = BatchEnd(task, model, epoch, step, (epoch - 1) * n_batches + step, loss, self.out)
            for cb in self.callbacks:
                cb.on_batch_end(end)
        if bar is not None:
            bar.close()
        keys = sorted(sums)
        totals = dist.sum([samples, loss_sum, nfe_f, nfe_b, steps, *(sums[k] for k in keys)])
        samples, loss_sum, nfe_f, nfe_b, steps = totals[:5]
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(samples, 1)}
        row.update({f"train_{k}": v / max(samples, 1) for k, v in zip(keys, totals[5:])})
        for split in ("val", "test"):
            metrics = task.evaluate(model, data, split, device, dist)
            row.update({f"{split}_{k}": v for k, v in metrics.items() if k != "samples"})
        row["nfe_forward"] = nfe_f / max(steps, 1)
        row["nfe_backward"] = nfe_b / max(steps, 1)
        if sched is not None:
            sched.step()
        seconds = time.perf_counter() - t0
        state.train_seconds += seconds
        row.update(
            epoch_seconds=round(seconds, 3),
            peak_memory_mb=round(peak_memory_mb(device), 1),
            lr=opt.param_groups[0]["lr"],
        )
        row = {k: _round(v) for k, v in row.items()}
        state.rows.append(row)
        state.epoch = epoch
        improved = self._track_best(model, row, state)
        for warning in explosion_warnings(state.rows):
            message = f"epoch {epoch}: {warning}; run `neuralode diagnose {self.out}` to see why"
            logger.warning(message)
            state.warnings.append(message)
        if dist.is_main:
            save_checkpoint(
                self.out / CHECKPOINT,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(),
                    "rng": capture_rng(),
                    "epoch": epoch,
                    "rows": state.rows,
                    "train_seconds": state.train_seconds,
                    "best": state.best,
                    "warnings": state.warnings,
                    "config": run_config(self.task),
                },
            )
            if improved:
                self._write_best_file(state)
            write_csv(self.out / "metrics.csv", state.rows)
        logger.info(
            "epoch %d: %s", epoch, ", ".join(f"{k}={v}" for k, v in row.items() if k != "epoch")
        )
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, row, self.out)
        dist.barrier()

    def _track_best(self, model: nn.Module, row: dict[str, Any], state: _State) -> bool:
        key = f"val_{self.task.metric}"
        value = row.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if state.best is not None:
            old = state.best["value"]
            if (value <= old) if self.task.maximize else (value >= old):
                return False
        state.best = {
            "epoch": row["epoch"],
            "metric": key,
            "value": value,
            "metrics": {k: v for k, v in row.items() if k.startswith(("val_", "test_"))},
            "model": copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}),
        }
        return True

    def _sync_best_file(self, state: _State) -> None:
        """On resume: rewrite ``best.pt`` from the checkpoint's record (the authority) if a
        kill between the two writes left it behind, or it is missing or damaged."""
        if state.best is None:
            return
        try:
            if load_checkpoint(self.out / BEST).get("epoch") == state.best["epoch"]:
                return
        except CheckpointError:
            pass  # missing or damaged: rewritten below
        self._write_best_file(state)

    def _write_best_file(self, state: _State) -> None:
        """``best.pt``: the best epoch's weights, as a checkpoint of their own."""
        best = state.best
        save_checkpoint(
            self.out / BEST,
            {
                "model": best["model"],
                "epoch": best["epoch"],
                "metric": best["metric"],
                "value": best["value"],
                "config": run_config(self.task),
            },
        )

    def _diverged(self, model, batch, epoch: int, step: int, device) -> TrainingDiverged:
        module, inputs = self.task.diagnosis_view(model, batch, device)
        report = diagnose(module, inputs)
        text = str(report)
        if self.dist.is_main:
            (self.out / "diagnosis.txt").write_text(text + "\n")
        return TrainingDiverged(
            f"the loss became NaN/inf at epoch {epoch}, batch {step}; the last good checkpoint "
            f"is kept in {self.out}. Diagnosis:\n{text}\nTry a smaller learning rate (--lr), "
            "tighter tolerances (--rtol/--atol), or a kinetic-energy regularizer (--kinetic "
            "0.01).",
            report,
        )

    # ------------------------------------------------------------------ the end
    def _finish(self, model, data, state: _State, device) -> dict[str, Any]:
        dist, out = self.dist, self.out
        digest = weights_digest(model)
        digest_logger.info("final weights sha256 (rank %d): %s", dist.rank, digest)
        last = state.rows[-1] if state.rows else {}
        summary: dict[str, Any] = {
            "task": self.task.name,
            "model": self.task.model_name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": state.epoch,
            "train_seconds": round(state.train_seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "nfe_forward": last.get("nfe_forward"),
            "nfe_backward": last.get("nfe_backward"),
        }
        summary.update({k: v for k, v in last.items() if k.startswith(("val_", "test_"))})
        best = state.best
        summary["best"] = None
        if best is not None:
            summary["best"] = {
                "epoch": best["epoch"],
                "file": BEST,
                "metric": best["metric"],
                **best["metrics"],
            }
        summary.update(
            weights_sha256=digest,
            world_size=dist.world,
            warnings=state.warnings,
            config=run_config(self.task),
        )
        if dist.is_main:
            plots = ["training_curves.png"] if state.rows else []
            if state.rows:
                from ..plotting import plot_training_curves

                plot_training_curves(state.rows, out / "training_curves.png", self.task.metric)
            plots += self.task.plots(model, data, out, device)
            summary["plots"] = plots
            write_json(out / "summary.json", summary)
        return summary
