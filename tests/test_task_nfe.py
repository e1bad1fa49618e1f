"""Every task's NFE metrics agree with a counting dynamics: a forward hook on every block's
dynamics counts the evaluations that a training step and an evaluation make, and the task's
own counters (``nfe_forward``/``nfe_backward``, through :func:`neuralode.record`) say the
same."""

from __future__ import annotations

import pytest
import torch

from neuralode import ode_blocks, record
from neuralode.tasks import get_task, make_options

CPU = torch.device("cpu")

CASES = {
    "spiral": {"gradient": "adjoint"},
    "cubic": {},
    "density": {"dataset": "8gaussians", "iters": 2, "val_size": 64, "test_size": 96,
                "hidden": 8, "batch_size": 32, "divergence": "hutchinson", "kinetic": 0.1},
    "timeseries": {"series": 24, "batch_size": 8, "hidden": 8},
    "timeseries-vowels": {"dataset": "japanese_vowels", "model": "odernn", "drop": 0.5,
                          "hidden": 8, "batch_size": 60},
    "mnist": {"train_subset": 64, "test_subset": 48, "batch_size": 16, "hidden": 8},
}  # fmt: skip


def _counting(model: torch.nn.Module) -> list[int]:
    calls = [0]
    blocks = ode_blocks(model)
    assert blocks, "the model has Neural ODE blocks"
    for block in blocks:
        block.func.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("case", list(CASES))
def test_the_task_counts_what_a_counting_dynamics_counts(case, request):
    name = case.split("-")[0]
    options = dict(CASES[case])
    if name == "mnist":
        options["data_dir"] = str(request.getfixturevalue("data_dir"))
    if case == "timeseries-vowels":
        pytest.importorskip("aeon", reason="the timeseries extra is not installed")
    task = get_task(name)(make_options(name, **options))
    data = task.load_data()
    model = task.build_model()
    calls = _counting(model)
    batch = next(iter(task.train_batches(data, torch.Generator().manual_seed(0), 0, 1)))
    with record() as rec:
        step = task.training_step(model, batch, CPU)
    forward = calls[0]
    assert rec.nfe_forward == forward > 0
    loss = step.loss if rec.regularization is None else step.loss + rec.regularization
    loss.backward()
    assert rec.nfe_backward == calls[0] - forward  # the adjoint's evaluations (else none)
    if options.get("gradient") == "adjoint":
        assert rec.nfe_backward > 0
    calls[0] = 0
    with record() as rec:
        metrics = task.evaluate(model, data, "test", CPU)
    assert rec.nfe_forward == calls[0] > 0
    per_batch = metrics["nfe_forward"]
    batches = calls[0] / per_batch  # the metric is per batch: a whole number of batches
    assert per_batch > 0 and batches == pytest.approx(round(batches)) and round(batches) >= 1
