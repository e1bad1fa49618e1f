"""The training loop: MNIST classification and spiral-dynamics regression, with a run folder,
per-epoch checkpoints, exact resume and data-parallel training."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..blocks import regularization_loss, solve_stats
from ..data import TensorData, batches, load_mnist
from ..diagnostics import diagnose
from ..errors import SolverError
from .checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import TrainConfig, build_model, trajectory_data
from .distributed import Distributed
from .files import RunLock, check_folder, remove_stale_temporaries, write_csv, write_json

__all__ = ["TrainingDiverged", "evaluate_run", "peak_memory_mb", "train"]

logger = logging.getLogger(__name__)
digest_logger = logging.getLogger("neuralode.training.digest")

CHECKPOINT = "checkpoint.pt"
# config keys that may differ when resuming (they do not change what is being trained)
_RESUMABLE = {"epochs", "device", "data_dir", "threads"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the report says why, the last good checkpoint is kept."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA max-allocated on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    return None


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _fault_injection(global_batch: int, model: nn.Module) -> None:
    """Testing hooks that simulate failures a real run meets:

    * ``NEURALODE_KILL_AFTER_BATCHES=N`` kills the process (SIGKILL, no cleanup) after N
      training batches — an interrupted run must resume exactly;
    * ``NEURALODE_NAN_AFTER_BATCHES=N`` turns a weight into NaN after N batches — a diverged
      run must stop with a diagnosis and keep its last good checkpoint.
    """
    limit = os.environ.get("NEURALODE_KILL_AFTER_BATCHES")
    if limit is not None and global_batch >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)
    limit = os.environ.get("NEURALODE_NAN_AFTER_BATCHES")
    if limit is not None and global_batch == int(limit):
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    data: TensorData,
    batch_size: int,
    device: torch.device,
    dist: Distributed | None = None,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total, correct, loss_sum, nfe, n_batches = 0, 0, 0.0, 0, 0
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    for x, y in batches(data, batch_size * world, None, rank, world):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
        nfe += solve_stats(model).nfe_forward
        n_batches += 1
    if dist is not None:
        total, correct, loss_sum, nfe, n_batches = dist.sum(
            [total, correct, loss_sum, nfe, n_batches]
        )
    model.train(was_training)
    return {
        "loss": loss_sum / max(total, 1),
        "accuracy": correct / max(total, 1),
        "nfe_forward": nfe / max(n_batches, 1),
        "samples": total,
    }


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class _State:
    epoch: int = 0  # epochs completed
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The configuration keys, other than those a resume may change, where two runs differ."""
    return sorted(k for k in set(a) | set(b) if k not in _RESUMABLE and a.get(k) != b.get(k))


def _check_resume(cfg: TrainConfig, saved: dict[str, Any], out: Path) -> None:
    old = saved["config"]
    diff = _differing(cfg.to_dict(), old)
    if diff:
        details = ", ".join(f"{k}: run has {old.get(k)!r}, now {getattr(cfg, k)!r}" for k in diff)
        raise CheckpointError(
            f"--resume: the run in {out} was made with a different configuration ({details}); "
            "resume with the same options, or start a new run with another --out"
        )
    if cfg.schedule != "none" and cfg.epochs != old.get("epochs"):
        # the schedule's length is its number of epochs: a new length would rewrite the
        # learning rates of the epochs already trained (cosine would rise again)
        raise CheckpointError(
            f"--resume --epochs {cfg.epochs}: the run in {out} follows a {cfg.schedule} "
            f"learning-rate schedule laid out for {old.get('epochs')} epochs, which cannot be "
            f"stretched without changing the epochs already trained. Resume with --epochs "
            f"{old.get('epochs')}, or start a new run (with --schedule none, runs can be extended)"
        )


_CHECKPOINT_KEYS = {
    "model": dict,
    "optimizer": dict,
    "rng": dict,
    "epoch": int,
    "rows": list,
    "train_seconds": (int, float),
    "config": dict,
}


