"""Tasks as plug-ins: a toy task added in a few lines trains, evaluates, diagnoses and resumes
through the generic loop, the command line and the Python API without an edit to either; the
loop's own behaviours (best checkpoint, explosion warnings, callbacks) on it."""

import csv
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import neuralode
from neuralode.cli import main
from neuralode.errors import InvalidArgumentError
from neuralode.tasks import ModelRegistry, Step, Task, TrainOptions, option, register_task
from neuralode.tasks import base as tasks_base
from neuralode.training import Callback
from neuralode.training.callbacks import explosion_warnings

RATE = 0.5  # the toy data: y = x·exp(RATE), what dh/dt = a·h over [0, 1] reaches at a = RATE

# ------------------------------------------------------------------ the toy task, in full

TOY_MODELS = ModelRegistry()


class Rate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, t, h):
        return self.a * h


@TOY_MODELS.register("linear-ode", "dh/dt = a·h, one weight")
def _linear_ode(solver):
    return neuralode.NeuralODEBlock(Rate(), **solver)


@dataclasses.dataclass
class ToyOptions(TrainOptions):
    samples: int = option(256, "training samples", check="positive", group="data")


class ToyTask(Task):
    name = "toy"
    description = "fit dh/dt = a·h to y = x·exp(0.5)"
    Options = ToyOptions
    models = TOY_MODELS

    def load_data(self, progress=False):
        x = torch.randn(self.options.samples, 1, generator=torch.Generator().manual_seed(1))
        return x, x * math.exp(RATE)

    def batches_per_epoch(self, data, world):
        return len(data[0]) // self.options.batch_size

    def train_batches(self, data, generator, rank, world):
        order = torch.randperm(len(data[0]), generator=generator)
        for i in range(0, len(order) - self.options.batch_size + 1, self.options.batch_size):
            idx = order[i : i + self.options.batch_size][rank::world]
            yield data[0][idx], data[1][idx]

    def training_step(self, model, batch, device):
        x, y = batch[0].to(device), batch[1].to(device)
        return Step(nn.functional.mse_loss(model(x), y), len(x))

    def evaluate(self, model, data, split, device, dist=None):
        with torch.no_grad():
            return {"loss": float(nn.functional.mse_loss(model(data[0]), data[1]))}

    def diagnosis_batch(self, data, size):
        return data[0][:size], data[1][:size]


# ------------------------------------------------------------------ fixtures and helpers

FAST = {"batch_size": 32, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "method": "rk4",
        "progress": False}  # fmt: skip


@pytest.fixture
def toy():
    register_task(ToyTask)
    yield ToyTask
    tasks_base.TASKS.unregister("toy")


def _rate(run) -> float:
    model, _ = neuralode.load_run(run)
    return float(model.func.a.detach())


class InterruptAfter(Callback):
    """Ctrl-C after ``n`` batches (an interruption at an arbitrary moment inside an epoch)."""

    def __init__(self, n):
        self.n = n

    def on_batch_end(self, batch):
        if batch.global_step == self.n:
            raise KeyboardInterrupt


class SetWeightsAfterEpoch(Callback):
    """Set every weight to ``value`` after epoch ``epoch``: the dynamics blow up."""

    def __init__(self, epoch, value):
        self.epoch, self.value = epoch, value

    def on_epoch_end(self, epoch, row, out):
        if epoch == self.epoch:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(self.value)

    def on_batch_end(self, batch):
        self.model = batch.model


# ------------------------------------------------------------------ tests


