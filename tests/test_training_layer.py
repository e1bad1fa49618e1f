"""The training layer: the run's state (RunState, and the folders earlier versions wrote), the
run folder's one owner (RunFolder: what it refuses, touching nothing), the loop's duties as
callbacks (a callback of one's own sees every hook, across a kill and a resume), options
declared once (with_defaults), one evaluation loop, and the package's layering."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import neuralode
from neuralode.cli import main
from neuralode.errors import CheckpointError, InvalidArgumentError
from neuralode.training import Callback, RunFolder, RunState
from neuralode.training.checkpoint import load_checkpoint
from test_cli import _torchrun

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "run_2c5f785_spiral"
# what 2c5f785 itself resumed each of its run folders to (tests/data/README.md)
LEGACY_RESUMED = ROOT / "tests" / "data" / "resumed_2c5f785"
LEGACY_TASKS = ["cubic", "density", "mnist", "spiral", "timeseries"]
FAST = ["--epochs", "1", "--no-progress", "--max-train-batches", "2", "--threads", "1"]


def _digest(folder: Path) -> dict[str, str]:
    """Every file of a folder (links included, not followed) and its contents' SHA-256 — but
    the lock file, which any command that opens the folder creates and which holds no state."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if key == ".lock":
            continue
        if p.is_symlink():
            out[key] = "link to " + str(p.readlink())
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------- RunState


@pytest.mark.parametrize("task", LEGACY_TASKS)
def test_a_run_folder_of_2c5f785_evaluates_diagnoses_and_resumes_to_2c5f785_s_weights(
    task, tmp_path, capsys, request
):
    run = tmp_path / "legacy"
    shutil.copytree(ROOT / "tests" / "data" / f"run_2c5f785_{task}", run)
    # MNIST's folder recorded where its data was then; here it may be elsewhere (--data-dir)
    moved = ["--data-dir", str(request.getfixturevalue("data_dir"))] if task == "mnist" else []
    state = RunState.load(run / "checkpoint.pt")
    assert state.format == 1 and state.step == 0 and state.verified and state.epoch == 1
    assert state.best is not None and state.best.epoch == 1
    assert main(["-q", "evaluate", str(run), *moved]) == 0
    metric = state.best.metric.removeprefix("val_")
    assert math.isfinite(json.loads((run / "evaluation.json").read_text())[metric])
    assert main(["diagnose", str(run), *moved]) == 0
    assert "forward pass:      ok" in capsys.readouterr().out
    assert main(["-q", "resume", str(run), "--epochs", "2", "--no-progress", *moved]) == 0
    resumed = RunState.load(run / "checkpoint.pt")
    _assert_same_training(state.model, resumed.model, torch.load(LEGACY_RESUMED / f"{task}.pt"))
    assert resumed.format == 2 and resumed.epoch == 2 and resumed.step > 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    header = rows[0].split(",")  # (the timeseries task's test_nfe of then is test_nfe_forward)
    assert "test_nfe_forward" in header and "test_nfe" not in header


def _assert_same_training(start: dict, ours: dict, reference: dict) -> None:
    """``ours`` (this tree's resume from ``start``) is 2c5f785's resume of the same folder:
    equal to rounding, the difference below 1e-3 of the epoch's own update. On one CPU the
    two are bit-identical (both measured on an AMD EPYC); across CPUs PyTorch's kernels round
    differently (the weights' SHA-256, first recorded on an Intel Xeon, differed), while a
    change to what resuming does (the batches, the schedule, the optimizer's state) moves the
    weights by a sizeable part of the update."""
    assert ours.keys() == reference.keys() == start.keys()
    diff = math.sqrt(sum(float((ours[k] - reference[k]).double().pow(2).sum()) for k in ours))
    update = math.sqrt(sum(float((reference[k] - start[k]).double().pow(2).sum()) for k in ours))
    assert update > 0, "the reference did not train"
    assert diff <= 1e-3 * update, f"{diff:.3g} from 2c5f785's resume; its epoch moved {update:.3g}"


def _strip_digest(path: Path) -> None:
    """The file as checkpoints were written before they carried a digest header."""
    raw = path.read_bytes()
    path.write_bytes(raw[raw.index(b"\n") + 1 :])


