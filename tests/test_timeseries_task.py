"""The time-series task end to end, for a forecasting dataset (generated spirals, latent ODE
and its GRU-Δt twin) and a classification one (UEA JapaneseVowels from aeon's wheel, every
classifier): train (pictures), evaluate, diagnose, and resume after a kill from another working
directory to the same weights as an uninterrupted run; data-parallel training on two ranks.
The baselines' runs, the Poisson latent ODE, the linear CDE and the latent ODE on two ranks are
marked slow (``pytest -m slow`` runs them), to keep the default run near 10 minutes."""

import csv
import json
import math
import re

import pytest
import torch

import neuralode
from neuralode.cli import main
from neuralode.errors import InvalidArgumentError
from neuralode.tasks import make_options
from test_cli import _torchrun, kill_and_resume, run_cli

SPIRALS = ["train", "timeseries", "--series", "60", "--epochs", "2", "--batch-size", "20",
           "--drop", "0.3", "--hidden", "8", "--threads", "1", "--no-progress"]  # fmt: skip
VOWELS = ["train", "timeseries", "--dataset", "japanese_vowels", "--drop", "0.5", "--epochs",
          "2", "--batch-size", "60", "--hidden", "8", "--lr", "3e-3", "--threads", "1",
          "--no-progress"]  # fmt: skip


def _diagnose_and_evaluate(run, capsys, metric):
    summary = json.loads((run / "summary.json").read_text())
    assert main(["-q", "evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev[metric] == pytest.approx(summary[f"test_{metric}"], rel=1e-5, abs=1e-6)
    capsys.readouterr()
    code = main(["-q", "diagnose", str(run)])
    text = capsys.readouterr().out
    assert "forward pass:      ok" in text and "gradient norm:     total" in text
    # exit 1 with what the report found (e.g. GRU-D's input decay has no gradient when whole
    # points are dropped: no channel is ever missing alone; the linear CDE restarts its steps
    # at every knot, an expensive solve)
    assert code == (0 if "warnings:          none" in text else 1)
    return summary


@pytest.mark.parametrize(
    ("model", "extra"),
    [("latent_ode", ["--latent", "4", "--samples", "3"]),
     pytest.param("latent_ode", ["--latent", "4", "--encoder", "rnn", "--poisson"],
                  marks=pytest.mark.slow),
     pytest.param("gru_dt", [], marks=pytest.mark.slow)],
)  # fmt: skip
def test_forecasting_trains_evaluates_diagnoses_and_resumes(tmp_path, capsys, model, extra):
    common = [*SPIRALS, "--model", model, *extra]
    summary = kill_and_resume(tmp_path, common, kill_after=4)  # 3 batches per epoch
    run = tmp_path / "full"
    for key in ("test_interp_mse", "test_extrap_mse", "test_nfe_forward", "test_seconds"):
        assert math.isfinite(summary[key])
    assert (summary["test_nfe_forward"] > 0) == (model == "latent_ode")
    assert "reconstruction.png" in summary["plots"]
    assert (run / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    _diagnose_and_evaluate(run, capsys, "extrap_mse")


@pytest.mark.parametrize(
    ("model", "extra"),
    [("ncde", ["--gradient", "adjoint"]),
     pytest.param("ncde", ["--interpolation", "linear"], marks=pytest.mark.slow),
     ("odernn", ["--split", "pooled"]), pytest.param("grud", [], marks=pytest.mark.slow),
     pytest.param("gru_dt", [], marks=pytest.mark.slow)],
)  # fmt: skip
def test_classification_trains_evaluates_diagnoses_and_resumes(tmp_path, capsys, model, extra):
    pytest.importorskip("aeon", reason="the timeseries extra is not installed")
    common = [*VOWELS, "--model", model, *extra]
    # UEA's split: 232 training series, 4 batches per epoch; pooled: 448, 8 batches
    kill_after = 10 if "pooled" in extra else 5  # in the second epoch
    summary = kill_and_resume(tmp_path, common, kill_after=kill_after)
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["best"]
    assert (summary["test_nfe_forward"] > 0) == (model in ("ncde", "odernn"))
    _diagnose_and_evaluate(tmp_path / "full", capsys, "accuracy")


def test_the_python_api_learns_the_periodic_series(tmp_path):
    result = neuralode.train(
        "timeseries", out=tmp_path / "p", progress=False, dataset="periodic", series=200,
        epochs=12, batch_size=20, hidden=16, latent=4, encoder="rnn", threads=1,
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "p" / "metrics.csv").read_text().splitlines()))
    first, last = rows[0], rows[-1]
    assert float(last["val_interp_mse"]) < 0.5 * float(first["val_interp_mse"])
    assert float(last["val_extrap_mse"]) < 0.85 * float(first["val_extrap_mse"])
    assert result["test_interp_mse"] < result["test_extrap_mse"]  # the seen half is easier


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"dataset": "spirals", "model": "ncde"}, "choose model from latent_ode, gru_dt"),
        ({"dataset": "japanese_vowels", "model": "latent_ode"}, "is classified"),
        ({"drop": 1.0}, "drop must be below 1"),
        ({"split": "pooled"}, "split='pooled' is for the UEA datasets (japanese_vowels"),
        ({"model": "gru_dt", "method": "rk4"}, "does not apply to model 'gru_dt'"),
        ({"interpolation": "linear"}, "does not apply to model 'latent_ode'"),
    ],
)
def test_bad_options_are_clear_errors(options, words):
    with pytest.raises(InvalidArgumentError, match=re.escape(words)):
        make_options("timeseries", **options)