def test_a_toy_task_trains_through_the_python_api(toy, tmp_path):
    summary = neuralode.train("toy", tmp_path / "run", epochs=3, **FAST)
    # the analytic answer: y = x·exp(a) is reached by dh/dt = a·h at a = 0.5
    assert _rate(tmp_path / "run") == pytest.approx(RATE, abs=1e-3)
    assert summary["task"] == "toy" and summary["model"] == "linear-ode"
    assert summary["test_loss"] < 1e-3
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"train_loss", "val_loss", "test_loss", "nfe_forward", "nfe_backward"} <= set(rows[0])
    assert (tmp_path / "run" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    # the best checkpoint, beside the last, is the epoch of the lowest validation loss
    val = [float(r["val_loss"]) for r in rows]
    best = summary["best"]
    assert best["epoch"] == 1 + val.index(min(val)) and best["metric"] == "val_loss"
    saved = neuralode.training.load_checkpoint(tmp_path / "run" / "best.pt")
    assert saved["epoch"] == best["epoch"] and saved["config"]["task"] == "toy"
    evaluation = neuralode.evaluate(tmp_path / "run", best=True)  # rows round to 6 places
    assert evaluation["loss"] == pytest.approx(best["test_loss"], abs=1e-6)


def test_the_command_line_is_derived_from_the_toy_task(toy, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "toy", "--help"])
    text = capsys.readouterr().out
    assert "--samples N" in text and "training samples (default: 256)" in text
    assert "linear-ode" in text and "dh/dt = a·h" in text  # its models
    out = tmp_path / "cli"
    args = ["-q", "train", "toy", "--epochs", "2", "--samples", "64", "--batch-size", "16",
            "--method", "rk4", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["samples"] == 64
    assert main(["-q", "evaluate", str(out)]) == 0
    assert main(["diagnose", str(out), "--batch-size", "8"]) == 0
    assert "forward pass:      ok" in capsys.readouterr().out


def test_an_interrupted_toy_run_resumes_bit_identically(toy, tmp_path, monkeypatch):
    full = neuralode.train("toy", tmp_path / "full", epochs=3, **FAST)
    with pytest.raises(KeyboardInterrupt):
        neuralode.train("toy", tmp_path / "cut", epochs=3, callbacks=[InterruptAfter(13)], **FAST)
    assert neuralode.training.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.chdir(tmp_path)  # from another working directory, by a relative path
    resumed = neuralode.resume("cut", progress=False)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert resumed["best"] == full["best"]


def test_an_exploding_run_is_warned_about(toy, tmp_path, caplog):
    """A loss of 3e22 and a test NFE of 240,602 exited 0 without a word."""
    summary = neuralode.train(
        "toy", tmp_path / "run", epochs=2, callbacks=[SetWeightsAfterEpoch(1, 6.0)],
        **{**FAST, "lr": 1e-6, "method": "dopri5"},
    )  # fmt: skip
    assert summary["warnings"], summary
    assert any("neuralode diagnose" in w for w in summary["warnings"])
    assert "training loss rose" in caplog.text


def test_explosion_thresholds():
    calm = [{"train_loss": 1.0, "nfe_forward": 26.0}, {"train_loss": 0.5, "nfe_forward": 32.0}]
    assert explosion_warnings(calm) == []
    assert "rose to 3e+22" in explosion_warnings([*calm, {"train_loss": 3e22}])[0]
    nfe = explosion_warnings([*calm, {"train_loss": 0.4, "nfe_forward": 2000.0}])
    assert len(nfe) == 1 and "77×" in nfe[0]
    assert explosion_warnings([{"train_loss": 0.1, "test_nfe_forward": 240602}])  # one epoch


def test_a_model_option_the_model_ignores_is_an_error(toy):
    with pytest.raises(InvalidArgumentError, match="option num_blocks does not apply"):
        neuralode.tasks.make_options("mnist", model="ode", num_blocks=3)
    with pytest.raises(InvalidArgumentError, match="unknown configuration keys"):
        neuralode.tasks.make_options("toy", hidden=3)
    with pytest.raises(InvalidArgumentError, match="configuration is for task 'mnist'"):
        neuralode.tasks.make_options("toy", config={"task": "mnist"})


def test_registering_something_that_is_not_a_task_is_an_error():
    with pytest.raises(InvalidArgumentError, match="expects a Task subclass"):
        register_task(object)

    class Half(Task):  # a task without its training step and evaluation
        name, models = "half", TOY_MODELS

        def load_data(self, progress=False): ...
        def batches_per_epoch(self, data, world): ...
        def train_batches(self, data, generator, rank, world): ...
        def diagnosis_batch(self, data, size): ...

    with pytest.raises(InvalidArgumentError, match="must implement: evaluate, training_step"):
        register_task(Half)
    assert "half" not in neuralode.list_tasks()
