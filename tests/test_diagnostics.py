import math

import torch
from torch import nn

import neuralode
from neuralode import create_model, diagnose


def _batch(n=4):
    return torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))


def test_healthy_model_report():
    model = create_model("ode")
    x, y = _batch()
    report = diagnose(model, (x, y))
    assert report.forward_ok and report.backward_ok and report.ok
    assert report.output_shape == (4, 10)
    assert report.solve.nfe_forward > 0
    assert report.num_parameters == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        reference = float(nn.functional.cross_entropy(model(x), y))
    assert math.isclose(report.loss, reference, rel_tol=1e-5)
    text = str(report)
    assert "forward pass:      ok" in text and "NFE:" in text and "healthy" in text


def test_adjoint_model_reports_backward_nfe():
    report = diagnose(create_model("ode", adjoint=True), _batch())
    assert report.solve.nfe_backward > 0


def test_nan_parameter_is_named_and_nothing_raises():
    model = create_model("ode")
    with torch.no_grad():
        model.head.net[1].weight[0, 0] = float("nan")
    report = diagnose(model, _batch())
    assert report.nonfinite_parameters == ["head.net.1.weight"]
    assert not report.ok
    assert "head.net.1.weight" in str(report)
    assert any("NaN/inf" in w for w in report.warnings)


def test_nan_in_dynamics_becomes_part_of_the_report():
    model = create_model("ode")
    with torch.no_grad():
        model.ode.func.net[0].bias.fill_(float("nan"))
    report = diagnose(model, _batch())
    assert not report.forward_ok
    assert "NonFiniteStateError" in report.forward_error
    assert "FAILED" in str(report)


def test_broken_model_never_crashes():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            raise RuntimeError("shape mismatch somewhere")

    report = diagnose(Broken(), torch.randn(2, 3))
    assert not report.forward_ok
    assert "shape mismatch somewhere" in report.forward_error
    assert "shape mismatch" in str(report)


def test_exploding_and_missing_gradients_are_flagged():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(x) * 1e6

    report = diagnose(Exploding(), torch.randn(2, 3))
    assert report.backward_ok
    assert report.parameters_without_grad == ["unused.weight", "unused.bias"]
    assert any("exploding" in w for w in report.warnings)


def test_diagnose_leaves_model_untouched():
    model = create_model("ode")
    model.eval()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    diagnose(model, _batch())
    assert not model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
        assert torch.equal(p.grad, torch.ones_like(p))


def test_report_as_dict():
    d = diagnose(create_model("resnet", num_blocks=2), _batch()).as_dict()
    assert d["ok"] is True and d["solve"]["nfe_forward"] == 0
    assert neuralode.DiagnosticReport().ok is False
