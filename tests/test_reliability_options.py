"""Every option of every task, from the command line and from a config file (issue 24): a value
of the wrong type, a non-finite number or an impossible size is a one-line message naming the
option and the fix, before a file is written — never a traceback or a silent wrong run."""

import dataclasses
import json
import math
import typing

import pytest

import neuralode
from neuralode.cli import main
from neuralode.errors import InvalidArgumentError, InvalidTypeError
from neuralode.tasks import TASKS, get_task, make_options
from neuralode.tasks.base import option_type

TASK_NAMES = TASKS.names()


def _fields(task: str, kind: type) -> list[str]:
    options = get_task(task).Options
    return [f.name for f in dataclasses.fields(options) if option_type(options, f.name) is kind]


def _optional(task: str, name: str) -> bool:
    hint = typing.get_type_hints(get_task(task).Options)[name]
    return type(None) in typing.get_args(hint)


def _refused(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.mark.parametrize("task", TASK_NAMES)
def test_lr_nan_is_a_message_for_every_task_and_creates_nothing(task, tmp_path, capsys):
    out = tmp_path / "run"
    _refused(["-q", "train", task, "--lr", "nan", "--out", str(out)], capsys,
             "lr must be a finite number, got nan")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_float_option_refuses_nan_and_infinity(task):
    names = _fields(task, float)
    assert {"lr", "rtol", "atol", "kinetic", "jacobian"} <= set(names)
    for name in names:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(InvalidArgumentError, match=f"{name} must be a finite number"):
                make_options(task, **{name: bad})


@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_config_file_s_types_are_checked_for_every_option(task, tmp_path):
    """A JSON config with "epochs": "2", 2.5 or null trained before; the command line's types
    were checked, the file's were not."""
    for name in _fields(task, int) + _fields(task, float):
        bad = [f"{name}-as-text", "2"]
        if name in _fields(task, int):
            bad.append(2.5)
        if not _optional(task, name):
            bad.append(None)
        for value in bad:
            path = tmp_path / "c.json"
            path.write_text(json.dumps({name: value}))
            with pytest.raises(InvalidArgumentError, match=f"option {name} must be"):
                make_options(task, str(path))


@pytest.mark.parametrize("value", ['"2"', "2.5", "null"])
def test_a_config_s_epochs_of_the_wrong_type_is_refused_on_the_command_line(
    tmp_path, capsys, value
):
    config = tmp_path / "c.json"
    config.write_text(f'{{"epochs": {value}}}')
    out = tmp_path / "run"
    _refused(["-q", "train", "spiral", "--config", str(config), "--out", str(out)], capsys,
             "option epochs must be int")  # fmt: skip
    assert not out.exists()


def test_a_binary_config_file_is_a_message(tmp_path, capsys):
    config = tmp_path / "x.json"
    config.write_bytes(bytes(range(256)))
    _refused(["-q", "train", "spiral", "--config", str(config), "--out", str(tmp_path / "r")],
             capsys, "is not a text file", "JSON or TOML")  # fmt: skip


@pytest.mark.parametrize("task", ["spiral", "cubic"])
def test_a_batch_larger_than_the_windows_is_refused(task, tmp_path, capsys):
    """--batch-size 100000 trained silently on the 750 windows there are."""
    _refused(["-q", "train", task, "--batch-size", "100000", "--out", str(tmp_path / "r")],
             capsys, "larger than the 750 training windows", "at most 750")  # fmt: skip


@pytest.mark.parametrize("series", ["1", "2"])
def test_too_few_series_is_a_message(tmp_path, capsys, series):
    """--series 1 was ``ValueError: max() arg is an empty sequence``."""
    _refused(["-q", "train", "timeseries", "--series", series, "--out", str(tmp_path / "r")],
             capsys, "series must be at least 3")  # fmt: skip


@pytest.mark.parametrize("out", [None, 5, ["runs/x"]])
def test_train_without_a_folder_path_is_a_type_error(out):
    with pytest.raises(InvalidTypeError, match="run folder must be a path"):
        neuralode.train("spiral", out=out, epochs=1)


def test_a_relative_data_dir_is_recorded_resolved_and_its_source_logged(
    data_dir, tmp_path, monkeypatch, caplog
):
    """A config whose data_dir reaches the data by a relative detour: config.json records the
    resolved folder, and the log says where the files came from."""
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    detour = f"{'../' * len(work.parts[1:])}{str(data_dir.resolve()).lstrip('/')}/mnist/.."
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data_dir": detour}))
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="neuralode"):
        rc = main(["-q", "train", "mnist", "--config", str(config), "--out", str(out),
                   "--epochs", "1", "--max-train-batches", "1", "--train-subset", "100",
                   "--test-subset", "100", "--batch-size", "50"])  # fmt: skip
    assert rc == 0
    stored = json.loads((out / "config.json").read_text())["data_dir"]
    assert stored == str(data_dir.resolve())
    assert f"MNIST from {data_dir.resolve() / 'mnist'}" in caplog.text
