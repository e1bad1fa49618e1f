import math

import pytest
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


# ------------------------------------------------------------------ stiffness and cost (issue 11)


class _Relax(nn.Module):
    """dh/dt = -lam (h - cos t): stiff for large lam (dopri5 needs ~22,600 NFE at 1e4)."""

    def __init__(self, lam):
        super().__init__()
        self.lam = lam
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, t, h):
        return -self.lam * self.scale * (h - torch.cos(t))


def _stiff_model(lam):
    return neuralode.NeuralODEBlock(_Relax(lam), rtol=1e-3, atol=1e-6)


def test_stiff_dynamics_are_reported_with_what_works():
    """It called dh/dt = -1e4 (h - cos t) healthy (22,616 NFE, 743 rejected steps)."""
    model = _stiff_model(1e4)
    report = diagnose(model, torch.zeros(2, 1))
    assert report.forward_ok and not report.ok
    assert report.nfe_per_solve > 10_000
    assert report.rejected_ratio > 0.1 and report.steps_per_solve > 1_000
    assert 1.0 <= report.step_times_jacobian <= 4.0  # dopri5's stability bound is about 3.3
    stiff = next(w for w in report.warnings if w.startswith("stiff dynamics"))
    assert "kvaerno5" in stiff and "KineticEnergy" in stiff
    assert "solver cost:" in str(report) and "% rejected" in str(report)


def test_a_model_that_would_never_finish_is_reported_not_waited_for():
    """On -1e6 diagnose never returned (dopri5 needs about 2.3 million evaluations)."""
    report = diagnose(_stiff_model(1e6), torch.zeros(2, 1))
    assert report.step_budget_exhausted and not report.forward_ok
    assert report.solve.nfe_forward <= 7 * neuralode.diagnostics.MAX_STEPS
    assert any("did not reach its next output time within 5,000 steps" in w
               for w in report.warnings)  # fmt: skip


def test_the_advice_for_stiff_dynamics_works():
    """The remedy the messages give solves the stiff probe in a few hundred evaluations, with
    gradients (the step-underflow advice used to be rk4, which only turned the failure into NaN;
    then scipy's Radau, which has no gradients)."""
    stats = neuralode.SolveStats()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    model = _Relax(1e6).double()
    out = neuralode.odeint(model, torch.zeros(1, dtype=torch.float64), t, method="kvaerno5",
                           rtol=1e-6, atol=1e-8, stats=stats)  # fmt: skip
    # h follows cos t within 1/lam after a transient of length 1/lam
    assert abs(float(out[-1, 0].detach()) - math.cos(1.0)) < 1e-5
    assert stats.nfe_forward < 1_500  # dopri5 needs about 2.3 million (one more per stage here,
    # as the graph is recorded: the gradient of each stage's fixed point)
    # h(1) = cos 1 + sin(1) / (lam * scale) + O(lam^-2): dh(1)/dscale = -sin(1) / lam
    (grad,) = torch.autograd.grad(out[-1, 0], [model.scale])
    assert float(grad) == pytest.approx(-math.sin(1.0) / 1e6, rel=0.02)
    from neuralode.solvers._messages import STIFF_REMEDIES, step_underflow_message

    assert "method='kvaerno5'" in STIFF_REMEDIES and "adjoint" in STIFF_REMEDIES
    assert "rk4" not in step_underflow_message("") and "rk4" not in STIFF_REMEDIES


def test_expensive_but_not_stiff_dynamics_get_the_cost_advice():
    # growth at rate 0.5 over [0, 40] to 1e-10: many steps, each bounded by accuracy
    model = neuralode.NeuralODEBlock(_Relax(-0.5).double(), t1=40.0, rtol=1e-10, atol=1e-12)
    report = diagnose(model, torch.ones(2, 1, dtype=torch.float64))
    assert report.nfe_per_solve > neuralode.diagnostics.EXPENSIVE_NFE
    assert report.step_times_jacobian < 0.5
    assert any(w.startswith("expensive dynamics") for w in report.warnings)
    assert not any(w.startswith("stiff") for w in report.warnings)


def test_a_single_vanishing_gradient_is_flagged():
    """The tutorial's rule: any parameter below the threshold, not only the largest."""
    model = create_model("ode")
    with torch.no_grad():
        model.head.net[1].weight.mul_(1e-12)  # starves everything before the head
        model.head.net[1].bias.zero_()
    report = diagnose(model, _batch())
    assert report.vanishing_gradients and "head.net.1.bias" not in report.vanishing_gradients
    assert report.grad_norm_max[1] > neuralode.diagnostics.VANISHING_GRAD_NORM
    assert any(w.startswith("vanishing gradients") for w in report.warnings)


def test_biases_that_a_normalisation_cancels_are_not_called_vanishing():
    """The tutorial's stem has a bias before each BatchNorm: its gradient is zero by
    construction, which is no sign of vanishing gradients."""
    from neuralode.diagnostics import _biases_before_norms

    model = create_model("ode")
    assert _biases_before_norms(model) == {"stem.net.0.bias", "stem.net.3.bias", "stem.net.6.bias"}
    report = diagnose(model, _batch(8))
    assert report.ok and not report.vanishing_gradients
