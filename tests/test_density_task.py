"""The density task end to end, for 2-D data and for MNIST: train (pictures), evaluate,
diagnose, and resume after a kill from another working directory to the same weights as an
uninterrupted run — with RNODE, STEER and the Hutchinson estimator on, so that the noise and
the end times are restored too."""

import json
import re
import subprocess
import sys

import pytest
import torch

import neuralode
from neuralode.cli import main
from neuralode.errors import InvalidArgumentError
from neuralode.toy_densities import entropy
from test_cli import _torchrun, kill_and_resume

TOY = ["--iters", "4", "--epochs", "2", "--val-size", "200", "--test-size", "300",
       "--hidden", "16", "--batch-size", "64", "--threads", "1", "--no-progress"]  # fmt: skip
RNODE = ["--divergence", "hutchinson", "--kinetic", "0.05", "--jacobian", "0.05",
         "--steer", "0.2"]  # fmt: skip
MNIST = ["--dataset", "mnist", "--train-subset", "40", "--test-subset", "16", "--hidden", "8",
         "--depth", "1", "--batch-size", "8", "--epochs", "2", "--rtol", "1e-3", "--atol",
         "1e-3", "--eval-rtol", "1e-3", "--eval-atol", "1e-3", "--threads", "1",
         "--no-progress"]  # fmt: skip


