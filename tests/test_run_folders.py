"""Run folders a user can trust, for every task: each case here was tried as a new user would
and failed before tasks were plug-ins (a traceback, a download, a folder left behind, an
unreadable old run)."""

import json
import re
import shutil

import pytest

import neuralode
from neuralode.cli import main
from neuralode.errors import (
    CheckpointError,
    DataError,
    InvalidArgumentError,
    NeuralODEError,
    SolverError,
    TrainingDiverged,
)
from neuralode.training import load_checkpoint, save_checkpoint
from neuralode.training.run_folder import upgrade_config
from test_cli import SMALL, _torchrun, kill_and_resume, run_cli

TRAJECTORY = ["--iters", "10", "--epochs", "3", "--schedule", "none", "--no-progress"]


@pytest.mark.parametrize("task", ["spiral", "cubic"])
def test_a_killed_trajectory_run_resumes_bit_identically_from_elsewhere(task, tmp_path):
    kill_and_resume(tmp_path, ["train", task, *TRAJECTORY], kill_after=15)  # in epoch 2


@pytest.mark.parametrize(
    ("task", "options", "kill_after"),
    [("spiral", TRAJECTORY, 4),
     pytest.param("density", ["--iters", "4", "--epochs", "2", "--val-size", "100",
                              "--test-size", "100", "--hidden", "8", "--batch-size", "32",
                              "--threads", "1", "--no-progress"], 2, marks=pytest.mark.slow),
     pytest.param("timeseries", ["--series", "40", "--epochs", "2", "--batch-size", "20",
                                 "--hidden", "8", "--latent", "4", "--threads", "1",
                                 "--no-progress"], 1, marks=pytest.mark.slow),
     ("mnist", ["--epochs", "2", *SMALL], 2)],
)  # fmt: skip
def test_a_run_killed_in_its_first_epoch_resumes_from_its_beginning(
    task, options, kill_after, tmp_path, data_dir
):
    """Killed before any epoch ended there is no checkpoint, only config.json: `neuralode
    resume` (which the interrupted CLI names) starts the same run again and ends with the
    weights of a run never interrupted. (The path is the generic loop's; the density and
    timeseries cases are marked slow to keep the default run near 10 minutes.)"""
    extra = ["--data-dir", str(data_dir)] if task == "mnist" else []
    kill_and_resume(tmp_path, ["train", task, *options, *extra], kill_after, in_epoch=1)


def test_resuming_a_run_killed_in_its_first_epoch_checks_its_options(tmp_path):
    out = tmp_path / "cut"
    killed = run_cli(["train", "spiral", *TRAJECTORY, "--out", str(out)], fault="kill=3")
    assert killed.returncode == -9 and not (out / "checkpoint.pt").exists()
    res = run_cli(["train", "spiral", *TRAJECTORY, "--lr", "0.5", "--out", str(out), "--resume"])
    assert res.returncode != 0 and "different configuration" in res.stderr
    assert "lr: run has" in res.stderr and "Traceback" not in res.stderr


def test_a_nan_in_a_trajectory_run_stops_with_a_diagnosis(tmp_path):
    out = tmp_path / "nan"
    res = run_cli(["train", "spiral", *TRAJECTORY, "--out", str(out)], fault="nan=15")
    assert res.returncode == 3 and "training stopped" in res.stderr
    assert "Traceback" not in res.stderr
    assert "NaN" in (out / "diagnosis.txt").read_text()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_a_spiral_run_trains_identically_on_two_ranks(tmp_path):
    args = [
        "-m",
        "neuralode",
        "train",
        "spiral",
        "--iters",
        "5",
        "--epochs",
        "2",
        "--method",
        "rk4",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "d"),
    ]
    res = _torchrun(args)  # fmt: skip
    assert res.returncode == 0, res.stderr
    digests = dict(re.findall(r"final weights sha256 \(rank (\d)\): (\w+)", res.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]


def test_data_dir_is_stored_absolute_and_evaluates_from_anywhere(data_dir, tmp_path, monkeypatch):
    """config.json stored data_dir relative to where the command ran: evaluate from another
    directory then tried to download."""
    monkeypatch.chdir(data_dir.parent)
    out = tmp_path / "run"
    rc = main(["-q", "train", "mnist", "--data-dir", data_dir.name, "--out", str(out),
               "--max-train-batches", "2", *SMALL])  # fmt: skip
    assert rc == 0
    stored = json.loads((out / "config.json").read_text())["data_dir"]
    assert stored == str(data_dir.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "evaluate", str(out)]) == 0


