"""Continuous normalizing flows: every check against an independent reference — the exact
log-determinant of linear flows, the Jacobian determinant of the whole flow map (autograd and
finite differences), the exact trace for Hutchinson's estimate, a density integrated on a grid,
and torchdiffeq for the backend."""

import math

import pytest
import torch
from torch import nn

from neuralode import JacobianFrobenius, KineticEnergy
from neuralode.errors import InvalidArgumentError, InvalidTypeError
from neuralode.flows import (
    CNF,
    ConcatSquashLinear,
    ConcatSquashMLP,
    FlowDensity,
    FourierTimeMLP,
    LogitTransform,
    MultiscaleCNF,
    SequentialFlow,
    Squeeze,
    standard_normal_log_prob,
)
from neuralode.tasks.density import bits_per_dim

TIGHT = dict(rtol=1e-9, atol=1e-11, eval_rtol=1e-9, eval_atol=1e-11)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, x):
        return x @ self.A.T


def _mlp(seed=0, dim=2, hidden=(16, 16), scale=1.0):
    torch.manual_seed(seed)
    f = ConcatSquashMLP(dim, hidden)
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(scale)
    return f


def _jacobian_logdet(fn, x):
    """log|det ∂fn/∂x| per sample by autograd through the solve."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], xi)
        J = J.reshape(xi.numel(), xi.numel())
        out.append(torch.linalg.slogdet(J)[1])
    return torch.stack(out)


def test_linear_dynamics_change_the_log_density_by_minus_t_trace():
    torch.manual_seed(0)
    A = torch.randn(3, 3)
    x = torch.randn(5, 3)
    for T in (0.3, 1.7):
        z, logdet = CNF(Linear(A), T, **TIGHT)(x)
        # log p_T(z) - log p_0(x) = -logdet = -T tr(A), and z = exp(TA) x
        torch.testing.assert_close(-logdet, torch.full((5,), -T * float(torch.trace(A))))
        torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(T * A).T, rtol=1e-7, atol=1e-8)


def test_the_log_determinant_is_the_change_of_variables_of_the_whole_flow_map():
    f = _mlp(scale=1.5)
    cnf = CNF(f, 1.0, **TIGHT)
    x = torch.randn(4, 2)
    _, logdet = cnf(x)
    torch.testing.assert_close(logdet, _jacobian_logdet(lambda v: cnf(v)[0], x), atol=1e-7,
                               rtol=1e-6)  # fmt: skip
    # and by central finite differences, which do not differentiate through the solver
    h = 1e-5
    with torch.no_grad():
        for i in range(2):
            J = torch.stack(
                [(cnf(x[i : i + 1] + h * e)[0] - cnf(x[i : i + 1] - h * e)[0])[0] / (2 * h)
                 for e in torch.eye(2)], 1)  # fmt: skip
            assert abs(float(torch.logdet(J) - logdet[i])) < 1e-6


def test_hutchinson_is_unbiased_against_the_exact_trace():
    f = _mlp(seed=1, scale=1.5)
    x = torch.randn(1, 2).repeat(4000, 1)  # each row draws its own noise
    with torch.no_grad():
        _, exact = CNF(f, 1.0, **TIGHT)(x[:1])
    for noise in ("rademacher", "gaussian"):
        torch.manual_seed(2)
        with torch.no_grad():
            _, est = CNF(f, 1.0, divergence="hutchinson", noise=noise, rtol=1e-5, atol=1e-7)(x)
        se = float(est.std()) / math.sqrt(len(est))
        assert float(est.std()) > 1e-3  # an estimate, not the exact trace
        assert abs(float(est.mean() - exact[0])) < 4 * se + 1e-5, noise


def test_sampling_inverts_the_flow_for_stacked_blocks():
    model = FlowDensity(
        SequentialFlow([CNF(_mlp(seed=s, scale=1.5), 0.7, **TIGHT) for s in range(3)]), (2,)
    )
    x = torch.randn(6, 2)
    z, _ = model.flow(x)
    assert float((z - x).detach().abs().max()) > 0.1  # the flow moves the points
    torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-7)
    # log_prob of the stack = base log-density + the sum of the blocks' log-determinants,
    # against the Jacobian of the whole stacked map
    expected = standard_normal_log_prob(z) + _jacobian_logdet(lambda v: model.flow(v)[0], x)
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-7, rtol=1e-6)


def test_a_2d_model_density_integrates_to_one():
    model = FlowDensity(SequentialFlow([CNF(_mlp(seed=3, scale=2.0), 1.0)]), (2,)).eval()
    model.flow.layers[0].eval_rtol = model.flow.layers[0].eval_atol = 1e-7
    L, m = 9.0, 160
    xs = torch.linspace(-L, L, m + 1)
    c = (xs[:-1] + xs[1:]) / 2
    X, Y = torch.meshgrid(c, c, indexing="ij")
    with torch.no_grad():
        p = model.log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp()
    cell = float(xs[1] - xs[0]) ** 2
    assert abs(float(p.sum()) * cell - 1) < 0.01
    # and the density is not the base's: the flow changed it
    base = standard_normal_log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp()
    assert float((p - base).abs().sum()) * cell > 0.05


def _linear_regularized(divergence, noise="rademacher"):
    torch.manual_seed(4)
    A = torch.randn(3, 3) * 0.7
    cnf = CNF(Linear(A), 0.8, divergence=divergence, noise=noise,
              regularizers=[KineticEnergy(1.0), JacobianFrobenius(1.0)], **TIGHT)  # fmt: skip
    return A, cnf


def test_rnode_terms_match_their_integrals():
    A, cnf = _linear_regularized("exact")
    x = torch.randn(4, 3)
    cnf(x)
    terms = cnf.last_regularization_terms
    # ∫‖∂f/∂x‖²_F = T‖A‖²_F; ∫‖A e^{tA} x‖² dt by Simpson's rule on the exact solution
    torch.testing.assert_close(terms["jacobian"], 0.8 * (A * A).sum())
    ts = torch.linspace(0, 0.8, 2001)
    speed = torch.stack([((x @ torch.linalg.matrix_exp(t * A).T) @ A.T).pow(2).sum(1)
                         for t in ts])  # fmt: skip
    w = torch.ones(len(ts))
    w[1:-1:2], w[2:-1:2] = 4, 2
    kinetic = (w[:, None] * speed).sum(0) * (0.8 / (len(ts) - 1)) / 3
    torch.testing.assert_close(terms["kinetic"], kinetic.mean(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cnf.last_regularization, terms["kinetic"] + terms["jacobian"])


def test_the_hutchinson_frobenius_term_is_unbiased():
    A, cnf = _linear_regularized("hutchinson")
    cnf.rtol, cnf.atol = 1e-6, 1e-8
    with torch.no_grad():
        cnf(torch.randn(20000, 3))
    exact = 0.8 * float((A * A).sum())
    assert abs(float(cnf.last_regularization_terms["jacobian"]) - exact) < 0.03 * exact


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_every_gradient_method_gives_the_gradient_of_the_nll(gradient, divergence):
    f = _mlp(seed=5, hidden=(8,), scale=1.5)
    x = torch.randn(5, 2)
    regs = [KineticEnergy(0.1), JacobianFrobenius(0.1)]

    def loss(gradient):
        torch.manual_seed(9)  # the same Hutchinson noise in every solve
        cnf = CNF(f, 1.0, divergence=divergence, gradient=gradient, regularizers=regs,
                  rtol=1e-10, atol=1e-12)  # fmt: skip
        z, logdet = cnf(x)
        return -(standard_normal_log_prob(z) + logdet).mean() + cnf.last_regularization

    params = list(f.parameters())
    grads = torch.autograd.grad(loss(gradient), params)
    # central finite differences of the loss in a few directions
    torch.manual_seed(10)
    for _ in range(3):
        d = [torch.randn_like(p) for p in params]
        h = 1e-5
        with torch.no_grad():
            for p, di in zip(params, d):
                p.add_(h * di)
            up = loss(gradient)
            for p, di in zip(params, d):
                p.sub_(2 * h * di)
            down = loss(gradient)
            for p, di in zip(params, d):
                p.add_(h * di)
        fd = float(up - down) / (2 * h)
        an = sum(float((g * di).sum()) for g, di in zip(grads, d))
        assert abs(fd - an) < 1e-5 * max(1.0, abs(fd)), (fd, an)


def test_the_torchdiffeq_backend_gives_the_same_flow():
    f = _mlp(seed=6, scale=1.5)
    x = torch.randn(5, 2)
    ours = CNF(f, 1.0, rtol=1e-9, atol=1e-11)
    theirs = CNF(f, 1.0, rtol=1e-9, atol=1e-11, backend="torchdiffeq")
    (z1, l1), (z2, l2) = ours(x), theirs(x)
    torch.testing.assert_close(z1, z2, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(l1, l2, rtol=1e-7, atol=1e-8)
    g1 = torch.autograd.grad(l1.sum(), list(f.parameters()))
    g2 = torch.autograd.grad(l2.sum(), list(f.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_steer_draws_the_end_time_in_training_only():
    torch.manual_seed(7)
    A = torch.randn(2, 2)
    cnf = CNF(Linear(A), 1.0, steer=0.4, **TIGHT)
    tr = float(torch.trace(A))
    with torch.no_grad():
        ends = [float(cnf(torch.randn(2, 2))[1][0]) / tr for _ in range(30)]
    assert all(0.6 - 1e-9 <= e <= 1.4 + 1e-9 for e in ends)
    assert max(ends) - min(ends) > 0.3
    cnf.eval()
    with torch.no_grad():
        assert abs(float(cnf(torch.randn(2, 2))[1][0]) / tr - 1.0) < 1e-9


def test_concat_squash_linear_is_the_ffjord_layer():
    torch.manual_seed(8)
    layer = ConcatSquashLinear(3, 4)
    x, t = torch.randn(5, 3), torch.tensor(0.3)
    W, b = layer.layer.weight, layer.layer.bias
    gate = torch.sigmoid(layer.hyper_gate.weight[:, 0] * 0.3 + layer.hyper_gate.bias)
    expected = (x @ W.T + b) * gate + layer.hyper_bias.weight[:, 0] * 0.3
    torch.testing.assert_close(layer(t, x), expected)


def test_fourier_time_mlp_sees_the_state_beside_cos_and_sin_of_k_pi_t_over_the_period():
    torch.manual_seed(9)
    f = FourierTimeMLP(2, (8, 8), frequencies=3, period=0.5)
    assert [type(m).__name__ for m in f.net] == ["Linear", "ELU", "Linear", "ELU", "Linear"]
    seen = []
    f.net[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x, t = torch.randn(4, 2), 0.3
    out = f(torch.tensor(t), x)
    assert out.shape == (4, 2)
    k = torch.arange(1, 4, dtype=torch.float64)
    angle = k * math.pi * t / 0.5
    features = torch.cat((angle.cos(), angle.sin())).expand(4, 6)
    torch.testing.assert_close(seen[0], torch.cat((features, x), dim=1))
    # periodic in t with period 2 × period (the lowest frequency's full turn), not with 1 ×
    torch.testing.assert_close(f(torch.tensor(t + 1.0), x), out)
    assert not torch.allclose(f(torch.tensor(t + 0.5), x), out)
    # one unbatched state, and one time per sample
    torch.testing.assert_close(f(torch.tensor(t), x[1]), out[1])
    times = torch.tensor([0.1, 0.2, 0.3, 0.4])
    per_sample = f(times, x)
    for i in range(4):
        torch.testing.assert_close(per_sample[i], f(times[i], x[i : i + 1])[0])
    for bad in ({"frequencies": 0}, {"frequencies": 2.0}, {"period": 0.0}, {"period": True}):
        with pytest.raises(InvalidArgumentError, match="frequencies|period"):
            FourierTimeMLP(2, **bad)
    with pytest.raises(InvalidArgumentError, match="unknown activation"):
        FourierTimeMLP(2, activation="swish")


def test_the_density_task_builds_fourier_dynamics_by_default_and_ffjords_by_name():
    from neuralode.tasks import get_task, make_options
    from neuralode.tasks.density import DensityTask

    def func(**options):
        task = get_task("density")(make_options("density", options))
        return task.build_model().flow.layers[0].func

    default = func(t1=0.7)
    assert isinstance(default, FourierTimeMLP)
    torch.testing.assert_close(default.freqs, torch.arange(1, 4) * math.pi / 0.7)
    assert isinstance(func(dynamics="concatsquash"), ConcatSquashMLP)
    with pytest.raises(InvalidArgumentError, match="2-D data only"):
        make_options("density", {"dataset": "mnist", "dynamics": "concatsquash"})
    # a 2-D run saved before the option existed keeps FFJORD's dynamics (an MNIST run has none)
    from neuralode.training.run_folder import upgrade_config

    assert upgrade_config({"task": "density"})["dynamics"] == "concatsquash"
    assert upgrade_config({"task": "density", "dataset": "mnist"})["dynamics"] == "fourier"
    assert DensityTask.legacy_config({"dataset": "moons"})["regularizer_scale"] == "sum"


def test_logit_transform_and_squeeze_are_invertible_with_their_log_determinants():
    torch.manual_seed(11)
    x = torch.rand(3, 1, 4, 4)
    logit = LogitTransform(1e-2)
    y, ld = logit(x)
    # elementwise: log|det| is the sum of log derivatives
    torch.testing.assert_close(ld, _jacobian_logdet(lambda v: logit(v)[0], x))
    torch.testing.assert_close(logit.inverse(y), x)
    sq = Squeeze()
    s, ld0 = sq(x)
    assert s.shape == (3, 4, 2, 2) and float(ld0.abs().max()) == 0
    assert torch.equal(sq.inverse(s), x)
    assert torch.equal(s[:, :, 0, 0], x[:, 0, :2, :2].reshape(3, 4))  # one 2×2 patch


def test_multiscale_log_prob_is_the_change_of_variables_and_sampling_inverts_it():
    torch.manual_seed(12)
    model = MultiscaleCNF((1, 4, 4), scales=2, blocks=1, hidden=(4,), alpha=0.05, T=0.5,
                          rtol=1e-8, atol=1e-10)  # fmt: skip
    for p in model.parameters():
        p.data.mul_(3)
    x = torch.rand(1, 1, 4, 4) * 0.8 + 0.1

    def to_z(v):  # the whole map x -> z (the factored-out parts first), via the layers
        h, _ = model.logit(v)
        outs = []
        for s, blocks in enumerate(model.scales):
            for cnf in blocks:
                h = cnf(h)[0]
            if s < len(model.scales) - 1:
                h, _ = model.squeeze(h)
                outs.append(h[:, : h.shape[1] // 2])
                h = h[:, h.shape[1] // 2 :]
        return torch.cat([o.reshape(len(v), -1) for o in [*outs, h]], 1)

    with torch.no_grad():  # the Jacobian of the whole map by central finite differences
        z = to_z(x)
        h = 1e-5
        J = torch.stack([(to_z(x + h * e.reshape(x.shape)) - to_z(x - h * e.reshape(x.shape)))[0]
                         / (2 * h) for e in torch.eye(16)], 1)  # fmt: skip
    expected = standard_normal_log_prob(z) + torch.linalg.slogdet(J)[1]
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-6)


def test_bits_per_dim_of_a_uniform_density_is_eight():
    # the uniform density on [0, 1]^D: log p = 0, so 8-bit data costs exactly 8 bits per dim
    assert float(bits_per_dim(torch.zeros(3), 784)[0]) == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"divergence": "brute"}, InvalidArgumentError, "divergence must be one of"),
        ({"noise": "uniform"}, InvalidArgumentError, "noise must be one of"),
        ({"steer": 1.0}, InvalidArgumentError, "steer must be a number in [0, T)"),
        ({"regularizers": [object()]}, InvalidTypeError, "KineticEnergy and JacobianFrobenius"),
        ({"regularizers": [KineticEnergy(), KineticEnergy()]}, InvalidArgumentError, "once"),
        ({"output_times": [0, 1]}, InvalidArgumentError, "a CNF takes no output_times"),
    ],
)
def test_bad_flow_arguments_are_clear_errors(kwargs, error, words):
    with pytest.raises(error, match=__import__("re").escape(words)):
        CNF(_mlp(), 1.0, **kwargs)


def test_bad_layers_are_clear_errors():
    with pytest.raises(InvalidTypeError, match="has no inverse"):
        SequentialFlow([nn.Linear(2, 2)])
    with pytest.raises(InvalidArgumentError, match="even height and width"):
        Squeeze()(torch.zeros(1, 1, 3, 4))
    with pytest.raises(InvalidArgumentError, match="divisible by 4"):
        MultiscaleCNF((1, 6, 6), scales=3)


def test_the_rnode_integrals_do_not_control_the_step_size():
    f = _mlp(seed=13, scale=2.0)
    x = torch.randn(64, 2)
    plain = CNF(f, 1.0, rtol=1e-6, atol=1e-6)
    regularized = CNF(f, 1.0, rtol=1e-6, atol=1e-6,
                      regularizers=[KineticEnergy(1.0), JacobianFrobenius(1.0)])  # fmt: skip
    with torch.no_grad():
        z1, l1 = plain(x)
        z2, l2 = regularized(x)
    assert regularized.stats.nfe_forward == plain.stats.nfe_forward
    torch.testing.assert_close((z1, l1), (z2, l2))