def test_a_2d_flow_trains_evaluates_diagnoses_and_resumes_after_a_kill(tmp_path, capsys):
    summary = kill_and_resume(
        tmp_path, ["train", "density", "--dataset", "moons", *TOY, *RNODE], kill_after=6
    )
    run = tmp_path / "full"
    assert {"density.png", "flow_snapshots.png", "flow.gif"} <= set(summary["plots"])
    from PIL import Image

    with Image.open(run / "flow.gif") as gif:
        assert gif.n_frames >= 25
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for col in ("test_nll", "test_entropy_gap", "nfe_forward", "nfe_backward", "epoch_seconds"):
        assert col in header
    # the gap is the NLL minus the entropy of moons
    gap = summary["test_nll"] - entropy("moons")[0]
    assert summary["test_entropy_gap"] == pytest.approx(gap, abs=1e-5)

    assert main(["-q", "evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["samples"] == 300 and ev["nll"] == pytest.approx(summary["test_nll"], rel=1e-6)
    assert main(["-q", "diagnose", str(run)]) == 0
    text = capsys.readouterr().out
    assert "forward pass:      ok" in text and "gradient norm:     total" in text


def test_an_mnist_flow_trains_evaluates_diagnoses_and_resumes_after_a_kill(
    data_dir, tmp_path, capsys
):
    common = ["train", "density", *MNIST, "--data-dir", str(data_dir)]
    summary = kill_and_resume(tmp_path, common, kill_after=6)  # 4 batches per epoch
    run = tmp_path / "full"
    assert summary["model"] == "multiscale" and "samples.png" in summary["plots"]
    assert 0 < summary["test_bpd"] < 40 and summary["nfe_forward"] > 0
    assert main(["-q", "evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["samples"] == 16 and ev["bpd"] == pytest.approx(summary["test_bpd"], rel=1e-6)
    assert main(["-q", "diagnose", str(run)]) == 0
    text = capsys.readouterr().out
    assert "forward pass:      ok" in text and "gradient norm:     total" in text


def test_a_downsampled_mnist_flow_trains_and_evaluates(data_dir, tmp_path):
    """``--image-size 7``: each pixel the rounded mean of its 4×4 block (against numpy), and
    a flow of one scale on 7×7 images trains, evaluates and reports bits per its 49 dims."""
    import numpy as np

    opts = dict(dataset="mnist", data_dir=str(data_dir), test_subset=16, train_subset=40)
    full = neuralode.tasks.get_task("density")(neuralode.tasks.make_options("density", **opts))
    small = neuralode.tasks.get_task("density")(
        neuralode.tasks.make_options("density", image_size=7, **opts)
    )
    big, little = full.load_data(), small.load_data()
    blocks = big.train.numpy().astype(np.float64).reshape(-1, 1, 7, 4, 7, 4).mean((3, 5))
    assert little.train.dtype == torch.uint8
    assert np.array_equal(little.train.numpy(), np.round(blocks).astype(np.uint8))
    assert little.test.shape == (16, 1, 7, 7) and float(little.test.min()) >= 0
    model = small.build_model()
    assert model.shape == (1, 7, 7) and len(model.scales) == 1
    run = tmp_path / "r"
    args = ["train", "density", *MNIST, "--image-size", "7", "--data-dir", str(data_dir)]
    assert main(["-q", *args, "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["test_bpd"] < 40 and "samples.png" in summary["plots"]
    assert main(["-q", "evaluate", str(run)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["bpd"] == pytest.approx(summary["test_bpd"], rel=1e-6)


def test_a_flow_learns_from_python(tmp_path):
    """Through the Python API: 8 Gaussians for 80 iterations lowers the test NLL below 4.0
    nats, better than any single Gaussian can do (the best, with the data's covariance, scores
    log(2πe) + log(2.83²/2 + 0.354²) = 4.26; the entropy is 2.82). (At the task's 3e-3 the
    default dynamics start slowly over so few iterations: 3.99 to 3.86 in 120; at 1e-2 they go
    from 3.77 after the first epoch to 3.27 after the second.)"""
    summary = neuralode.train(
        "density", out=tmp_path / "r", progress=False, dataset="8gaussians", epochs=2,
        iters=40, lr=1e-2, hidden=32, test_size=1000, val_size=500, threads=1,
    )  # fmt: skip
    first = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert first["test_nll"] == summary["test_nll"]
    rows = [line.split(",") for line in (tmp_path / "r" / "metrics.csv").read_text().split()]
    nll = [float(r[rows[0].index("test_nll")]) for r in rows[1:]]
    assert nll[-1] < nll[0] - 0.3 and nll[-1] < 4.0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "multiscale"], "model 'multiscale' is for images"),
        (["--dataset", "mnist", "--model", "cnf"], "model 'cnf' is for 2-D data"),
        (["--data-dir", "x"], "option data_dir applies to --dataset mnist only"),
        (["--steer", "0.5"], "steer must be below t1 (0.5)"),
        (["--dataset", "3gaussians"], "unknown dataset '3gaussians'"),
        (["--divergence", "brute"], "unknown divergence 'brute'"),
        (["--dataset", "mnist", "--divergence", "exact"], "use --divergence hutchinson"),
        (["--image-size", "14"], "option image_size applies to --dataset mnist only"),
        (["--dataset", "mnist", "--image-size", "10"], "image_size"),
    ],
)
def test_bad_density_options_are_clear_errors(args, words, tmp_path):
    with pytest.raises(InvalidArgumentError, match=__import__("re").escape(words)):
        neuralode.train("density", out=tmp_path / "x", progress=False,
                        **_kwargs(args))  # fmt: skip
    assert not (tmp_path / "x").exists()


def _kwargs(args):
    it = iter(args)
    return {k.removeprefix("--").replace("-", "_"): _value(v) for k, v in zip(it, it)}


def _value(v):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def test_a_flow_trains_identically_on_two_ranks(tmp_path):
    """DDP: each rank draws its own Hutchinson noise and STEER end time; the all-reduced
    gradients keep the two copies identical."""
    args = ["-m", "neuralode", "train", "density", *TOY, *RNODE, "--iters", "3",
            "--out", str(tmp_path / "d")]  # fmt: skip
    res = _torchrun(args)
    assert res.returncode == 0, res.stderr
    digests = dict(re.findall(r"final weights sha256 \(rank (\d)\): (\w+)", res.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]


def test_a_reader_that_stops_reading_is_not_an_error(tmp_path):
    """`neuralode evaluate RUN | head -1` printed "error: Broken pipe" with exit code 2."""
    neuralode.train("density", out=tmp_path / "r", progress=False, epochs=1, iters=2,
                    hidden=8, val_size=50, test_size=50, threads=1)  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "neuralode", "evaluate", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        proc.stdout.close()  # before it prints anything: its first write finds no reader
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 141
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err
