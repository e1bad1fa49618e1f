"""Long tests, left out of the default run: ``pytest -m slow``."""

import json

import pytest

from neuralode.cli import main


@pytest.mark.slow
def test_one_full_epoch_of_mnist_reaches_98_percent(data_dir, tmp_path):
    out = tmp_path / "full"
    assert (
        main(
            [
                "-q",
                "train",
                "mnist",
                "--data-dir",
                str(data_dir),
                "--epochs",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.975
    assert summary["nfe_forward"] >= 8
