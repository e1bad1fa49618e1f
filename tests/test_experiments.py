"""The experiment commands with the smoke budget: tables, plots, report, resumability."""

import itertools
import json
import time

import pytest
import torch

from neuralode.cli import main
from neuralode.errors import ExperimentMismatch
from neuralode.experiments import run_depth_study, run_tolerance_study
from neuralode.experiments.memory import measure_training_step

PNG = b"\x89PNG\r\n\x1a\n"


def _check_folder(out, plots, min_rows):
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) >= min_rows
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == len(rows) + 1
    report = (out / "report.md").read_text()
    assert "```bash\nneuralode" in report and "| " in report
    for p in plots:
        assert (out / p).read_bytes()[:8] == PNG
        assert f"![{p}]({p})" in report
    return rows


def test_compare_smoke(data_dir, tmp_path, capsys):
    out = tmp_path / "compare"
    assert (
        main(
            [
                "-q",
                "compare",
                "--budget",
                "smoke",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = {r["key"]: r for r in _check_folder(out, ["comparison.png", "memory_vs_time.png"], 8)}
    ode, resnet = rows["ode"], rows["resnet"]
    assert ode["parameters"] < resnet["parameters"]
    assert ode["nfe_forward"] > 0 and resnet["nfe_forward"] == 0
    assert ode["forward_ms"] > 0 and ode["train_step_peak_mb"] > 0
    assert 0 <= ode["test_accuracy"] <= 1
    # the adjoint's memory stays flat while direct backpropagation's grows with T
    direct = [rows[f"memory-direct-T{t}"]["train_step_peak_mb"] for t in (1, 16)]
    adjoint = [rows[f"memory-adjoint-T{t}"]["train_step_peak_mb"] for t in (1, 16)]
    assert direct[1] > direct[0] * 1.2
    assert adjoint[1] < direct[1]
    assert "results:" in capsys.readouterr().out


def test_tolerance_study_smoke_and_resume(data_dir, tmp_path):
    out = tmp_path / "tol"
    run_tolerance_study(str(out), "smoke", str(data_dir), command=["neuralode", "study"])
    rows = _check_folder(out, ["tolerance.png"], 6)
    tols = sorted(r["rtol"] for r in rows)
    assert tols[0] <= 1e-6 and tols[-1] >= 1e-2 and len(tols) >= 4
    by_tol = {r["rtol"]: r for r in rows}
    assert by_tol[1e-6]["nfe_forward"] >= by_tol[1e-2]["nfe_forward"]
    # a rerun skips every finished configuration
    t0 = time.perf_counter()
    run_tolerance_study(str(out), "smoke", str(data_dir), command=["neuralode", "study"])
    assert time.perf_counter() - t0 < 5
    assert len(json.loads((out / "results.json").read_text())["rows"]) == len(rows)
    # an interrupted study loses at most the configuration in progress
    saved = json.loads((out / "results.json").read_text())
    saved["rows"] = [r for r in saved["rows"] if r["key"] != "tol-1e-06"]
    (out / "results.json").write_text(json.dumps(saved))
    mtime = (out / "runs" / "tol-0.01" / "summary.json").stat().st_mtime
    run_tolerance_study(str(out), "smoke", str(data_dir), command=["neuralode", "study"])
    keys = [r["key"] for r in json.loads((out / "results.json").read_text())["rows"]]
    assert sorted(keys) == sorted(r["key"] for r in rows)
    assert (out / "runs" / "tol-0.01" / "summary.json").stat().st_mtime == mtime


def test_depth_study_smoke(data_dir, tmp_path):
    out = tmp_path / "depth"
    run_depth_study(
        str(out),
        "smoke",
        str(data_dir),
        depths=(2, 4, 8, 16, 32),
        command=["neuralode", "study", "depth"],
    )
    rows = _check_folder(out, ["depth.png"], 6)
    res = sorted((r for r in rows if r["model"] == "resnet"), key=lambda r: r["depth"])
    assert [r["depth"] for r in res] == [2, 4, 8, 16, 32]
    assert all(a["parameters"] < b["parameters"] for a, b in itertools.pairwise(res))
    ode = next(r for r in rows if r["model"] == "ode")
    assert ode["depth"] == ode["nfe_forward"] > 0


def test_corrupt_results_file_is_a_clear_error(tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable.*delete it"):
        run_depth_study(str(out), "smoke", None)


def _saved_for_backward_mb(batch: int) -> float:
    """What autograd holds between the forward and backward pass of the measured step (its
    saved tensors' distinct storages): a lower bound of the step's peak, found another way."""
    from neuralode.tasks import get_task, make_options

    torch.manual_seed(0)  # the child's model
    model = get_task("mnist")(make_options("mnist", model="ode")).build_model()
    with torch.no_grad():
        feats = model.stem(torch.randn(batch, 1, 28, 28))
    storages: dict[int, int] = {}

    def pack(x):
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out, _ = model.ode.integrate(feats)
        model.head(out)
    return sum(storages.values()) / 2**20


def test_memory_measurement_is_real():
    small = measure_training_step({"options": {"model": "ode"}, "block_only": True, "batch": 64})
    big = measure_training_step({"options": {"model": "ode"}, "block_only": True, "batch": 2048})
    assert big["peak_mb"] > small["peak_mb"] + 5
    # memory freed before the step (its inputs' preparation) is not counted as already there
    saved = _saved_for_backward_mb(2048)
    assert saved > 10
    assert big["peak_mb"] >= 0.95 * saved, (big, saved)


def test_a_rerun_with_other_settings_is_refused_not_mixed(data_dir, tmp_path, capsys):
    """A rerun into the same --out with another --budget skipped the configurations done under
    the first budget and reported them under the second's heading."""
    out = tmp_path / "tol"
    run_tolerance_study(str(out), "smoke", str(data_dir), tolerances=(1e-2,))
    before = (out / "results.json").read_text()
    with pytest.raises(ExperimentMismatch, match="budget 'smoke' then, 'full' now"):
        run_tolerance_study(str(out), "full", str(data_dir), tolerances=(1e-2,))
    assert (out / "results.json").read_text() == before  # nothing was touched
    rc = main(["-q", "study", "tolerance", "--budget", "full", "--data-dir", str(data_dir),
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 2 and "other settings" in capsys.readouterr().err
    # a saved configuration that differs from the rerun's (here: edited) is not reused
    saved = json.loads(before)
    saved["rows"][0]["config"]["train_subset"] = 999
    (out / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ExperimentMismatch, match="train_subset: 999 then, 300 now"):
        run_tolerance_study(str(out), "smoke", str(data_dir), tolerances=(1e-2,))