def test_adjoint_for_per_sample_models_is_a_clear_error(tmp_path):
    res = run_cli([*SPIRALS, "--gradient", "adjoint", "--out", str(tmp_path / "a")])
    assert res.returncode != 0 and "needs direct gradients" in res.stderr


@pytest.mark.parametrize(
    "common",
    [
        [*VOWELS, "--model", "ncde"],
        pytest.param([*SPIRALS, "--latent", "4"], marks=pytest.mark.slow),
    ],
    ids=["ncde", "latent_ode"],
)
def test_data_parallel_training_keeps_the_ranks_identical(tmp_path, common):
    if "japanese_vowels" in common:
        pytest.importorskip("aeon", reason="the timeseries extra is not installed")
    args = ["-m", "neuralode", *common, "--epochs", "1", "--out", str(tmp_path / "d")]
    res = _torchrun(args)
    assert res.returncode == 0, res.stderr
    digests = dict(re.findall(r"final weights sha256 \(rank (\d)\): (\w+)", res.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]


def test_a_registered_classifier_is_accepted_by_name_for_the_classification_data():
    from torch import nn

    from neuralode.tasks.timeseries import MODELS

    @MODELS.register("mean_classifier_test", "a test classifier")
    def _mean(dataset: str) -> nn.Module:
        return nn.Linear(1, 2)

    try:
        options = make_options(
            "timeseries", {"dataset": "japanese_vowels", "model": "mean_classifier_test"}
        )
        assert options.model == "mean_classifier_test"
        with pytest.raises(InvalidArgumentError, match="choose model from latent_ode, gru_dt"):
            make_options("timeseries", {"dataset": "spirals", "model": "mean_classifier_test"})
    finally:
        MODELS.unregister("mean_classifier_test")
    with pytest.raises(InvalidArgumentError, match="mean_classifier_test"):
        make_options("timeseries", {"dataset": "japanese_vowels", "model": "mean_classifier_test"})


@pytest.mark.parametrize("dataset", ["japanese_vowels", "basic_motions"])
def test_the_pooled_split_is_70_15_15_of_every_series_once(dataset):
    pytest.importorskip("aeon", reason="the timeseries extra is not installed")
    from neuralode.series import load_uea
    from neuralode.tasks import get_task

    train, classes = load_uea(dataset, "train")
    test, _ = load_uea(dataset, "test", classes=classes)
    task = get_task("timeseries")(
        make_options("timeseries", dataset=dataset, model="ncde", split="pooled")
    )
    splits = task.load_data()
    total = len(train) + len(test)
    sizes = {name: len(part) for name, part in splits.items()}
    assert sizes["val"] == sizes["test"] == round(0.15 * total)
    assert sum(sizes.values()) == total

    def rows(s):  # a series by its label, length and standardised first point
        return {(int(s.labels[i]), int(s.lengths[i]), *s.values[i, 0].round(decimals=4).tolist())
                for i in range(len(s))}  # fmt: skip

    parts = [rows(splits[name]) for name in ("train", "val", "test")]
    assert sum(map(len, parts)) == total  # no series twice
    labels = torch.cat([splits[name].labels for name in ("train", "val", "test")])
    expected = torch.cat((train.labels, test.labels))
    assert torch.equal(labels.bincount(minlength=len(classes)), expected.bincount())
    # standardised by the training part's statistics: mean 0, variance 1 per channel there
    t = splits["train"]
    m = t.mask * t.valid().unsqueeze(-1)
    mean = (t.values * m).sum((0, 1)) / m.sum((0, 1))
    var = ((t.values - mean) ** 2 * m).sum((0, 1)) / m.sum((0, 1))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-4)
    # UEA's split keeps the archive's test series as the test split
    uea = get_task("timeseries")(make_options("timeseries", dataset=dataset, model="ncde"))
    uea = uea.load_data()
    assert len(uea["test"]) == len(test) and len(uea["train"]) + len(uea["val"]) == len(train)
