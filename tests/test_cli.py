"""The `neuralode` command end to end: run folder, resume after a kill, errors, evaluate,
diagnose, spiral plots, data-parallel training under torchrun."""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralode.cli import main
from neuralode.training import CheckpointError, load_checkpoint

SMALL = [
    "--train-subset",
    "600",
    "--test-subset",
    "200",
    "--batch-size",
    "50",
    "--threads",
    "1",
    "--no-progress",
]


FAULTS = Path(__file__).with_name("faults.py")


def run_cli(args, env=None, timeout=300, fault=None, cwd=None):
    """The command in a fresh process, as a user runs it; ``fault`` (``"kill=17"``) runs it
    through tests/faults.py, which injects the fault through the loop's callbacks."""
    full_env = {**os.environ, **(env or {})}
    command = [sys.executable, "-m", "neuralode"] if fault is None else [
        sys.executable, str(FAULTS), fault, "--"]  # fmt: skip
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


def kill_and_resume(tmp_path, common, kill_after, in_epoch=2):
    """Train ``common`` uninterrupted into tmp_path/full and killed after ``kill_after``
    batches (in epoch ``in_epoch``) into tmp_path/cut; resume the cut run from another working
    directory by a relative path; both must end with the same weights and best epoch. Returns
    the uninterrupted run's summary."""
    full = run_cli([*common, "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    killed = run_cli([*common, "--out", str(tmp_path / "cut")], fault=f"kill={kill_after}")
    assert killed.returncode == -9
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    if in_epoch == 1:  # nothing finished: the resume starts the same run from its beginning
        assert not checkpoint.exists() and (tmp_path / "cut" / "config.json").is_file()
    else:
        assert load_checkpoint(checkpoint)["epoch"] == in_epoch - 1
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run(
        [sys.executable, "-m", "neuralode", "resume", "../cut", "--no-progress"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]

    def reproducible(best):  # wall times are measurements, not results
        return {k: v for k, v in best.items() if not k.endswith("_seconds")}

    assert reproducible(a["best"]) == reproducible(b["best"])
    return a


def test_train_writes_a_complete_run_folder(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "-q",
            "train",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--epochs",
            "2",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test_accuracy" in printed and "nfe_forward" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["model"] == "ode" and cfg["backend"] == "native"
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in (
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "nfe_forward",
        "nfe_backward",
        "epoch_seconds",
        "peak_memory_mb",
    ):
        assert col in rows[0]
    assert float(rows[1]["test_accuracy"]) > 0.5  # it learns
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "parameters",
        "test_accuracy",
        "nfe_forward",
        "nfe_backward",
        "train_seconds",
        "peak_memory_mb",
        "config",
    ):
        assert key in summary
    ckpt = load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "rng", "config"} <= set(ckpt)


def test_killed_run_resumes_to_the_same_weights(data_dir, tmp_path):
    common = [
        "train",
        "mnist",
        "--data-dir",
        str(data_dir),
        "--epochs",
        "3",
        "--kinetic",
        "0.01",
        "--lr",
        "3e-3",
        *SMALL,
    ]
    full = run_cli([*common, "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    killed = run_cli([*common, "--out", str(tmp_path / "cut")], fault="kill=17")
    # mid-epoch 2 (10 batches per epoch: 540 training images after 60 held out, batch 50)
    assert killed.returncode == -9
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    elsewhere = tmp_path / "elsewhere"  # from another working directory, by a relative path
    elsewhere.mkdir()
    resumed = run_cli(["resume", "../cut", "--no-progress"], cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["test_accuracy"] == b["test_accuracy"]
    rows = list(csv.DictReader((tmp_path / "cut" / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_nan_stops_with_a_diagnosis_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    out = tmp_path / "nan"
    res = run_cli(
        ["train", "mnist", "--data-dir", str(data_dir), "--epochs", "3", "--out", str(out), *SMALL],
        fault="nan=15",
    )
    assert res.returncode == 3
    assert "training stopped" in res.stderr and "NaN/inf parameters" in res.stderr
    assert "Traceback" not in res.stderr
    assert "NaN" in (out / "diagnosis.txt").read_text()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def _a_clear_error(code, stderr: str, message: str, folder) -> None:
    assert code == 2
    assert re.search(message, stderr), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, not a usage page
    assert not list(folder.iterdir())  # nothing was left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "mnist", "--model", "vit", "--out", "x"], r"invalid choice: 'vit' \(choose"),
        (["train", "cifar", "--out", "x"], r"invalid choice: 'cifar'"),
        (["train", "mnist", "--method", "rk45", "--out", "x"], r"invalid choice: 'rk45'"),
        (["train", "mnist", "--rtol", "-1", "--out", "x"], r"rtol must be a positive number"),
        (["train", "mnist", "--rtol", "-1e-3", "--out", "x"], r"rtol must be a positive number"),
        (["train", "mnist", "--lr", "fast", "--out", "x"], r"expected a number, got 'fast'"),
        (["train", "mnist", "--epochs", "0", "--out", "x"], r"epochs must be a positive integer"),
        (
            [
                "train",
                "mnist",
                "--gradient",
                "checkpoint",
                "--backend",
                "torchdiffeq",
                "--out",
                "x",
            ],
            r"needs backend 'native'",
        ),
        (
            ["train", "mnist", "--model", "resnet", "--rtol", "1e-5", "--out", "x"],
            r"option rtol does not apply to model 'resnet'",
        ),
        (["train", "spiral", "--model", "resnet", "--out", "x"], r"unrecognized arguments"),
        (["train", "--out", "x"], r"argument TASK: invalid choice: .* \(choose from .mnist"),
        (["train", "mnist", "--resume", "--out", "nowhere"], r"no run to resume"),
        (["resume", "nowhere"], r"no run to resume"),
        (["evaluate", "nowhere"], r"not a run folder"),
    ],
)
def test_bad_options_are_clear_errors(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # (relative folders land here: nothing may be left behind)
    try:
        code = main(args)
    except SystemExit as exit_:  # the parser's errors
        code = exit_.code
    _a_clear_error(code, capsys.readouterr().err, message, tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "mnist", "--method", "rk45", "--out", "x"], r"invalid choice: 'rk45'"),
        (["train", "mnist", "--rtol", "-1", "--out", "x"], r"rtol must be a positive number"),
        (["resume", "nowhere"], r"no run to resume"),
    ],
)
def test_bad_options_in_a_fresh_process(args, message, tmp_path):
    """As a user meets them: exit code 2 and one line on stderr, log lines included."""
    res = run_cli(args, cwd=tmp_path)
    _a_clear_error(res.returncode, res.stderr, message, tmp_path)


def test_resume_mismatch_and_existing_run(data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(["-q", "train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    )
    res = run_cli(["train", "mnist", "--out", str(out), "--resume", "--lr", "0.5",
                   "--no-progress"])  # fmt: skip
    assert res.returncode == 2 and "different configuration (lr" in res.stderr
    res = run_cli(["train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL])
    assert res.returncode == 2 and "already holds a run" in res.stderr


def test_corrupt_checkpoint_is_a_clear_error(data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(["-q", "train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    )
    (out / "checkpoint.pt").write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(out / "checkpoint.pt")
    res = run_cli(["evaluate", str(out)])
    assert res.returncode == 2 and "corrupt" in res.stderr and "Traceback" not in res.stderr


def test_evaluate_and_diagnose(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["-q", "train", "mnist", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    )
    capsys.readouterr()
    assert main(["-q", "evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rtol 1e-05" in text and "accuracy" in text
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["samples"] == 200 and 0 <= ev["accuracy"] <= 1 and ev["nfe_forward"] > 0
    assert main(["-q", "diagnose", str(out)]) == 0
    text = capsys.readouterr().out
    assert "neuralode diagnostics" in text and "NFE:" in text


def test_config_file_supplies_defaults(data_dir, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"epochs": 1, "model": "resnet", "num_blocks": 2, "lr": 0.002}))
    out = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                "mnist",
                "--config",
                str(conf),
                "--data-dir",
                str(data_dir),
                "--lr",
                "0.003",
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["task"], cfg["model"], cfg["num_blocks"], cfg["lr"]) == (
        "mnist",
        "resnet",
        2,
        0.003,
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epoch": 1}))
    res = run_cli(["train", "mnist", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert res.returncode == 2 and "unknown configuration keys ['epoch']" in res.stderr


@pytest.mark.parametrize(
    ("dataset", "extra", "max_mse"),
    [
        # the tutorial's arm: windows of 100 points; its held-out MSE is extrapolation over
        # t in [10, 4π] (radius 10 to 12.6), where drift in phase dominates: no bound here
        ("spiral", [], None),
        ("cubic", [], 0.5),
    ],
)
def test_trajectory_regression_trains_evaluates_diagnoses_and_resumes(
    tmp_path, monkeypatch, capsys, dataset, extra, max_mse
):
    """Every path a user takes, for both trajectory datasets: train (plots), then evaluate,
    diagnose and resume from another working directory (evaluate and diagnose of a spiral run
    used to raise a size-mismatch traceback)."""
    out = tmp_path / dataset
    args = ["-q", "train", dataset, "--epochs", "2", "--iters", "30", "--schedule", "none",
            "--out", str(out), "--no-progress", *extra]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    losses = [
        float(r["train_loss"])
        for r in csv.DictReader((out / "metrics.csv").read_text().splitlines())
    ]
    assert losses[1] < losses[0]  # it learns
    assert math.isfinite(summary["test_mse"])
    if max_mse is not None:
        assert summary["test_mse"] < max_mse
    plots = {"spiral_trajectories.png", "phase_portrait.png", "training_curves.png"}
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["plots"]) == plots
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["mse"] == pytest.approx(summary["test_mse"], rel=0.2)
    assert main(["diagnose", str(out)]) == 0
    assert "forward pass:      ok" in capsys.readouterr().out
    assert main(["-q", "evaluate", str(out), "--best"]) == 0
    best = json.loads((out / "evaluation_best.json").read_text())
    assert best["checkpoint"] == "best" and math.isfinite(best["mse"])
    assert main(["-q", "resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def _torchrun(args):
    """Two processes on this machine; ``--standalone`` picks a free port for each launch, so
    that no two launches (nor another program) contend for a fixed one."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("model", "tolerance"),
    [
        # no normalisation layer: the all-reduced gradient equals the single-process one to
        # rounding, and so do the weights after two epochs
        ("ode-strided", 1e-4),
        # the tutorial's model normalises over the global batch on every rank (GlobalBatchNorm,
        # exact per step in float64: see the next test), but over 20 float32 steps rounding
        # differences grow through its BatchNorm layers, by how much depends on the batches
        # (1.6% of the whole weight vector here, 10% in one small bias): the whole vector is
        # compared, loosely
        ("ode", None),
    ],
)
def test_torchrun_two_processes(data_dir, tmp_path, model, tolerance):
    # SGD: its updates are proportional to the gradients, so rounding differences between the
    # all-reduced and the single-process gradient stay at rounding level (Adam would amplify
    # them for parameters whose gradient is ~0). A fixed grid: adaptive steps would be chosen
    # per rank from each shard, so an adaptive run matches one process to the solver's
    # tolerance only.
    args = [
        "train", "mnist", "--model", model, "--optimizer", "sgd", "--lr", "0.05",
        "--data-dir", str(data_dir), "--epochs", "2", "--train-subset", "400",
        "--test-subset", "100", "--batch-size", "40", "--threads", "1", "--no-progress",
        "--method", "rk4",
    ]  # fmt: skip
    res = _torchrun(["-m", "neuralode", *args, "--out", str(tmp_path / "ddp")])
    assert res.returncode == 0, res.stderr
    digests = dict(re.findall(r"final weights sha256 \(rank (\d)\): (\w+)", res.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # BN buffers too
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    assert main(["-q", *args, "--out", str(tmp_path / "single")]) == 0
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["model"]
    if tolerance is None:
        va = torch.cat([a[k].double().reshape(-1) for k in a if a[k].is_floating_point()])
        vb = torch.cat([b[k].double().reshape(-1) for k in b if b[k].is_floating_point()])
        assert float((va - vb).norm()) <= 5e-2 * float(vb.norm())
        return
    for k in a:  # float32 all-reduce vs single-process sums: agreement per tensor
        diff = float((a[k].double() - b[k].double()).norm())
        assert diff <= tolerance * float(b[k].double().norm()) + 1e-5, k


GLOBAL_BN_CHECK = """
import copy, json, sys, torch, torch.distributed as dist
from torch import nn
import neuralode
from neuralode.training.distributed import GlobalBatchNorm
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = neuralode.create_model("ode", method="rk4").double()
ref = copy.deepcopy(model)
x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
y = torch.randint(0, 10, (16,))
nn.functional.cross_entropy(ref(x), y).backward()
GlobalBatchNorm.convert(model, dist.new_group(backend="gloo"))
ddp = nn.parallel.DistributedDataParallel(model)
nn.functional.cross_entropy(ddp(x[rank * 8:(rank + 1) * 8]), y[rank * 8:(rank + 1) * 8]).backward()
worst = {}
for (n, a), b in zip(model.named_parameters(), ref.parameters()):
    worst[n] = float((a.grad - b.grad).norm()) / (float(b.grad.norm()) + 1e-12)
for (n, a), b in zip(model.named_buffers(), ref.buffers()):
    worst[n] = float((a.double() - b.double()).norm()) / (float(b.double().norm()) + 1e-12)
if rank == 0:
    print(json.dumps(worst))
dist.barrier()
dist.destroy_process_group()  # its gloo threads end before the interpreter does (else: abort)
"""


def test_global_batch_norm_is_exactly_one_process_batch_norm(tmp_path):
    """Two ranks with half the batch each: the same gradients and running statistics as one
    process with the whole batch (float64, so only rounding separates them)."""
    script = tmp_path / "check.py"
    script.write_text(GLOBAL_BN_CHECK)
    res = _torchrun([str(script)])
    assert res.returncode == 0, res.stderr
    worst = json.loads(res.stdout.strip().splitlines()[-1])
    cancelled = {"stem.net.0.bias", "stem.net.3.bias", "stem.net.6.bias"}  # zero by design
    for name, rel in worst.items():
        if name not in cancelled:
            assert rel < 1e-10, (name, rel)