def read_run_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A training checkpoint, verified (digest) and checked to have a run checkpoint's fields."""
    saved = load_checkpoint(path, map_location=map_location)
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(saved.get(key), kind) or isinstance(saved.get(key), bool):
            raise CheckpointError(
                f"{path} is not a neuralode training checkpoint: its {key!r} entry is "
                f"{type(saved.get(key)).__name__ if key in saved else 'missing'}"
            )
    if not all(isinstance(v, torch.Tensor) for v in saved["model"].values()):
        raise CheckpointError(f"{path}: its model entry is not a state_dict of tensors")
    try:
        TrainConfig.from_dict(saved["config"]).check_types()
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path}: the configuration stored with it is invalid: {err}"
        ) from err
    return saved


def _load_weights(model: nn.Module, saved: dict[str, Any], path: Path) -> None:
    """Load the checkpoint's weights into ``model``: every tensor present, of the right shape,
    and finite."""
    try:
        model.load_state_dict(saved["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{path} does not hold weights of this run's model "
            f"({first[0] if first else type(err).__name__} ...); the checkpoint belongs to "
            "another model or was altered"
        ) from err
    bad = [k for k, v in saved["model"].items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path}: the weights {bad[:3]} hold NaN or infinite values, so the model cannot "
            "be used; the run diverged before this checkpoint was written — retrain with a "
            "smaller --lr, or restore an earlier checkpoint"
        )


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train as ``cfg`` says, writing the run folder ``out_dir``; return the summary.

    Raises:
        ValueError: a bad option (before any work).
        CheckpointError: ``resume`` without a usable run, or a new run over an existing one.
        TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
    """
    cfg.validate()
    out = check_folder(out_dir)
    dist = Distributed.from_environment(cfg)
    lock = RunLock(out)
    try:
        if dist.is_main:  # one writer per run folder; the OS drops the lock if we are killed
            lock.acquire()
            stale = remove_stale_temporaries(out)
            if stale:
                logger.info("removed temporary files of an interrupted write: %s", stale)
        ckpt_path = out / CHECKPOINT
        if resume and not ckpt_path.is_file():
            raise CheckpointError(
                f"--resume: no run to resume in {out} (no {CHECKPOINT}); start it without --resume"
            )
        if not resume and ckpt_path.is_file():
            raise CheckpointError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        return _train(cfg, out, resume, progress, dist)
    finally:
        lock.release()
        dist.close()


def _train(
    cfg: TrainConfig, out: Path, resume: bool, progress: bool, dist: Distributed
) -> dict[str, Any]:
    device = dist.device
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = _optimizer(cfg, model.parameters())
    sched = _scheduler(cfg, opt)
    state = _State()
    if resume:
        saved = read_run_checkpoint(out / CHECKPOINT, map_location=device)
        _check_resume(cfg, saved, out)
        _load_weights(model, saved, out / CHECKPOINT)
        try:
            opt.load_state_dict(saved["optimizer"])
            if sched is not None and saved.get("scheduler") is not None:
                sched.load_state_dict(saved["scheduler"])
            restore_rng(saved["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise CheckpointError(
                f"{out / CHECKPOINT}: the optimizer, schedule or random state cannot be "
                f"restored ({type(err).__name__}: {err}); the run cannot be resumed exactly"
            ) from err
        state = _State(saved["epoch"], list(saved["rows"]), float(saved["train_seconds"]))
        logger.info("resuming %s after epoch %d", out, state.epoch)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
        if resume:  # a kill between the checkpoint and metrics.csv: the checkpoint's rows win
            write_csv(out / "metrics.csv", state.rows)
    wrapped = dist.wrap(model)
    if cfg.dataset == "mnist":
        train_data, test_data = dist.load(lambda: load_mnist(cfg.data_dir, progress=progress))
        train_data = train_data.subset(cfg.train_subset)
        test_data = test_data.subset(cfg.test_subset)
        if cfg.batch_size > len(train_data):
            raise ValueError(
                f"--batch-size {cfg.batch_size} is larger than the training set "
                f"({len(train_data)} images), so an epoch would train on nothing; use a batch "
                f"size of at most {len(train_data)}"
            )
        epoch_fn = _mnist_epoch
        data: Any = (train_data, test_data)
    else:
        data = trajectory_data(cfg)
        epoch_fn = _spiral_epoch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        row = epoch_fn(cfg, wrapped, model, opt, data, epoch, device, dist, progress, out, state)
        if sched is not None:
            sched.step()
        seconds = time.perf_counter() - t0
        state.train_seconds += seconds
        row.update(
            epoch=epoch,
            epoch_seconds=round(seconds, 3),
            peak_memory_mb=round(peak_memory_mb(device), 1),
            lr=opt.param_groups[0]["lr"],
        )
        row = {"epoch": row.pop("epoch"), **row}
        state.rows.append(row)
        state.epoch = epoch
        if dist.is_main:
            save_checkpoint(
                out / CHECKPOINT,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(),
                    "rng": capture_rng(),
                    "epoch": epoch,
                    "rows": state.rows,
                    "train_seconds": state.train_seconds,
                    "config": cfg.to_dict(),
                },
            )
            write_csv(out / "metrics.csv", state.rows)
        logger.info(
            "epoch %d: %s", epoch, ", ".join(f"{k}={v}" for k, v in row.items() if k != "epoch")
        )
        dist.barrier()
    digest = _weights_digest(model)
    digest_logger.info("final weights sha256 (rank %d): %s", dist.rank, digest)
    last = state.rows[-1] if state.rows else {}
    summary = {
        "parameters": n_params,
        "epochs": state.epoch,
        "train_seconds": round(state.train_seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "nfe_forward": last.get("nfe_forward"),
        "nfe_backward": last.get("nfe_backward"),
        "weights_sha256": digest,
        "world_size": dist.world,
        "config": cfg.to_dict(),
    }
    if cfg.dataset == "mnist":
        summary["test_accuracy"] = last.get("test_accuracy")
        summary["test_loss"] = last.get("test_loss")
    else:
        summary["test_mse"] = last.get("test_mse")
        if dist.is_main:
            summary["plots"] = _spiral_plots(model, data, out, device)
    if dist.is_main:
        write_json(out / "summary.json", summary)
    return summary


def _diverged(model, batch, out: Path, epoch: int, step: int, is_main: bool):
    report = diagnose(model, batch)
    text = str(report)
    if is_main:
        (out / "diagnosis.txt").write_text(text + "\n")
    return TrainingDiverged(
        f"the loss became NaN/inf at epoch {epoch}, batch {step}; the last good checkpoint is "
        f"kept in {out}. Diagnosis:\n{text}\nTry a smaller learning rate (--lr), tighter "
        "tolerances (--rtol/--atol), or a kinetic-energy regularizer (--kinetic 0.01).",
        report,
    )


def _mnist_epoch(cfg, wrapped, model, opt, data, epoch, device, dist, progress, out, state):
    train_data, test_data = data
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    n_batches = len(train_data) // cfg.batch_size
    if cfg.max_train_batches is not None:
        n_batches = min(n_batches, cfg.max_train_batches)
    bar = _bar(n_batches, f"epoch {epoch}/{cfg.epochs}", progress and dist.is_main)
    model.train()
    seen, correct, loss_sum, nfe_f, nfe_b, steps = 0, 0, 0.0, 0, 0, 0
    for step, (x, y) in enumerate(
        batches(train_data, cfg.batch_size, gen, dist.rank, dist.world, drop_last=True), 1
    ):
        if step > n_batches:
            break
        x, y = x.to(device), y.to(device)
        try:
            logits = wrapped(x)
            loss = F.cross_entropy(logits, y)
            reg = regularization_loss(model)
            total = loss if reg is None else loss + reg
            if not math.isfinite(float(total.detach())):
                raise _diverged(model, (x, y), out, epoch, step, dist.is_main)
            opt.zero_grad(set_to_none=True)
            total.backward()
        except SolverError as err:
            raise _diverged(model, (x, y), out, epoch, step, dist.is_main) from err
        opt.step()
        stats = solve_stats(model)
        nfe_f += stats.nfe_forward
        nfe_b += stats.nfe_backward
        steps += 1
        seen += len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * len(y)
        if bar is not None:
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}",
                acc=f"{correct / seen:.3f}",
                nfe=stats.nfe_forward,
                refresh=False,
            )
            bar.update(1)
        _fault_injection((epoch - 1) * n_batches + step, model)
    if bar is not None:
        bar.close()
    seen, correct, loss_sum, nfe_f, nfe_b, steps = dist.sum(
        [seen, correct, loss_sum, nfe_f, nfe_b, steps]
    )
    test = evaluate_classifier(model, test_data, cfg.batch_size, device, dist)
    return {
        "train_loss": round(loss_sum / max(seen, 1), 6),
        "train_accuracy": round(correct / max(seen, 1), 6),
        "test_loss": round(test["loss"], 6),
        "test_accuracy": round(test["accuracy"], 6),
        "nfe_forward": round(nfe_f / max(steps, 1), 2),
        "nfe_backward": round(nfe_b / max(steps, 1), 2),
        "test_nfe_forward": round(test["nfe_forward"], 2),
    }


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)


def _spiral_epoch(cfg, wrapped, model, opt, data, epoch, device, dist, progress, out, state):
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    obs = data.observed[: data.split].to(device)
    t = data.t.to(device)
    window = cfg.spiral_window
    n_iter = (
        cfg.spiral_iters
        if cfg.max_train_batches is None
        else min(cfg.spiral_iters, cfg.max_train_batches)
    )
    bar = _bar(n_iter, f"epoch {epoch}/{cfg.epochs}", progress and dist.is_main)
    model.train()
    loss_sum, nfe_f, nfe_b = 0.0, 0, 0
    local = max(1, cfg.batch_size // dist.world)
    for it in range(1, n_iter + 1):
        starts = torch.randint(0, data.split - window, (cfg.batch_size,), generator=gen)
        starts = starts[dist.rank * local : (dist.rank + 1) * local].to(device)
        idx = starts[None, :] + torch.arange(window, device=device)[:, None]  # (window, B)
        target = obs[idx]  # (window, B, 2)
        y0 = target[0]
        tw = t[:window] - t[0]
        try:
            pred = wrapped(y0, tw)
            loss = (pred - target).pow(2).mean()
            if not math.isfinite(float(loss.detach())):
                raise TrainingDiverged(
                    f"the loss became NaN/inf at epoch {epoch}, iteration {it}; lower --lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except SolverError as err:
            raise TrainingDiverged(
                f"the solver failed at epoch {epoch}, iteration {it}: {err}"
            ) from err
        opt.step()
        stats = solve_stats(model)
        nfe_f += stats.nfe_forward
        nfe_b += stats.nfe_backward
        loss_sum += float(loss.detach())
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / it:.5f}", nfe=stats.nfe_forward, refresh=False)
            bar.update(1)
        _fault_injection((epoch - 1) * n_iter + it, model)
    if bar is not None:
        bar.close()
    loss_sum, nfe_f, nfe_b = dist.sum([loss_sum, nfe_f, nfe_b])
    return {
        "train_loss": round(loss_sum / (n_iter * dist.world), 6),
        "test_mse": round(_spiral_test_mse(model, data, device), 6),
        "nfe_forward": round(nfe_f / (n_iter * dist.world), 2),
        "nfe_backward": round(nfe_b / (n_iter * dist.world), 2),
    }


@torch.no_grad()
def _spiral_test_mse(model, data, device) -> float:
    """MSE on the held-out end of the trajectory, integrated from the last training point."""
    model.eval()
    t = data.test_t.to(device)
    y0 = data.y[data.split - 1 : data.split].to(device)
    pred = model(y0, t - t[0])[:, 0]
    model.train()
    return float((pred - data.y[data.split - 1 :].to(device)).pow(2).mean())


def _spiral_plots(model, data, out: Path, device) -> list[str]:
    from ..plotting import plot_phase_portrait, plot_spiral_fit

    with torch.no_grad():
        model.eval()
        learned = model(data.y[:1].to(device), data.t.to(device))[:, 0].cpu()
    paths = [
        plot_spiral_fit(data, learned, out / "spiral_trajectories.png"),
        plot_phase_portrait(model.func, data, learned, out / "phase_portrait.png"),
    ]
    return [str(p.name) for p in paths]


# --------------------------------------------------------------------------- evaluate a run


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Evaluate a run's checkpoint with its evaluation tolerances; writes ``evaluation.json``."""
    run = Path(run_dir)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    model, cfg = load_run(run, data_dir)
    device = cfg.resolved_device()
    model.to(device)
    if cfg.dataset == "mnist":
        _, test = load_mnist(cfg.data_dir)
        test = test.subset(cfg.test_subset)
        t0 = time.perf_counter()
        res = evaluate_classifier(model, test, batch_size or cfg.batch_size, device)
        res["seconds"] = round(time.perf_counter() - t0, 3)
    else:
        data = trajectory_data(cfg)
        res = {"test_mse": _spiral_test_mse(model, data, device)}
        res["nfe_forward"] = solve_stats(model).nfe_forward
    res["eval_rtol"], res["eval_atol"] = cfg.eval_rtol, cfg.eval_atol
    try:
        write_json(run / "evaluation.json", res)
    except OSError as err:  # a read-only run folder: the results are still returned
        logger.warning("could not save evaluation.json in %s: %s", run, err.strerror or err)
    return res


