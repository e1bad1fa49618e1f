"""Batches of independent stiff systems: implicit methods on the per-sample lane (every sample
its own steps, Newton iteration and Jacobian block) and the linear solvers of Newton's method
(dense, per-sample blocks, Krylov), checked against each sample solved alone, scipy's Radau and
finite differences."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import neuralode
from neuralode import SolveStats
from neuralode.solvers import TRBDF2, Kvaerno5, PerSample, PIController

F64 = torch.float64
PER_SAMPLE = {"batch_mode": "per_sample"}


def van_der_pol(mu):
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)

    return f


def robertson(t, y):
    a, b, c = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack(
        [-0.04 * a + 1e4 * b * c, 0.04 * a - 1e4 * b * c - 3e7 * b * b, 3e7 * b * b], dim=-1
    )


def radau(f, y0, t, rtol=1e-11, atol=1e-13):
    def rhs(s, y):
        return f(torch.tensor(s, dtype=F64), torch.from_numpy(y)).numpy()

    t = np.asarray(t, dtype=float)
    sol = solve_ivp(rhs, (t[0], t[-1]), np.asarray(y0, dtype=float), method="Radau", t_eval=t,
                    rtol=rtol, atol=atol)  # fmt: skip
    assert sol.success
    return sol.y.T


@pytest.mark.parametrize(
    ("method", "newton"),
    [("kvaerno5", {}), ("trbdf2", {}), ("kvaerno5", {"max_newton_iters": 2})],
    ids=["kvaerno5", "trbdf2", "kvaerno5-two-newton-iterations"],
)
@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused", "tensors"])
def test_every_sample_takes_the_steps_and_evaluations_it_takes_alone(
    monkeypatch, method, newton, fused
):
    """A batch of Van der Pol oscillators with μ from 5 to 60: every sample's evaluations and
    steps are those of the sample solved alone, its answer the same to rounding, and right
    against scipy's Radau; also where Newton's iterations give up often (two at most: a sample
    that gives up with a fresh Jacobian stops, as the joint lane's solve does). With the C
    kernel's Newton iterations and with their tensor form."""
    monkeypatch.setenv("NEURALODE_FUSED", fused)
    mus = torch.tensor([5.0, 12.0, 30.0, 60.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5], [-1.5, 0.2], [2.0, 0.0]], dtype=F64)
    t = torch.linspace(0.0, 3.0, 4, dtype=F64)
    stats = SolveStats()
    with torch.no_grad():
        ys = neuralode.odeint(van_der_pol(mus), y0, t, method=method, rtol=1e-6, atol=1e-8,
                              options={**PER_SAMPLE, **newton}, stats=stats)  # fmt: skip
    for b in range(len(mus)):
        alone = SolveStats()
        with torch.no_grad():
            y_b = neuralode.odeint(van_der_pol(mus[b]), y0[b : b + 1], t, method=method,
                                   rtol=1e-6, atol=1e-8, options=newton or None,
                                   stats=alone)  # fmt: skip
        assert stats.nfe_per_sample[b] == alone.nfe_forward, b
        assert stats.steps_accepted_per_sample[b] == alone.steps_accepted, b
        assert stats.steps_rejected_per_sample[b] == alone.steps_rejected, b
        torch.testing.assert_close(ys[:, b], y_b[:, 0], rtol=1e-9, atol=1e-11)
        ref = radau(van_der_pol(float(mus[b])), y0[b], t)
        np.testing.assert_allclose(ys[:, b].numpy(), ref, rtol=1e-3, atol=1e-4)
    # each sample its own work: the easiest took far fewer evaluations than the hardest
    assert min(stats.nfe_per_sample) < max(stats.nfe_per_sample) / 2, stats.nfe_per_sample
    assert stats.jacobians >= 1