def test_a_failed_start_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """No data (offline): the run folder and an empty cache folder were left behind."""
    import neuralode.data

    monkeypatch.setattr(neuralode.data.time, "sleep", lambda s: None)  # between retries
    empty = tmp_path / "nodata"
    empty.mkdir()
    out = tmp_path / "run"
    rc = main(["-q", "train", "mnist", "--data-dir", str(empty), "--out", str(out), *SMALL])
    assert rc == 2
    err = capsys.readouterr().err
    assert "could not download" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert list(empty.iterdir()) == []  # no empty nodata/mnist either


def test_data_dir_pointing_at_the_mnist_folder_itself_is_understood(data_dir, tmp_path):
    """--data-dir DATA/mnist created DATA/mnist/mnist and tried to download into it."""
    mnist = tmp_path / "mnist"
    shutil.copytree(data_dir / "mnist", mnist)
    out = tmp_path / "run"
    rc = main(["-q", "train", "mnist", "--data-dir", str(mnist), "--out", str(out),
               "--max-train-batches", "2", *SMALL])  # fmt: skip
    assert rc == 0
    assert not (mnist / "mnist").exists()


def test_a_run_written_before_tasks_existed_still_evaluates_and_resumes(data_dir, tmp_path):
    """neuralode 0.1 stored one flat configuration with a dataset key: upgrade it on read."""
    out = tmp_path / "old"
    args = ["-q", "train", "mnist", "--data-dir", str(data_dir), "--out", str(out),
            "--max-train-batches", "2", "--val-fraction", "0", *SMALL]  # fmt: skip
    assert main(args) == 0
    old = {"dataset": "mnist", "spiral_window": 10, "spiral_noise": None, "spiral_iters": 100}
    new = json.loads((out / "config.json").read_text())
    old.update({k: v for k, v in new.items() if k not in ("task", "val_fraction", "t1")})
    assert upgrade_config(old) == new  # t1 added since: its default
    (out / "config.json").write_text(json.dumps(old))
    saved = load_checkpoint(out / "checkpoint.pt")
    saved["config"] = old
    save_checkpoint(out / "checkpoint.pt", saved)
    assert main(["-q", "evaluate", str(out)]) == 0
    assert main(["-q", "resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"neuralode {neuralode.__version__}"
    for command, words in (
        ("evaluate", ["--best", "best validation epoch", "--batch-size N", "--data-dir DIR"]),
        ("diagnose", ["--best", "(default: 64)", "RUN_DIR"]),
        ("resume", ["--epochs N", "--device"]),
        ("train", ["mnist", "spiral", "cubic"]),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        for w in words:
            assert w in text, (command, w)
    with pytest.raises(SystemExit):
        main(["train", "mnist", "--help"])
    text = capsys.readouterr().out
    assert "--val-fraction X" in text and "(default: 0.1)" in text and "--rtol X" in text
    assert "resnet-strided" in text  # the models, with what they are


def test_one_exception_hierarchy_with_exit_codes(monkeypatch, capsys):
    for cls in (InvalidArgumentError, DataError, CheckpointError, TrainingDiverged, SolverError):
        assert issubclass(cls, NeuralODEError)
    assert issubclass(InvalidArgumentError, ValueError)  # `except ValueError` keeps working
    import neuralode.training as training

    for err, code in ((SolverError("the solve failed"), 4), (DataError("no data"), 2)):
        monkeypatch.setattr(
            training, "evaluate_run", lambda *a, err=err: (_ for _ in ()).throw(err)
        )
        assert main(["-q", "evaluate", "anywhere"]) == code
        assert capsys.readouterr().err.strip().endswith(str(err))
    # anything else is a bug: its traceback, not a message
    monkeypatch.setattr(training, "evaluate_run", lambda *a: [][1])
    with pytest.raises(IndexError):
        main(["-q", "evaluate", "anywhere"])


def test_an_old_configuration_takes_the_values_its_run_was_made_with_not_new_defaults():
    from neuralode.training.run_folder import upgrade_config

    # options added with another default than the behaviour before them
    assert upgrade_config({"task": "timeseries", "model": "ncde"})["observed"] == "fraction"
    assert upgrade_config({"task": "timeseries", "model": "odernn"})["observed"] == "none"
    assert upgrade_config({"task": "density"})["regularizer_scale"] == "sum"
    assert upgrade_config({"task": "density", "dynamics": "fourier"})["dynamics"] == "fourier"
    # an option the run stored keeps its value; a new option without history takes its default
    assert upgrade_config({"task": "density", "dataset": "mnist"})["dynamics"] == "fourier"