def test_a_checkpoint_without_digest_is_checked_against_the_folder(tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(LEGACY, run)
    _strip_digest(run / "checkpoint.pt")
    state = RunState.load(run / "checkpoint.pt")
    assert state.format == 0 and not state.verified
    assert main(["-q", "evaluate", str(run)]) == 0  # unaltered: its summary vouches for it
    # altered: new weights behind no digest; the summary's weights_sha256 disagrees
    raw = load_checkpoint(run / "checkpoint.pt")
    raw["model"] = {k: v + 0.01 for k, v in raw["model"].items()}
    buf = __import__("io").BytesIO()
    torch.save(raw, buf)
    (run / "checkpoint.pt").write_bytes(buf.getvalue())
    before = _digest(run)
    for argv in (["-q", "resume", str(run), "--epochs", "2"], ["-q", "evaluate", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "weights_sha256 differs" in err and "Restore the checkpoint" in err
    assert _digest(run) == before  # refused before anything was written


def test_run_state_migrates_format_1_and_refuses_a_newer_one(tmp_path):
    raw = load_checkpoint(LEGACY / "checkpoint.pt")
    state = RunState.from_dict(raw, tmp_path / "x.pt")
    assert state.format == 1 and isinstance(state.best, neuralode.training.BestRecord)
    out = tmp_path / "x.pt"
    state.save(out)
    again = RunState.load(out)
    assert again.format == 2 and again.config == state.config and again.rows == state.rows
    assert all(torch.equal(again.model[k], state.model[k]) for k in state.model)
    with pytest.raises(CheckpointError, match="format 3"):
        RunState.from_dict({**raw, "format": 3}, out)
    with pytest.raises(CheckpointError, match="'rows' entry is missing"):
        RunState.from_dict({k: v for k, v in raw.items() if k != "rows"}, out)


# ----------------------------------------------------------------------------- RunFolder


def test_a_folder_of_ones_own_files_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("my,own\n1,2\n")
    (out / "config.json").write_text('{"mine": 1}')
    (out / "summary.json").write_text('{"x": 1}')
    before = _digest(out)
    assert main(["-q", "train", "spiral", "--out", str(out), *FAST]) == 2
    assert "is not a neuralode run folder" in capsys.readouterr().err
    assert _digest(out) == before and not (out / ".lock").exists()
    (out / "config.json").unlink()  # no config at all: still a folder of the user's files
    before = _digest(out)
    assert main(["-q", "train", "spiral", "--out", str(out), *FAST]) == 2
    assert "holds metrics.csv, summary.json" in capsys.readouterr().err
    assert _digest(out) == before


def test_a_run_of_another_task_is_refused_untouched(tmp_path, capsys):
    run = tmp_path / "spiral"
    shutil.copytree(LEGACY, run)
    before = _digest(run)
    for resume in ([], ["--resume"]):
        assert main(["-q", "train", "cubic", "--out", str(run), *FAST, *resume]) == 2
        assert "holds a run of the task 'spiral', not 'cubic'" in capsys.readouterr().err
    assert _digest(run) == before


def test_a_lock_that_is_a_link_is_never_written_through(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("my data")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(precious)
    assert main(["-q", "train", "spiral", "--out", str(out), *FAST]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert precious.read_text() == "my data"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--method", "rk4"], "an explicit adaptive method: adaptive_heun, bosh3, dopri5"),
        (["--method", "kvaerno5"], "Newton iteration couples the batch"),
        (["--backend", "torchdiffeq"], "needs the native engine"),
    ],
)
def test_a_failed_start_says_what_the_task_takes_and_leaves_nothing(tmp_path, capsys, extra, words):
    out = tmp_path / "new"
    assert main(["-q", "train", "timeseries", "--out", str(out), *FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and "batch_mode" not in err and "neural CDE" in err
    assert not out.exists()


def test_a_start_that_fails_after_creating_the_folder_removes_it(tmp_path, capsys):
    out = tmp_path / "new"
    # the window fits no training point: refused once the data is loaded, in a folder created
    assert main(["-q", "train", "spiral", "--out", str(out), *FAST, "--window", "900"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not out.exists()


def test_the_decision_to_resume_is_the_run_folder_s(tmp_path):
    """RunFolder.start: a new run, a continuation, a restart of a run stopped in its first
    epoch, or a refusal; nothing else decides."""
    from neuralode.tasks import get_task, make_options

    task = get_task("spiral")(make_options("spiral", epochs=1, iters=2))
    folder = RunFolder(tmp_path / "r")
    with pytest.raises(CheckpointError, match="no run to resume"):
        folder.start(task, resume=True)
    assert folder.start(task, resume=False) is None
    folder.write_config(task)
    folder.close()
    with pytest.raises(CheckpointError, match="stopped in its first epoch"):
        RunFolder(tmp_path / "r").start(task, resume=False)
    again = RunFolder(tmp_path / "r")
    assert again.start(task, resume=True) is None  # restarted from its beginning
    again.close()
    with pytest.raises(TypeError, match="must be a path"):
        RunFolder(None)


def test_resume_auto_starts_a_new_run_and_continues_an_existing_one(tmp_path):
    """What the experiments use: an interrupted configuration continues, a new one starts."""
    out = tmp_path / "r"
    opts = dict(iters=2, schedule="none", threads=1, progress=False)
    assert neuralode.train("spiral", out, resume="auto", epochs=1, **opts)["epochs"] == 1
    assert neuralode.train("spiral", out, resume="auto", epochs=2, **opts)["epochs"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]  # continued, not restarted
    with pytest.raises(InvalidArgumentError, match="resume must be True, False or 'auto'"):
        neuralode.train("spiral", tmp_path / "s", resume="yes", epochs=1, **opts)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- callbacks


class Recorder(Callback):
    """Every hook call, in order (a logger of one's own)."""

    def __init__(self, calls: list, kill_at_step: int | None = None) -> None:
        self.calls, self.kill_at_step = calls, kill_at_step

    def on_checkpoint_load(self, trainer, state):
        self.calls.append(("checkpoint_load", state.epoch))

    def on_train_start(self, trainer):
        self.calls.append(("train_start", trainer.state.epoch))

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_batch_end(self, batch):
        self.calls.append(("batch_end", batch.global_step))
        if batch.global_step == self.kill_at_step:
            raise KeyboardInterrupt

    def on_validation_start(self, trainer, epoch):
        self.calls.append(("validation_start", epoch))

    def on_validation_end(self, trainer, epoch, metrics):
        self.calls.append(("validation_end", epoch, "val_mse" in metrics))

    def on_epoch_end(self, epoch, row, out):
        self.calls.append(("epoch_end", epoch))

    def on_checkpoint_save(self, trainer, state):
        self.calls.append(("checkpoint_save", state.epoch))

    def on_train_end(self, trainer, summary):
        self.calls.append(("train_end", summary["epochs"]))


def test_a_callback_of_one_s_own_sees_every_hook_across_a_kill_and_a_resume(tmp_path):
    out = tmp_path / "run"
    opts = dict(epochs=2, iters=2, schedule="none", threads=1, progress=False)
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        neuralode.train("spiral", out, callbacks=[Recorder(calls, kill_at_step=3)], **opts)
    assert calls == [
        ("train_start", 0),
        ("epoch_start", 1), ("batch_end", 1), ("batch_end", 2),
        ("validation_start", 1), ("validation_end", 1, True),
        ("checkpoint_save", 1), ("epoch_end", 1),
        ("epoch_start", 2), ("batch_end", 3),
    ]  # fmt: skip
    calls.clear()
    summary = neuralode.resume(out, callbacks=[Recorder(calls)], progress=False)
    assert calls == [
        ("checkpoint_load", 1), ("train_start", 1),
        ("epoch_start", 2), ("batch_end", 3), ("batch_end", 4),
        ("validation_start", 2), ("validation_end", 2, True),
        ("checkpoint_save", 2), ("epoch_end", 2),
        ("train_end", 2),
    ]  # fmt: skip
    assert summary["epochs"] == 2


def test_tensorboard_is_one_more_callback(tmp_path):
    if not os.environ.get("CI"):  # CI installs the extra: there a missing package fails
        pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    out = tmp_path / "run"
    assert main(["-q", "train", "spiral", "--out", str(out), *FAST, "--tensorboard"]) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "epoch/val_mse" in acc.Tags()["scalars"] and "batch/loss" in acc.Tags()["scalars"]


def test_callbacks_must_be_callbacks(tmp_path):
    with pytest.raises(InvalidArgumentError, match="Callback objects"):
        neuralode.train("spiral", tmp_path / "r", callbacks=[print], epochs=1)


# ----------------------------------------------------------------------------- options


def test_tasks_declare_only_the_options_that_differ():
    """A task's options change the common defaults through with_defaults, which keeps each
    option's checks, choices and help: no task re-declares a common option."""
    import dataclasses

    from neuralode.tasks import TrainOptions, get_task, with_defaults

    common = {f.name for f in dataclasses.fields(TrainOptions)}
    for name in neuralode.list_tasks():
        options = get_task(name).Options
        for klass in options.__mro__:
            own = set(getattr(klass, "__annotations__", {}))
            if (
                klass.__module__.startswith("neuralode.tasks.")
                and klass.__name__ == options.__name__
            ):
                assert not own & common, (name, own & common)
    Derived = with_defaults(TrainOptions, epochs=7)
    field = {f.name: f for f in dataclasses.fields(Derived)}["epochs"]
    assert field.default == 7 and field.metadata["check"] == "positive"
    with pytest.raises(InvalidArgumentError, match="epochs must be a positive integer"):
        Derived(epochs=0).validate()
    with pytest.raises(InvalidArgumentError, match="has no options"):
        with_defaults(TrainOptions, epoch=3)


# ----------------------------------------------------------------------------- layering

PACKAGE = ROOT / "src" / "neuralode"


def _imports() -> dict[str, set[tuple[str, str]]]:
    """For each module of the package: the (module, name) pairs it imports from the package."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        pairs = found.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                for alias in node.names:
                    pairs.add((target, alias.name))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neuralode"):
                for alias in node.names:
                    pairs.add((node.module, alias.name))
    return found


def _unit(module: str) -> str:
    """The package unit a module belongs to: ``neuralode.solvers``, ``neuralode.blocks``..."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_cycles_between_packages_and_no_private_names_across_them():
    imports = _imports()
    graph: dict[str, set[str]] = {}
    private = []
    for module, pairs in imports.items():
        for target, name in pairs:
            src, dst = _unit(module), _unit(target)
            if dst == "neuralode" or src == dst:
                continue
            graph.setdefault(src, set()).add(dst)
            hidden = [p for p in target.split(".")[1:] if p.startswith("_")]
            if hidden or (name.startswith("_") and name != "__version__"):
                private.append(f"{module} imports {target}.{name}")
    assert not private, private

    def reach(a: str, b: str, seen: set[str]) -> bool:
        for nxt in graph.get(a, ()):
            if nxt == b or (nxt not in seen and reach(nxt, b, seen | {nxt})):
                return True
        return False

    cycles = sorted(
        f"{a} -> {b} -> ... -> {a}" for a in graph for b in graph[a] if reach(b, a, {b})
    )
    assert not cycles, cycles


def test_every_task_s_test_metrics_on_two_ranks_equal_one_process_s(data_dir):
    """One evaluation loop for every task, reduced over the ranks: the timeseries task's own
    copy reported rank 0's share alone under torchrun. The ranks get unequal shares (rank 1
    none of the trajectories' one forecast)."""
    import subprocess
    import sys

    script = [str(ROOT / "tests" / "scripts" / "evaluate_every_task.py"), str(data_dir)]
    one = subprocess.run([sys.executable, *script], capture_output=True, text=True, timeout=300)
    two = _torchrun(script)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    single, ranks = json.loads(one.stdout.splitlines()[-1]), json.loads(two.stdout.splitlines()[-1])
    assert sorted(single) == sorted(neuralode.tasks.TASKS.names())
    for task, metrics in single.items():
        metrics.pop("seconds", None)  # (wall time)
        assert metrics and metrics.get("samples", 1) > 0, task
        assert {k: v for k, v in ranks[task].items() if k != "seconds"} == pytest.approx(
            metrics, rel=1e-9
        ), task


def test_the_epoch_s_length_is_known_when_it_starts(tmp_path):
    """The progress bar's total is read at on_epoch_start: it was the previous epoch's (so the
    first epoch's bar had none)."""

    class Totals(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_start(self, trainer, epoch):
            self.seen.append(trainer.batches_per_epoch)

        def on_batch_end(self, batch):
            self.seen.append(batch.step)

    cb = Totals()
    neuralode.train("spiral", tmp_path / "r", epochs=2, iters=3, progress=False, callbacks=[cb])
    assert cb.seen == [3, 1, 2, 3, 3, 1, 2, 3]