def load_run(run: Path, data_dir: str | None = None) -> tuple[nn.Module, TrainConfig]:
    """The model of a run folder, with its trained weights, and its configuration."""
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a run folder (no such folder)")
    if not (run / "config.json").is_file() and not (run / CHECKPOINT).is_file():
        raise CheckpointError(f"{run} is not a run folder (no config.json or {CHECKPOINT})")
    saved = read_run_checkpoint(run / CHECKPOINT)
    cfg = TrainConfig.from_dict(saved["config"])
    _check_same_run(run, saved)
    if data_dir is not None:
        cfg.data_dir = data_dir
    model = build_model(cfg)
    _load_weights(model, saved, run / CHECKPOINT)
    _check_summary_digest(run, saved, model)
    return model, cfg


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); the run folder is damaged") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the run folder is damaged")
    return data


def _check_same_run(run: Path, saved: dict[str, Any]) -> None:
    """The checkpoint must be this run's: its configuration is the one in config.json (up to
    the options that may change on resume)."""
    cfg = _read_json(run / "config.json")
    if cfg is None:
        return
    old = saved["config"]
    diff = _differing(cfg, old)
    if diff:
        details = ", ".join(f"{k}: {old.get(k)!r} vs {cfg.get(k)!r}" for k in diff[:4])
        raise CheckpointError(
            f"{run / CHECKPOINT} does not belong to the run in {run}: its configuration differs "
            f"from config.json ({details}); it was copied from another run"
        )


def _check_summary_digest(run: Path, saved: dict[str, Any], model: nn.Module) -> None:
    """A finished run's summary.json records the SHA-256 of its final weights: check it."""
    summary = _read_json(run / "summary.json")
    if summary is None or summary.get("epochs") != saved["epoch"]:
        return  # not finished, or resumed since: the summary describes another checkpoint
    recorded = summary.get("weights_sha256")
    if recorded is not None and recorded != _weights_digest(model):
        raise CheckpointError(
            f"the weights in {run / CHECKPOINT} are not the ones summary.json records "
            "(weights_sha256 differs): the checkpoint was replaced or altered after training"
        )
