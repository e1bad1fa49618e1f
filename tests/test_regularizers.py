"""Regularizers against analytic integrals, jacrev, and their own statistical expectation."""

import math

import pytest
import torch
from torch import nn

import neuralode
from neuralode import JacobianFrobenius, KineticEnergy, NeuralODEBlock, ODEFunc
from neuralode.regularizers import RegularizedDynamics


class LinearField(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, h):
        return h @ self.A.T


def test_kinetic_energy_of_linear_field_equals_analytic_integral():
    # f(h) = -a h, h(t) = e^{-at} h0 → ∫_0^T ‖f‖² dt = a ‖h0‖² (1 - e^{-2aT}) / 2
    a, T = 0.7, 2.0
    A = -a * torch.eye(3, dtype=torch.float64)
    h0 = torch.randn(4, 3, dtype=torch.float64)
    block = NeuralODEBlock(
        LinearField(A), t1=T, regularizers=[KineticEnergy(weight=1.0)], rtol=1e-10, atol=1e-10
    ).double()
    out, reg = block(h0)
    exact = a * (h0**2).sum(1) * (1 - math.exp(-2 * a * T)) / 2
    torch.testing.assert_close(reg, exact.mean(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out, h0 * math.exp(-a * T))
    torch.testing.assert_close(
        block.last_regularization_terms["kinetic"], exact.mean(), rtol=1e-8, atol=1e-10
    )


def test_kinetic_energy_of_rotation():
    # a rotation keeps ‖f‖ = w ‖h0‖ constant → integral T w² ‖h0‖²
    w, T = 1.5, 1.2
    A = torch.tensor([[0.0, -w], [w, 0.0]], dtype=torch.float64)
    h0 = torch.randn(3, 2, dtype=torch.float64)
    block = NeuralODEBlock(
        LinearField(A), t1=T, regularizers=[KineticEnergy(2.0)], rtol=1e-10, atol=1e-10
    ).double()
    _, reg = block(h0)
    torch.testing.assert_close(reg, 2.0 * T * w**2 * (h0**2).sum(1).mean())


def test_exact_jacobian_integrand_equals_jacrev():
    torch.manual_seed(0)
    f = ODEFunc(4, 16, activation="softplus").double()
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    dh = f(0.0, h)
    ours = JacobianFrobenius(estimator="exact").integrand(torch.tensor(0.0), h, dh, False)
    jac = torch.vmap(torch.func.jacrev(lambda x: f(0.0, x[None])[0]))(h.detach())
    ref = (jac**2).sum(dim=(1, 2))
    torch.testing.assert_close(ours, ref)


def test_exact_jacobian_of_linear_field_integrates_to_T_times_frobenius():
    A = torch.randn(3, 3, dtype=torch.float64) * 0.3
    T = 1.5
    block = NeuralODEBlock(
        LinearField(A), t1=T, regularizers=[JacobianFrobenius(1.0, estimator="exact")]
    ).double()
    _, reg = block(torch.randn(2, 3, dtype=torch.float64))
    torch.testing.assert_close(reg, T * (A**2).sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_averages_to_the_exact_value(probe):
    torch.manual_seed(0)
    f = ODEFunc(6, 16).double()
    h = torch.randn(1, 6, dtype=torch.float64).expand(4000, 6).clone().requires_grad_(True)
    dh = f(0.0, h)
    est = JacobianFrobenius(probe=probe)
    est.begin_solve(h)
    samples = est.integrand(torch.tensor(0.0), h, dh, False)  # 4000 independent probes
    h1 = h[:1].detach().requires_grad_(True)
    exact = JacobianFrobenius(estimator="exact").integrand(torch.tensor(0.0), h1, f(0.0, h1), False)
    assert float(exact) > 0
    mean, se = samples.mean(), samples.std() / math.sqrt(samples.numel())
    assert abs(float(mean - exact)) < 4 * float(se)
    if probe == "rademacher":  # Rademacher has the smaller variance
        assert float(samples.std()) < float(exact)


def test_regularized_gradients_adjoint_equal_direct():
    torch.manual_seed(0)
    f = ODEFunc(3, 8).double()
    h = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        block = NeuralODEBlock(
            f,
            adjoint=adjoint,
            rtol=1e-9,
            atol=1e-9,
            regularizers=[KineticEnergy(0.5), JacobianFrobenius(0.5, estimator="exact")],
        )
        out, reg = block(h)
        grads.append(torch.autograd.grad(out.sum() + reg, list(f.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_one_solve_integrates_state_and_regularizers():
    f = ODEFunc(3, 8)
    calls = []
    block = NeuralODEBlock(f, regularizers=[KineticEnergy(), JacobianFrobenius()])
    f.register_forward_hook(lambda *a: calls.append(1))
    block(torch.randn(2, 3))
    assert block.stats.solves == 1
    assert len(calls) == block.stats.nfe_forward


def test_regularizers_in_eval_without_grad():
    block = NeuralODEBlock(ODEFunc(3, 8), regularizers=[JacobianFrobenius()]).eval()
    with torch.no_grad():
        out, reg = block(torch.randn(2, 3))
    assert not out.requires_grad and not reg.requires_grad
    assert float(reg) > 0


def test_regularization_loss_collects_blocks():
    model = neuralode.create_model("ode", regularizers=[KineticEnergy(0.1)])
    assert neuralode.regularization_loss(model) is None
    model(torch.randn(2, 1, 28, 28))
    reg = neuralode.regularization_loss(model)
    assert reg is not None and reg.requires_grad and float(reg.detach()) > 0


def test_regularizer_argument_errors():
    with pytest.raises(ValueError, match="weight"):
        KineticEnergy(-1.0)
    with pytest.raises(ValueError, match="estimator"):
        JacobianFrobenius(estimator="full")
    with pytest.raises(ValueError, match="probe"):
        JacobianFrobenius(probe="uniform")
    with pytest.raises(TypeError, match="AbstractRegularizer"):
        NeuralODEBlock(ODEFunc(2), regularizers=["kinetic"])
    assert isinstance(RegularizedDynamics(ODEFunc(2), [KineticEnergy()]), nn.Module)


def test_rnode_scale_is_the_papers_terms_on_a_cnf():
    """RNODE's code (Finlay et al., ``ffjord-rnode``) integrates ``½ mean_i f_i²`` and
    ``mean_i (εᵀJ)_i²`` per sample; with ``scale="rnode"`` a CNF's terms are exactly those, here
    on ``f(x) = A x`` against the matrix exponential (kinetic) and ``T ‖A‖²_F / D`` (exact
    Frobenius), for a 6-dimensional state so that a sum and a mean differ."""
    from neuralode.flows import CNF

    D, T, B = 6, 0.7, 5
    gen = torch.Generator().manual_seed(3)
    A = 0.4 * torch.randn(D, D, generator=gen, dtype=torch.float64)
    x0 = torch.randn(B, D, generator=gen, dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, t, x):
            return x @ A.T

    regs = [KineticEnergy(1.0, scale="rnode"), JacobianFrobenius(1.0, "exact", scale="rnode")]
    flow = CNF(Linear(), T, divergence="exact", regularizers=regs, rtol=1e-10, atol=1e-12)
    flow(x0)
    terms = {k: v.detach() for k, v in flow.last_regularization_terms.items()}
    # the kinetic energy by the trapezoid rule on x(t) = exp(At) x0 at 4,001 times
    ts = torch.linspace(0.0, T, 4001, dtype=torch.float64)
    xs = torch.stack([x0 @ torch.linalg.matrix_exp(A * s).T for s in ts])  # (times, B, D)
    integrand = 0.5 * (xs @ A.T).pow(2).mean(dim=2)  # ½ mean_i f_i², (times, B)
    kinetic = torch.trapezoid(integrand, ts, dim=0).mean()
    assert float(terms["kinetic"]) == pytest.approx(float(kinetic), rel=1e-6)
    # (T is held as a float32 buffer: 0.7 to 1.7e-8)
    assert float(terms["jacobian"]) == pytest.approx(T * float(A.pow(2).sum()) / D, rel=1e-7)
    # and "sum" (the default) is 2D and D times larger
    summed = [KineticEnergy(1.0), JacobianFrobenius(1.0, "exact")]
    flow = CNF(Linear(), T, divergence="exact", regularizers=summed, rtol=1e-10, atol=1e-12)
    flow(x0)
    terms = {k: v.detach() for k, v in flow.last_regularization_terms.items()}
    assert float(terms["kinetic"]) == pytest.approx(2 * D * float(kinetic), rel=1e-6)
    assert float(terms["jacobian"]) == pytest.approx(T * float(A.pow(2).sum()), rel=1e-7)


def test_the_density_task_takes_rnodes_terms_and_old_runs_keep_theirs():
    from neuralode.tasks import make_options

    options = make_options("density", {"kinetic": 0.01, "jacobian": 0.01})
    assert [r.scale for r in options.regularizers()] == ["rnode", "rnode"]
    from neuralode.tasks.density import DensityTask

    assert DensityTask.legacy_options["regularizer_scale"] == "sum"
    with pytest.raises(ValueError, match="scale must be 'sum' or 'rnode'"):
        KineticEnergy(0.1, scale="mean")
