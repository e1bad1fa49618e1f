"""Run folders nothing can corrupt (issue 10): the lock on --out, checkpoint integrity, kills
and full disks at every write, clear messages instead of tracebacks, and no silent nonsense.
Each case was a lost run, a silent wrong result or a traceback before."""

import csv
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from neuralode import files as files_mod
from neuralode.cli import main
from neuralode.files import RunFolderBusy, RunLock
from neuralode.training import callbacks as callbacks_mod
from neuralode.training import load_checkpoint, save_checkpoint
from neuralode.training import run_folder as run_folder_mod
from test_cli import SMALL, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _train(data_dir, out, *extra):
    return main(
        ["-q", "train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL, *extra]
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-epoch MNIST run of the ODE model (copied for each test that alters it)."""
    from conftest import shared_data_dir

    data_dir = shared_data_dir()
    if not (data_dir / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("MNIST files not found")
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train(data_dir, out, "--epochs", "2", "--max-train-batches", "3") == 0
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _stderr_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------ the lock


def test_a_second_process_on_the_same_out_is_refused_and_told_who_holds_it(run, capsys):
    """Two trains 0.3 s apart into one folder both exited 0: one run was lost."""
    with RunLock(run):
        assert main(["-q", "resume", str(run), "--epochs", "2"]) == 2
    err = _stderr_line(capsys)
    assert "in use by another neuralode process" in err and f"pid {os.getpid()}" in err


def test_a_lock_held_by_another_process_blocks_it(tmp_path):
    out = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from neuralode.training.files import RunLock
            RunLock({str(out)!r}).acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunLock(out).acquire()
        holder.send_signal(signal.SIGKILL)  # killed: no cleanup at all
        holder.wait(timeout=30)
        with RunLock(out):  # the stale lock does not block: the OS released it
            pass
    finally:
        holder.kill()
        holder.wait()


def test_two_trains_started_together_one_runs_and_one_is_refused(data_dir, tmp_path):
    out = tmp_path / "race"
    args = ["train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL]
    args += ["--max-train-batches", "4"]
    procs = []
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "neuralode", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        time.sleep(0.3)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "in use by another neuralode process" in loser or "already holds a run" in loser
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


# ------------------------------------------------------------------------------ integrity


def test_a_flipped_block_inside_the_weights_is_detected(run, capsys):
    """Flipping 4 KB inside a weight tensor: evaluate exited 0 with loss 8.2e27."""
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = bytes(b ^ 0xFF for b in raw[middle : middle + 4096])
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    assert main(["-q", "evaluate", str(run)]) == 2
    assert "do not match the SHA-256" in _stderr_line(capsys)
    assert main(["-q", "resume", str(run), "--epochs", "2"]) == 2
    assert "do not match the SHA-256" in _stderr_line(capsys)


def test_an_altered_optimizer_state_is_not_resumed(run, capsys):
    saved = load_checkpoint(run / "checkpoint.pt")
    raw = (run / "checkpoint.pt").read_bytes()
    exp_avg = next(iter(saved["optimizer"]["state"].values()))["exp_avg"]
    needle = exp_avg.flatten()[:8].numpy().tobytes()
    at = raw.index(needle)
    raw = raw[:at] + bytes(len(needle)) + raw[at + len(needle) :]
    (run / "checkpoint.pt").write_bytes(raw)
    assert main(["-q", "resume", str(run), "--epochs", "2"]) == 2
    assert "corrupt" in _stderr_line(capsys)


def test_a_checkpoint_copied_from_another_run_is_refused(run, data_dir, tmp_path, capsys):
    """A ResNet run's checkpoint was evaluated as the run's ODE model."""
    other = tmp_path / "resnet"
    assert _train(data_dir, other, "--model", "resnet", "--max-train-batches", "2") == 0
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    assert main(["-q", "evaluate", str(run)]) == 2
    err = _stderr_line(capsys)
    assert "does not belong to the run" in err and "model" in err
    assert main(["-q", "diagnose", str(run)]) == 2


def test_weights_replaced_after_training_fail_the_summary_digest(run, capsys):
    saved = load_checkpoint(run / "checkpoint.pt")
    name = next(k for k, v in saved["model"].items() if v.is_floating_point())
    saved["model"][name] = saved["model"][name] + 0.01  # a valid file, other weights
    save_checkpoint(run / "checkpoint.pt", saved)
    assert main(["-q", "evaluate", str(run)]) == 2
    assert "weights_sha256 differs" in _stderr_line(capsys)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text\n", "corrupt or unreadable"),
        ([1, 2, 3], "holds a list"),
        ({}, "not a neuralode training checkpoint"),
        ({"model": {"w": torch.zeros(2)}}, "not a neuralode training checkpoint"),
    ],
    ids=["text", "list", "empty-dict", "partial"],
)
def test_malformed_checkpoints_are_messages(run, capsys, content, message):
    if isinstance(content, bytes):
        (run / "checkpoint.pt").write_bytes(content)
    else:
        save_checkpoint(run / "checkpoint.pt", content)
    assert main(["-q", "evaluate", str(run)]) == 2
    assert message in _stderr_line(capsys)


def test_a_forged_state_dict_is_a_message(run, capsys):
    saved = load_checkpoint(run / "checkpoint.pt")
    name = next(iter(saved["model"]))
    saved["model"][name] = torch.zeros(3, 3, 3)  # wrong shape
    save_checkpoint(run / "checkpoint.pt", saved)
    assert main(["-q", "evaluate", str(run)]) == 2
    assert "does not hold weights of this run's model" in _stderr_line(capsys)


def test_nan_weights_are_refused_by_evaluate(run, capsys):
    saved = load_checkpoint(run / "checkpoint.pt")
    name = next(k for k, v in saved["model"].items() if v.is_floating_point())
    saved["model"][name] = torch.full_like(saved["model"][name], float("nan"))
    save_checkpoint(run / "checkpoint.pt", saved)
    (run / "summary.json").unlink()
    assert main(["-q", "evaluate", str(run)]) == 2
    assert "NaN or infinite" in _stderr_line(capsys)


# ------------------------------------------------------------------------------ kills


def test_a_kill_between_checkpoint_and_metrics_loses_no_row(data_dir, tmp_path, monkeypatch):
    """summary.json said 4 epochs where metrics.csv held 3: the row is rebuilt on resume."""
    out = tmp_path / "run"
    real = callbacks_mod.write_csv
    calls = []

    def dies_on_second(path, rows):
        calls.append(len(rows))
        if len(calls) == 2:  # epoch 2's checkpoint is renamed; the process "dies" here
            raise KeyboardInterrupt
        real(path, rows)

    monkeypatch.setattr(callbacks_mod, "write_csv", dies_on_second)
    assert _train(data_dir, out, "--epochs", "2", "--max-train-batches", "2") == 130
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert len(list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))) == 1
    monkeypatch.setattr(callbacks_mod, "write_csv", real)
    assert main(["-q", "resume", str(out), "--epochs", "2"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_temporaries_of_a_killed_write_are_removed(run):
    stale = run / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = run / "notes.tmp"  # not ours: kept
    other.write_text("mine")
    assert main(["-q", "resume", str(run), "--epochs", "2"]) == 0
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_during_a_checkpoint_write_is_said_and_the_old_one_survives(
    run, capsys, monkeypatch, code
):
    before = (run / "checkpoint.pt").read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(files_mod.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    saved = load_checkpoint(run / "checkpoint.pt")
    with pytest.raises(OSError) as info:
        save_checkpoint(run / "checkpoint.pt", saved)
    words = "no space left on device" if code == errno.ENOSPC else "file-size limit"
    assert words in str(info.value) and "previous version is kept" in str(info.value)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_real_file_size_limit_on_resume_keeps_the_previous_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL]
    assert run_cli([*args, "--max-train-batches", "2"]).returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    limit = len(before) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run(
        [sys.executable, "-m", "neuralode", "resume", str(out),
         "--epochs", "2", "--no-progress"],
        capture_output=True, text=True, preexec_fn=small_files, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "file-size limit" in res.stderr and "Traceback" not in res.stderr
    assert "inline_container" not in res.stderr
    assert (out / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ messages


def test_out_that_is_a_file_or_under_a_file(data_dir, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert _train(data_dir, f) == 2
    assert "is a file; it must be a folder" in _stderr_line(capsys)
    assert _train(data_dir, f / "run") == 2
    assert "which is a file" in _stderr_line(capsys)


def test_data_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "data.bin"
    f.write_text("x")
    assert (
        main(["-q", "train", "mnist", "--data-dir", str(f), "--out", str(tmp_path / "r"), *SMALL])
        == 2
    )
    assert "is a file; it must be the folder that holds mnist/" in _stderr_line(capsys)


def test_a_read_only_out_is_a_one_line_message(data_dir, tmp_path, capsys, monkeypatch):
    # tests may run as root, for whom chmod does not protect a folder: the file system's
    # refusal is simulated where the run folder is written
    def refuse(path, writer):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files_mod, "atomic_write", refuse)
    monkeypatch.setattr(run_folder_mod, "write_json", lambda p, d: refuse(p, None))
    assert _train(data_dir, tmp_path / "ro") == 2
    err = _stderr_line(capsys)
    assert "Permission denied" in err and "config.json" in err and len(err.splitlines()) == 1


def test_evaluate_on_a_read_only_run_still_reports(run, capsys, monkeypatch, caplog):
    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files_mod, "write_json", refuse)
    assert main(["evaluate", str(run)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert "could not save evaluation.json" in caplog.text


def test_world_size_without_rank(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    assert _train(data_dir, tmp_path / "r") == 2
    assert "RANK is not" in _stderr_line(capsys)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "epochs = [1, 2\n", "is not valid TOML"),
        ("types.toml", "data_dir = 5\n", "option data_dir must be str or null, got 5"),
        ("types.json", '{"epochs": "two"}', "option epochs must be int"),
        ("list.json", "[1, 2]", "must hold a table of options"),
    ],
)
def test_bad_config_files_are_messages_that_name_them(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    rc = main(["-q", "train", "mnist", "--config", str(path), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = _stderr_line(capsys)
    assert message in err
    if "TOML" in message:
        assert str(path) in err


# ------------------------------------------------------------------------------ no nonsense


def test_a_batch_larger_than_the_training_set_is_refused(data_dir, tmp_path, capsys):
    """It trained zero steps and wrote loss 0.0 and accuracy 0.0 with exit 0."""
    out = tmp_path / "r"
    args = ["-q", "train", "mnist", "--data-dir", str(data_dir), "--out", str(out)]
    assert main([*args, "--train-subset", "100", "--batch-size", "128"]) == 2
    assert "larger than the 90 training images (after 10 held out" in _stderr_line(capsys)
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("command", ["evaluate", "diagnose"])
@pytest.mark.parametrize("size", ["-5", "0", "many"])
def test_non_positive_batch_sizes_are_refused(run, capsys, command, size):
    with pytest.raises(SystemExit) as info:
        main([command, str(run), "--batch-size", size])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    assert not (run / "evaluation.json").exists()


def test_extending_a_scheduled_run_is_refused_and_the_config_kept(data_dir, tmp_path, capsys):
    """--resume --epochs 5 on a 2-epoch cosine run kept the old schedule (the learning rate
    rose again) while config.json recorded 5 epochs."""
    out = tmp_path / "cos"
    assert _train(data_dir, out, "--epochs", "2", "--schedule", "cosine",
                  "--max-train-batches", "2") == 0  # fmt: skip
    assert main(["-q", "resume", str(out), "--epochs", "5"]) == 2
    err = _stderr_line(capsys)
    assert "cosine learning-rate schedule laid out for 2 epochs" in err
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert json.loads((out / "config.json").read_text())["schedule"] == "cosine"


def test_extending_an_unscheduled_run_trains_the_new_epochs(run, capsys):
    assert main(["-q", "resume", str(run), "--epochs", "3"]) == 0
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert main(["-q", "evaluate", str(run)]) == 0  # the new summary matches the new weights