def test_proportional_on_the_per_sample_lane_steps_as_each_sample_alone():
    """``proportional=True`` is resolved once for the solve's rtol, the same on both lanes."""
    mus = torch.tensor([5.0, 40.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=F64)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    method = TRBDF2(proportional=True)
    stats = SolveStats()
    with torch.no_grad():
        ys = neuralode.odeint(van_der_pol(mus), y0, t, method=method, rtol=1e-5, atol=1e-8,
                              options=PER_SAMPLE, stats=stats)  # fmt: skip
    for b in range(len(mus)):
        alone = SolveStats()
        with torch.no_grad():
            y_b = neuralode.odeint(van_der_pol(mus[b]), y0[b : b + 1], t, method=method,
                                   rtol=1e-5, atol=1e-8, stats=alone)  # fmt: skip
        plain = SolveStats()
        with torch.no_grad():
            neuralode.odeint(van_der_pol(mus[b]), y0[b : b + 1], t, method="trbdf2",
                             rtol=1e-5, atol=1e-8, stats=plain)  # fmt: skip
        assert stats.nfe_per_sample[b] == alone.nfe_forward > plain.nfe_forward, b
        assert stats.steps_accepted_per_sample[b] == alone.steps_accepted, b
        torch.testing.assert_close(ys[:, b], y_b[:, 0], rtol=1e-9, atol=1e-11)
        ref = radau(van_der_pol(float(mus[b])), y0[b], t)
        np.testing.assert_allclose(ys[:, b].numpy(), ref, rtol=1e-4, atol=1e-6)


def test_per_sample_times_with_an_implicit_method():
    """Every sample its own output times (a shorter row padded by repeating its last time):
    each row's outputs are those of the sample solved alone at its own times, and steps land
    on them."""
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.5, 0.5]], dtype=F64)
    times = torch.tensor([[0.0, 0.7, 1.9, 3.0], [0.5, 1.0, 2.5, 2.5], [0.0, 0.1, 0.2, 4.0]],
                         dtype=F64)  # fmt: skip
    mus = torch.tensor([20.0, 8.0, 40.0], dtype=F64)
    with torch.no_grad():
        ys = neuralode.odeint(van_der_pol(mus), y0, times, method="kvaerno5", rtol=1e-7,
                              atol=1e-9, options=PER_SAMPLE)  # fmt: skip
        for b in range(3):
            row = torch.unique_consecutive(times[b])
            alone = neuralode.odeint(van_der_pol(mus[b]), y0[b], row, method="kvaerno5",
                                     rtol=1e-7, atol=1e-9)  # fmt: skip
            torch.testing.assert_close(ys[: len(row), b], alone, rtol=1e-9, atol=1e-11)
            if len(row) < times.shape[1]:  # the padding repeats the last state
                torch.testing.assert_close(ys[len(row) :, b], alone[-1:].expand(1, 2))
            ref = radau(van_der_pol(float(mus[b])), y0[b], row.numpy())
            np.testing.assert_allclose(ys[: len(row), b].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_gradients_on_the_per_sample_lane_match_finite_differences_and_each_sample_alone():
    """Direct backpropagation through per-sample kvaerno5 (the implicit function theorem on
    every sample's own Newton iteration): d(sum of final states)/d(μ, y0) against central
    differences of the solve, and against each sample's gradient solved alone."""
    mus = torch.tensor([3.0, 10.0, 20.0], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.3], [-1.0, 0.5]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    tol = {"rtol": 1e-8, "atol": 1e-10}

    def loss(m, y):
        return neuralode.odeint(van_der_pol(m), y, t, method="kvaerno5", options=PER_SAMPLE,
                                **tol)[-1].sum()  # fmt: skip

    g_mu, g_y0 = torch.autograd.grad(loss(mus, y0), (mus, y0))
    eps = 1e-6
    with torch.no_grad():
        for b in range(3):
            e = torch.zeros(3, dtype=F64)
            e[b] = eps
            fd = (loss(mus + e, y0) - loss(mus - e, y0)) / (2 * eps)
            assert abs(float(fd) - float(g_mu[b])) <= 1e-5 * (1 + abs(float(fd))), b
        e = torch.zeros_like(y0)
        e[1, 0] = eps
        fd = (loss(mus, y0 + e) - loss(mus, y0 - e)) / (2 * eps)
        assert abs(float(fd) - float(g_y0[1, 0])) <= 1e-5 * (1 + abs(float(fd)))
    for b in range(3):
        m = mus.detach()[b].clone().requires_grad_(True)
        y = y0.detach()[b : b + 1].clone().requires_grad_(True)
        out = neuralode.odeint(van_der_pol(m), y, t, method="kvaerno5", **tol)[-1].sum()
        gm, gy = torch.autograd.grad(out, (m, y))
        torch.testing.assert_close(g_mu[b], gm, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(g_y0[b], gy[0], rtol=1e-7, atol=1e-10)


def test_the_object_api_and_refusals_on_the_per_sample_lane():
    mus = torch.tensor([5.0, 50.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():
        ctrl = PIController(rtol=1e-6, atol=1e-8)
        sol = neuralode.solve(van_der_pol(mus), y0, t, method=Kvaerno5(), controller=ctrl,
                              lane=PerSample())  # fmt: skip
    assert len(sol.stats.nfe_per_sample) == 2
    assert sol.stats.nfe_per_sample[0] != sol.stats.nfe_per_sample[1]
    with pytest.raises(ValueError, match="direct backpropagation only"):
        neuralode.odeint(van_der_pol(mus), y0, t, method="kvaerno5", options=PER_SAMPLE,
                         gradient="checkpoint")  # fmt: skip
    with pytest.raises(ValueError, match="direct backpropagation only"):
        neuralode.odeint_adjoint(van_der_pol(mus), y0, t, method="kvaerno5", options=PER_SAMPLE,
                                 adjoint_params=())  # fmt: skip
    with pytest.raises(ValueError, match="one Jacobian block per sample"):
        neuralode.odeint(van_der_pol(mus), y0, t, method="kvaerno5",
                         options={**PER_SAMPLE, "linear_solver": "dense"})  # fmt: skip


def test_a_nan_in_one_sample_is_named():
    def f(t, y):
        out = -1e3 * y
        return torch.where(t.reshape(-1, 1) > 0.5, out * torch.tensor([[1.0], [float("nan")]]),
                           out)  # fmt: skip

    with pytest.raises(neuralode.NonFiniteStateError), torch.no_grad():
        neuralode.odeint(f, torch.ones(2, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                         method="kvaerno5", options=PER_SAMPLE)  # fmt: skip


# --------------------------------------------------------------------------- linear solvers


def test_auto_takes_per_sample_blocks_for_a_large_batch_of_small_systems():
    """512 Robertson systems (1,536 elements, beyond the dense limit): ``auto`` finds the
    samples independent and factorises one 3 × 3 block each (never Krylov, never the dense
    Jacobian of the batch); the answer is Radau's for every sample."""
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64).repeat(512, 1)
    y0[:, 0] += torch.linspace(0.0, 0.5, 512, dtype=F64)
    t = torch.tensor([0.0, 1.0, 100.0, 1e4], dtype=F64)
    stats = SolveStats()
    with torch.no_grad():
        ys = neuralode.odeint(robertson, y0, t, method="kvaerno5", rtol=1e-6, atol=1e-10,
                              stats=stats)  # fmt: skip
    assert stats.jacobians is not None and stats.jacobians >= 1  # (Krylov forms none)
    for b in (0, 255, 511):
        ref = radau(robertson, y0[b], t, atol=1e-14)
        np.testing.assert_allclose(ys[:, b].numpy(), ref, rtol=1e-4, atol=1e-9)


def test_a_coupled_batch_is_not_taken_for_blocks():
    """Dynamics that mix the samples (a shared mean): ``auto`` sees the coupling and solves
    with Krylov; the answer is the matrix exponential's."""
    B, n = 400, 3  # 1,200 elements, beyond the dense limit
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(B, n, generator=gen, dtype=F64)

    def f(t, y):
        return -50.0 * y + 10.0 * y.mean(dim=0, keepdim=True)

    stats = SolveStats()
    with torch.no_grad():
        y1 = neuralode.odeint(f, y0, torch.tensor([0.0, 0.2], dtype=F64), method="kvaerno5",
                              rtol=1e-7, atol=1e-9, stats=stats)[-1]  # fmt: skip
    assert stats.jacobians is None  # Krylov: no Jacobian formed
    mean = y0.mean(dim=0, keepdim=True)
    exact = (y0 - mean) * np.exp(-50.0 * 0.2) + mean * np.exp(-40.0 * 0.2)
    torch.testing.assert_close(y1, exact, rtol=1e-5, atol=1e-8)


def test_krylov_converges_on_robertson():
    """Matrix-free Newton–Krylov in the variables scaled by the error weights reaches t = 1e6
    on Robertson's kinetics (it stalled near t ≈ 9e3 unscaled) and agrees with Radau."""
    t = torch.tensor([0.0, 1.0, 1e2, 1e4, 1e6], dtype=F64)
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    with torch.no_grad():
        ys = neuralode.odeint(robertson, y0, t, method="kvaerno5", rtol=1e-6, atol=1e-10,
                              options={"linear_solver": "krylov"})  # fmt: skip
    ref = radau(robertson, y0, t, atol=1e-14)
    np.testing.assert_allclose(ys.numpy(), ref, rtol=1e-3, atol=1e-9)


def test_block_is_refused_where_there_is_no_batch():
    with pytest.raises(ValueError, match="linear_solver='block' needs a batch"):
        neuralode.odeint(robertson, torch.tensor([1.0, 0.0, 0.0], dtype=F64),
                         torch.tensor([0.0, 1.0], dtype=F64), method="kvaerno5",
                         options={"linear_solver": "block"})  # fmt: skip
