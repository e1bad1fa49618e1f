"""The native engine: tableaux, agreement with torchdiffeq and exact solutions, order of
convergence, the three gradient methods, per-sample batches, fall-through."""

import math
import weakref

import pytest
import torch
import torchdiffeq
from torch import nn

import neuralode
from neuralode import NonFiniteStateError, SolverError, SolveStats
from neuralode.solvers._evaluator import Evaluator
from neuralode.solvers._loops import solve_fixed
from neuralode.solvers._methods import ExplicitRK
from neuralode.solvers._tableau import ADAPTIVE, FIXED, TABLEAUX, ButcherTableau
from problems import PROBLEMS

NATIVE = dict(backend="native")


class Field(nn.Module):
    def __init__(self, dim=3, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


# ------------------------------------------------------------------------------ tableaux


def test_tableaux_are_consistent_and_know_fsal():
    assert set(FIXED) == {"euler", "midpoint", "heun2", "heun3", "rk4"}
    assert set(ADAPTIVE) == {"adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8", "tsit5"}
    for tab in TABLEAUX.values():
        assert abs(math.fsum(tab.b) - 1) < 1e-12
        for c, row in zip(tab.c, tab.a):
            assert abs(math.fsum(row) - c) < 1e-12
    assert TABLEAUX["dopri5"].fsal and TABLEAUX["tsit5"].fsal and TABLEAUX["bosh3"].fsal
    assert not TABLEAUX["rk4"].fsal and not TABLEAUX["fehlberg2"].fsal


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(b=(0.5, 0.4)), "sum to"),
        (dict(a=((), (0.4,))), "row 1 of a sums"),
        (dict(b_err=(0.1, 0.2)), "error weights sum"),
        (dict(c=(0.1, 1.0)), "first node"),
        (dict(a=((),)), "one entry per stage"),
    ],
)
def test_bad_tableau_is_rejected(kwargs, match):
    base = dict(name="bad", order=2, c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**{**base, **kwargs})


# ------------------------------------------------------------------------------ agreement


@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("grid", ["step_size", "t-grid", "cubic"])
@pytest.mark.parametrize("method", sorted(FIXED))
def test_fixed_step_methods_match_torchdiffeq(method, grid, reverse):
    torch.manual_seed(0)
    f = Field().double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)
    if reverse:
        t = t.flip(0)
    options = {
        "t-grid": None,
        "step_size": {"step_size": 0.03},
        "cubic": {"step_size": 0.07, "interp": "cubic"},
    }[grid]
    ours = neuralode.odeint(f, y0, t, method=method, options=options, **NATIVE)
    ref = torchdiffeq.odeint(f, y0, t, method=method, options=options)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", sorted(ADAPTIVE))
def test_adaptive_methods_within_tolerance_of_exact(method, problem, direction):
    p = PROBLEMS[problem]()
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    if direction == "reverse":
        t = t.flip(0)
    tol = 1e-7 if TABLEAUX[method].order <= 2 else 1e-9
    exact = p.exact(t, float(t[0]))
    with torch.no_grad():
        sol = neuralode.odeint(p.func, p.y0, t, method=method, rtol=tol, atol=tol, **NATIVE)
        err = (sol - exact).abs().max().item()
        bound = 1e3 * tol
        if method != "tsit5":  # torchdiffeq, same method and tolerance: as accurate or better
            ref = torchdiffeq.odeint(p.func, p.y0, t, method=method, rtol=tol, atol=tol)
            # dopri8 takes long steps and, as torchdiffeq, interpolates at 4th order
            factor = 5 if method == "dopri8" else 2
            bound = max(bound, factor * (ref - exact).abs().max().item())
    assert err < bound, f"{method}: error {err:.3g} for tolerance {tol:g}"


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_adaptive_agrees_with_torchdiffeq_and_uses_its_step_heuristic(method):
    torch.manual_seed(0)
    f = Field().double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    ours_stats, ref_stats = SolveStats(), SolveStats()
    ours = neuralode.odeint(
        f, y0, t, method=method, rtol=1e-6, atol=1e-8, stats=ours_stats, **NATIVE
    )
    ref = neuralode.odeint(
        f, y0, t, method=method, rtol=1e-6, atol=1e-8, stats=ref_stats, backend="torchdiffeq"
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert abs(ours_stats.nfe_forward - ref_stats.nfe_forward) <= 0.1 * ref_stats.nfe_forward


def _convergence_slope(tab, hs, problem, T):
    p = PROBLEMS[problem]()
    errors = []
    for h in hs:
        ev = Evaluator(p.func, 1.0, torch.float64, torch.device("cpu"), SolveStats())
        with torch.no_grad():
            y = solve_fixed(ev, ExplicitRK(tab), p.y0, [0.0, T], h)[-1]
        errors.append((y - p.exact([T], 0.0)[0]).abs().max().item())
    x = [math.log(h) for h in hs]
    y = [math.log(e) for e in errors]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return slope, errors


@pytest.mark.parametrize("method", sorted(TABLEAUX))
def test_order_of_convergence(method):
    """Least-squares slope of log error against log step size ≈ the method's order."""
    tab = TABLEAUX[method]
    if tab.order <= 4:
        slope, errors = _convergence_slope(
            tab, [1 / 8, 1 / 16, 1 / 32, 1 / 64], "linear_system", 2.0
        )
    else:  # high orders reach round-off quickly: a longer, oscillating problem
        hs = [0.8, 0.4, 0.2] if tab.order >= 8 else [0.2, 0.1, 0.05, 0.025]
        slope, errors = _convergence_slope(tab, hs, "harmonic_oscillator", 10.0)
    assert errors[-1] < errors[0]
    assert abs(slope - tab.order) < max(0.4, 0.12 * tab.order), (
        f"{method}: slope {slope:.2f}, order {tab.order}"
    )


def test_dense_output_is_fourth_order():
    """Interpolated values inside steps converge at least like h^4 when the steps shrink."""
    p = PROBLEMS["harmonic_oscillator"]()
    t = torch.linspace(0.0, 2.0, 41, dtype=torch.float64)
    exact = p.exact(t, 0.0)
    errs = []
    for first in (0.4, 0.2, 0.1):
        with torch.no_grad():
            sol = neuralode.odeint(
                p.func,
                p.y0,
                t,
                method="dopri5",
                rtol=1e3,
                atol=1e3,
                options={"first_step": first, "max_step": first, "ifactor": 1.0},
                **NATIVE,
            )
        errs.append((sol - exact).abs().max().item())
    assert errs[0] / errs[1] > 2**4 * 0.8 and errs[1] / errs[2] > 2**4 * 0.8


# ------------------------------------------------------------------------------ gradients


def _grads(f, y0, t, solve=neuralode.odeint, **kw):
    y = y0.clone().requires_grad_(True)
    out = solve(f, y, t, **kw)
    return torch.autograd.grad((out**2).sum() + out[-1].sum(), [y, *f.parameters()])


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_three_gradient_methods_agree(method):
    torch.manual_seed(0)
    f = Field().double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    # outputs on the fixed grid, so that no linear interpolation separates the gradients
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    opts = {"step_size": 1 / 64} if method == "rk4" else None
    kw = dict(method=method, options=opts, rtol=1e-10, atol=1e-10, **NATIVE)
    direct = _grads(f, y0, t, **kw)
    checkpoint = _grads(f, y0, t, gradient="checkpoint", **kw)
    adjoint = _grads(
        f,
        y0,
        t,
        solve=neuralode.odeint_adjoint,
        adjoint_options=None if opts is None else dict(opts),
        **kw,
    )
    for d, c, a in zip(direct, checkpoint, adjoint):
        torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-12)  # same discrete gradient
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-7)


def test_checkpoint_is_exact_for_loose_adaptive_solves():
    torch.manual_seed(0)
    f = Field().double()
    y0 = torch.randn(8, 3, dtype=torch.float64)
    t = torch.linspace(0.0, 3.0, 5, dtype=torch.float64)
    kw = dict(rtol=1e-3, atol=1e-4, **NATIVE)
    for d, c in zip(_grads(f, y0, t, **kw), _grads(f, y0, t, gradient="checkpoint", **kw)):
        torch.testing.assert_close(c, d, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_gradcheck(gradient):
    torch.manual_seed(0)
    A = (torch.randn(2, 2, dtype=torch.float64) * 0.5).requires_grad_(True)
    y0 = torch.randn(2, dtype=torch.float64, requires_grad=True)

    class Lin(nn.Module):
        def __init__(self, a):
            super().__init__()
            self.a = a

        def forward(self, t, y):
            return torch.tanh(y @ self.a.T)

    def run(a, y):
        f = Lin(a)
        t = torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64)
        if gradient == "adjoint":
            return neuralode.odeint_adjoint(
                f, y, t, rtol=1e-11, atol=1e-11, adjoint_params=(a,), **NATIVE
            )
        return (
            neuralode.odeint(
                f, y, t, method="rk4", options={"step_size": 0.05}, gradient=gradient, **NATIVE
            )
            if gradient == "checkpoint"
            else (neuralode.odeint(f, y, t, method="rk4", options={"step_size": 0.05}, **NATIVE))
        )

    if gradient == "checkpoint":
        # parameters are found on the module: wrap A in a parameter-holding module
        class Holder(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Parameter(A.detach().clone())

            def forward(self, t, y):
                return torch.tanh(y @ self.a.T)

        h = Holder().double()
        t = torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64)

        def run_ckpt(y):
            return neuralode.odeint(
                h, y, t, method="rk4", options={"step_size": 0.05}, gradient="checkpoint", **NATIVE
            )

        assert torch.autograd.gradcheck(run_ckpt, (y0,))
        # parameter gradient against finite differences
        (g,) = torch.autograd.grad(run_ckpt(y0.detach()).sum(), h.a)
        eps = 1e-6
        with torch.no_grad():
            h.a[0, 1] += eps
            up = run_ckpt(y0.detach()).sum()
            h.a[0, 1] -= 2 * eps
            down = run_ckpt(y0.detach()).sum()
            h.a[0, 1] += eps
        assert abs(float(g[0, 1]) - float((up - down) / (2 * eps))) < 1e-7
    else:
        assert torch.autograd.gradcheck(run, (A, y0), atol=1e-6, rtol=1e-5)


def test_adjoint_counts_backward_work_and_the_full_norm_is_default():
    """torchdiffeq's default backward norm is the whole augmented state; the seminorm takes
    fewer steps."""
    torch.manual_seed(0)
    f = Field(8, 32)
    y0 = torch.randn(16, 8)
    t = torch.tensor([0.0, 1.0])
    counts = {}
    for norm in ("seminorm", "full"):
        stats = SolveStats()
        neuralode.odeint_adjoint(
            f, y0, t, rtol=1e-6, atol=1e-7, stats=stats, adjoint_options={"norm": norm}, **NATIVE
        ).sum().backward()
        counts[norm] = stats.nfe_backward
        assert stats.steps_accepted_backward > 0
    stats = SolveStats()
    neuralode.odeint_adjoint(f, y0, t, rtol=1e-6, atol=1e-7, stats=stats, **NATIVE).sum().backward()
    assert stats.nfe_backward == counts["full"] >= counts["seminorm"]


def test_checkpoint_needs_a_module():
    with pytest.raises(ValueError, match="nn.Module"):
        neuralode.odeint(
            lambda t, y: -y,
            torch.ones(2, requires_grad=True),
            torch.tensor([0.0, 1.0]),
            gradient="checkpoint",
            **NATIVE,
        )
    with pytest.raises(ValueError, match="gradient must be"):
        neuralode.odeint(Field(), torch.ones(1, 3), torch.tensor([0.0, 1.0]), gradient="adjoint")
    with pytest.raises(ValueError, match="needs backend='native'"):
        neuralode.odeint(
            Field(),
            torch.ones(1, 3),
            torch.tensor([0.0, 1.0]),
            gradient="checkpoint",
            backend="torchdiffeq",
        )


# ------------------------------------------------------------------------------ per sample


class VanDerPol(nn.Module):
    def __init__(self, mu):
        super().__init__()
        self.mu = mu

    def forward(self, t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], dim=1)


def _vdp(mu, **kw):
    stats = SolveStats()
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64).expand(len(mu), 2).clone()
    t = torch.linspace(0.0, 4.0, 5, dtype=torch.float64)
    sol = neuralode.odeint(VanDerPol(mu), y0, t, rtol=1e-6, atol=1e-8, stats=stats, **NATIVE, **kw)
    return sol, stats


def test_per_sample_result_and_nfe_do_not_depend_on_the_batch():
    mu = torch.tensor([0.5, 1.0, 3.0, 8.0], dtype=torch.float64)
    batch, stats = _vdp(mu, options={"batch_mode": "per_sample"})
    other, other_stats = _vdp(
        torch.tensor([8.0, 0.1, 1.0], dtype=torch.float64), options={"batch_mode": "per_sample"}
    )
    for i in range(4):
        alone, alone_stats = _vdp(mu[i : i + 1], options={"batch_mode": "per_sample"})
        torch.testing.assert_close(batch[:, i], alone[:, 0], rtol=1e-12, atol=1e-12)
        assert stats.nfe_per_sample[i] == alone_stats.nfe_per_sample[0]
    # mu = 8 alone, first in one batch and last in another
    torch.testing.assert_close(other[:, 0], batch[:, 3], rtol=1e-12, atol=1e-12)
    assert other_stats.nfe_per_sample[0] == stats.nfe_per_sample[3]


def test_per_sample_takes_the_steps_of_the_hardest_sample():
    mu = torch.tensor([0.2, 1.0, 2.0, 5.0, 10.0], dtype=torch.float64)
    _, joint = _vdp(mu)
    _, per = _vdp(mu, options={"batch_mode": "per_sample"})
    hardest = max(
        (s.steps_accepted + s.steps_rejected)
        for s in (_vdp(mu[i : i + 1])[1] for i in range(len(mu)))
    )
    iterations = per.steps_accepted + per.steps_rejected
    assert iterations <= 1.1 * hardest
    # each sample only pays for itself; the joint step size makes the easy ones pay too
    assert sum(per.nfe_per_sample) < len(mu) * joint.nfe_forward


def test_per_sample_accuracy_and_errors():
    mu = torch.tensor([0.5, 2.0], dtype=torch.float64)
    per, _ = _vdp(mu, options={"batch_mode": "per_sample"})
    joint, _ = _vdp(mu)
    torch.testing.assert_close(per, joint, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch_mode"):
        _vdp(mu, options={"batch_mode": "each"})
    with pytest.raises(ValueError, match="direct backpropagation only"):
        neuralode.odeint(
            Field(),
            torch.randn(2, 3, requires_grad=True),
            torch.tensor([0.0, 1.0]),
            gradient="checkpoint",
            options={"batch_mode": "per_sample"},
            **NATIVE,
        )


def test_per_sample_honours_the_pi_controller():
    """pcoeff was rejected in per-sample mode; the lanes now share one controller, so every
    sample takes the steps it takes alone in the joint lane with the same options."""
    mu = torch.tensor([0.5, 3.0, 8.0], dtype=torch.float64)
    opts = {"pcoeff": 0.2, "icoeff": 0.5}
    per, stats = _vdp(mu, options={"batch_mode": "per_sample", **opts})
    _, plain_stats = _vdp(mu[2:], options={"batch_mode": "per_sample"})
    assert stats.steps_accepted_per_sample[2] != plain_stats.steps_accepted_per_sample[0]
    for i in range(len(mu)):
        alone, alone_stats = _vdp(mu[i : i + 1], options=opts)
        torch.testing.assert_close(per[:, i], alone[:, 0], rtol=1e-9, atol=1e-9)
        assert stats.steps_accepted_per_sample[i] == alone_stats.steps_accepted
        assert stats.steps_rejected_per_sample[i] == alone_stats.steps_rejected


def test_per_sample_lane_takes_every_sample_s_own_output_times():
    """The lane interface of the time-series models: a (batch, n) tensor of times, each row a
    sample's own; every row equals the solve of that sample alone at its times."""
    from neuralode.solvers._loops import AdaptiveConfig, RMSNorm
    from neuralode.solvers._methods import METHODS
    from neuralode.solvers._per_sample import solve_adaptive_per_sample

    mu = torch.tensor([0.5, 3.0, 1.0], dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64).expand(3, 2).clone()
    times = torch.tensor(
        [[0.0, 0.3, 1.1, 2.0], [0.5, 0.6, 0.7, 3.5], [-1.0, 0.0, 2.5, 2.6]], dtype=torch.float64
    )
    cfg = AdaptiveConfig(rtol=1e-7, atol=1e-9, norm=RMSNorm())
    stats = SolveStats()
    ev = Evaluator(VanDerPol(mu), 1.0, torch.float64, torch.device("cpu"), stats)
    with torch.no_grad():
        out = torch.stack(solve_adaptive_per_sample(ev, METHODS["dopri5"], y0, times, cfg))
    for i in range(3):
        alone = neuralode.odeint(VanDerPol(mu[i : i + 1]), y0[i : i + 1], times[i], rtol=1e-7,
                                 atol=1e-9, **NATIVE)  # fmt: skip
        torch.testing.assert_close(out[:, i], alone[:, 0], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"shape \(batch, n\) = \(3, n\)"):
        solve_adaptive_per_sample(ev, METHODS["dopri5"], y0, times[:2], cfg)


# ------------------------------------------------------------------------------ options etc.


def test_jump_t_handles_a_discontinuity():
    def f(t, y):
        return torch.ones_like(y) if float(t) < 0.5 else -torch.ones_like(y)

    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.zeros(1, dtype=torch.float64)
    with_jump, without = SolveStats(), SolveStats()
    a = neuralode.odeint(
        f, y0, t, rtol=1e-8, atol=1e-8, options={"jump_t": [0.5]}, stats=with_jump, **NATIVE
    )
    b = neuralode.odeint(f, y0, t, rtol=1e-8, atol=1e-8, stats=without, **NATIVE)
    assert abs(float(a[-1])) < 1e-12  # exact: up to 0.5 and back down
    assert abs(float(b[-1])) < 1e-6
    assert with_jump.nfe_forward < without.nfe_forward


def test_step_t_min_max_step_and_pi_controller():
    p = PROBLEMS["harmonic_oscillator"]()
    t = torch.linspace(0.0, 3.0, 4, dtype=torch.float64)
    exact = p.exact(t, 0.0)
    for options in (
        {"step_t": [1.234]},
        {"max_step": 0.05},
        {"pcoeff": 0.2, "icoeff": 0.8},
        {"first_step": 0.01, "safety": 0.8, "ifactor": 5.0, "dfactor": 0.3},
    ):
        stats = SolveStats()
        sol = neuralode.odeint(
            p.func, p.y0, t, rtol=1e-8, atol=1e-8, options=options, stats=stats, **NATIVE
        )
        torch.testing.assert_close(sol, exact, rtol=1e-5, atol=1e-6)
        if "max_step" in options:
            assert stats.steps_accepted >= 60
    with pytest.raises(SolverError, match="max_num_steps"):
        neuralode.odeint(p.func, p.y0, t, options={"max_num_steps": 2}, **NATIVE)
    with pytest.raises(ValueError, match=r"unknown options \['step_size'\]"):
        neuralode.odeint(p.func, p.y0, t, options={"step_size": 0.1}, **NATIVE)


def test_tuple_state_and_custom_norm():
    def f(t, y):
        a, b = y
        return (b, -a)

    y0 = (torch.tensor([1.0, 0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    a, b = neuralode.odeint(f, y0, t, rtol=1e-9, atol=1e-9, **NATIVE)
    torch.testing.assert_close(a, torch.cos(t)[:, None] * y0[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b, -torch.sin(t)[:, None] * y0[0], rtol=1e-6, atol=1e-7)
    seen = []

    def norm(state):
        seen.append(isinstance(state, tuple))
        return max(s.abs().max() for s in state)

    neuralode.odeint(f, y0, t, options={"norm": norm}, **NATIVE)
    assert seen and all(seen)


def test_unsupported_features_fall_through_to_torchdiffeq():
    f = Field().double()
    y0 = torch.randn(2, 3, dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    stats = SolveStats()
    ours = neuralode.odeint(
        f, y0, t, method="implicit_adams", options={"step_size": 0.1}, stats=stats, **NATIVE
    )
    ref = torchdiffeq.odeint(f, y0, t, method="implicit_adams", options={"step_size": 0.1})
    assert torch.equal(ours, ref)
    assert stats.backend == "torchdiffeq"
    event_t, _ = neuralode.odeint(
        lambda s, y: -torch.ones_like(y),
        torch.ones(1),
        torch.tensor([0.0, 5.0]),
        event_fn=lambda s, y: y[0],
        **NATIVE,
    )
    assert abs(float(event_t) - 1.0) < 1e-5


def test_native_errors():
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(NonFiniteStateError, match=r"t ≈ 0\.4") as info:
        neuralode.odeint(
            lambda s, y: y * (float("nan") if float(s) > 0.4 else 1.0), torch.ones(2), t, **NATIVE
        )
    assert 0.4 < info.value.time <= 0.5
    with pytest.raises(ValueError, match=r"returned dy/dt of shape"):
        neuralode.odeint(lambda s, y: y[:, :1], torch.ones(2, 3), t, **NATIVE)
    with pytest.raises(SolverError, match=r"t ≈"):
        neuralode.odeint(lambda s, y: y * y, torch.ones(1), torch.tensor([0.0, 2.0]), **NATIVE)


def test_native_stats_match_a_counter():
    calls = []

    class Counting(Field):
        def forward(self, t, y):
            calls.append(1)
            return super().forward(t, y)

    f = Counting()
    stats = SolveStats()
    y = neuralode.odeint_adjoint(
        f, torch.randn(3, 3), torch.tensor([0.0, 1.0]), stats=stats, **NATIVE
    )
    assert stats.nfe_forward == len(calls)
    y.sum().backward()
    assert stats.nfe_forward + stats.nfe_backward == len(calls)
    assert stats.backend == "native"


@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize(
    ("method", "options"),
    [("dopri5", None), ("bosh3", None), ("dopri8", None), ("rk4", {"step_size": 0.1}),
     ("dopri5", {"batch_mode": "per_sample"})],
)  # fmt: skip
def test_an_inference_solve_keeps_one_step_of_derivatives(method, options, fused, monkeypatch):
    """Without a graph, a step's stage derivatives are freed before the next step makes its
    own: whenever the dynamics run, fewer of their earlier outputs are alive than the method
    has stages (counted with weak references; keeping the last step's stages through the
    next step, as the loops once did, holds up to twice that)."""
    monkeypatch.setenv("NEURALODE_FUSED", fused)
    outputs: list[weakref.ref] = []
    alive_at_calls: list[int] = []

    def f(t, y):
        alive_at_calls.append(sum(r() is not None for r in outputs))
        dy = -y * torch.cos(t).reshape(-1, 1) if t.dim() else -y * torch.cos(t)
        outputs.append(weakref.ref(dy))
        return dy

    torch.manual_seed(0)
    with torch.no_grad():
        y = neuralode.odeint(f, torch.randn(16, 4), torch.linspace(0.0, 5.0, 3), rtol=1e-6,
                             atol=1e-8, method=method, options=options)  # fmt: skip
    exact = torch.linspace(0.0, 5.0, 3).sin().neg().exp()  # y(t) = y0 exp(-sin t)
    assert torch.allclose(y[:, 0, 0] / y[0, 0, 0], exact, rtol=1e-3)
    stages = neuralode.solvers.METHODS.get(method).stages
    assert len(alive_at_calls) > 4 * stages  # many steps were taken
    assert max(alive_at_calls) < stages


def test_regularized_block_on_native_backend():
    f = neuralode.ODEFunc(3, 8).double()
    h = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for kw in (
        {"backend": "torchdiffeq"},
        {"backend": "native"},
        {"backend": "native", "adjoint": True},
    ):
        block = neuralode.NeuralODEBlock(
            f,
            rtol=1e-9,
            atol=1e-9,
            regularizers=[neuralode.KineticEnergy(1.0), neuralode.JacobianFrobenius(1.0, "exact")],
            **kw,
        )
        out, reg = block(h)
        grads.append(torch.autograd.grad(out.sum() + reg, list(f.parameters())))
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_adjoint_of_dynamics_with_non_contiguous_gradients():
    """TimeConcatODEFunc concatenates t to its input: the vector-Jacobian product with respect
    to y is a slice of a larger gradient, not a contiguous tensor."""
    f = neuralode.TimeConcatODEFunc(3, 8).double()
    h = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = []
    for solve in (neuralode.odeint, neuralode.odeint_adjoint):
        out = solve(f, h, t, rtol=1e-9, atol=1e-9, **NATIVE)
        grads.append(torch.autograd.grad(out.pow(2).sum(), list(f.parameters())))
    for a, d in zip(*grads, strict=True):
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ components


def test_the_adaptive_loop_follows_a_scripted_method_and_the_controller():
    """A stub method (y1 = y + dt, scripted error ratios) in the joint lane: the loop accepts
    exactly the attempts with ratio <= 1, moves the time by the accepted steps only and sizes
    every next step by the controller's formula."""
    from neuralode.solvers._controller import PIController
    from neuralode.solvers._loops import AdaptiveConfig, RMSNorm, solve_adaptive
    from neuralode.solvers._methods import Method, Stepper

    ratios = [0.5, 2.0, 0.9, 0.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    attempts = []

    class Scripted(Stepper):
        def step(self, t, y, f0, dt, last_node=None):
            attempts.append((t, dt))
            return y + dt, [f0]

        def error_ratio(self, y, y1, ks, dt):
            return ratios[len(attempts) - 1]

        def dense(self, y0, y1, ks, f1, dt, theta):
            return y0 + theta * dt

    class Stub(Method):
        name, order, adaptive, reuses_last_stage = "stub", 2, True, True
        stepper_class = Scripted

    ctrl = PIController(safety=0.8, ifactor=5.0, dfactor=0.3)
    cfg = AdaptiveConfig(rtol=1e-6, atol=1e-6, norm=RMSNorm(), controller=ctrl, first_step=0.1)
    ev = Evaluator(lambda t, y: torch.ones_like(y), 1.0, torch.float64, torch.device("cpu"),
                   SolveStats())  # fmt: skip
    out = solve_adaptive(ev, Stub(), torch.zeros(1, dtype=torch.float64), [0.0, 1.0], cfg)
    t, dt = 0.0, 0.1
    for (t_seen, dt_seen), ratio in zip(attempts, ratios, strict=False):
        assert (t_seen, dt_seen) == pytest.approx((t, dt))
        if ratio <= 1.0:
            factor = 5.0 if ratio == 0 else min(5.0, max(0.8 * ratio**-0.5, 1.0))
            t = t + dt
        else:
            factor = max(0.8 * ratio**-0.5, 0.3)
        dt = dt * factor  # (the last step passes t = 1; the output there is interpolated)
    assert float(out[-1]) == pytest.approx(1.0)  # y = t, by the stub's steps and dense output
    assert ev.stats.steps_rejected == 1


def test_the_pi_controller_on_floats_and_per_sample_tensors_agrees():
    """One formula serves both lanes: the same ratios give the same factors."""
    from neuralode.solvers._controller import PIController

    ctrl = PIController(pcoeff=0.2, icoeff=0.6)
    ratios = [0.0, 1e-3, 0.5, 1.0, 1.5, 40.0]
    prev = [1.0, 0.2, 3.0, 1e-4, 0.7, 2.0]
    tensor = ctrl.factor(torch.tensor(ratios, dtype=torch.float64),
                         torch.tensor(prev, dtype=torch.float64), 5)  # fmt: skip
    for i, (r, q) in enumerate(zip(ratios, prev, strict=True)):
        expected = 10.0 if r == 0 else min(10.0, max(0.9 * r ** (-0.8 / 5) * q ** (0.2 / 5),
                                                     1.0 if r < 1 else 0.2))  # fmt: skip
        assert ctrl.factor(r, q, 5) == pytest.approx(expected)
        assert float(tensor[i]) == pytest.approx(expected)


def test_a_registered_gradient_method_is_used_by_name():
    """A new gradient method is a class plus a registration: a stub that records its calls and
    delegates to the checkpointed one is reachable as odeint(..., gradient=name), and its
    gradient is the checkpointed one's."""
    from neuralode.solvers import GRADIENT_METHODS, Checkpoint, register_gradient_method

    calls = []

    class Recording(Checkpoint):
        name = "recording"

        def solve(self, plan, y0, params):
            calls.append((plan.method.name, len(params)))
            return super().solve(plan, y0, params)

    register_gradient_method(Recording())
    try:
        f = Field()
        y0 = torch.randn(4, 3, requires_grad=True)
        t = torch.tensor([0.0, 0.5, 1.0])
        grads = {}
        for name in ("recording", "checkpoint"):
            sol = neuralode.odeint(f, y0, t, gradient=name, **NATIVE)
            grads[name] = torch.autograd.grad(sol.pow(2).sum(), (y0, *f.parameters()))
        assert calls == [("dopri5", len(list(f.parameters())))]
        for a, b in zip(grads["recording"], grads["checkpoint"], strict=True):
            torch.testing.assert_close(a, b)
        with pytest.raises(ValueError, match="'recording'") as info:
            neuralode.odeint(f, y0, t, gradient="adjoint", **NATIVE)
        assert "odeint_adjoint" in str(info.value)
    finally:
        GRADIENT_METHODS.unregister("recording")


def _count_host_reads(monkeypatch) -> list:
    """Every read of a tensor's value on the host (a synchronisation on a GPU), on the tensor
    path that GPU states take: the list grows by one per read."""
    monkeypatch.setenv("NEURALODE_FUSED", "0")
    reads = []
    for name in ("__float__", "__bool__", "__int__", "__index__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_the_joint_lane_reads_from_the_device_once_per_step(monkeypatch):
    """On a GPU every read of a tensor's value on the host is a synchronisation. The tensor path
    (the one GPU states take) reads one number per step attempt, the error ratio, plus a few per
    solve (the times, the initial step's norms, the final check)."""
    reads = _count_host_reads(monkeypatch)
    f = Field(dim=4).double()
    seen = []
    for rtol in (1e-4, 1e-10):
        stats = SolveStats()
        reads.clear()
        neuralode.odeint(f, torch.randn(8, 4, dtype=torch.float64),
                         torch.linspace(0, 20, 5, dtype=torch.float64), rtol=rtol, atol=rtol,
                         stats=stats, **NATIVE)  # fmt: skip
        attempts = stats.steps_accepted + stats.steps_rejected
        seen.append(attempts)
        assert len(reads) <= attempts + 10, (len(reads), attempts)
    assert seen[1] > seen[0] + 10  # the bound holds as the steps grow


def test_per_sample_gradients_are_each_sample_s_own():
    """Direct backpropagation through the per-sample lane (outputs written per sample) gives
    every sample the gradient it has when solved alone in the joint lane."""
    torch.manual_seed(0)
    net = Field().double().net

    def f(t, y):  # t has shape (batch,) in per-sample mode
        return net(y) * torch.cos(t).reshape(-1, 1)

    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    kw = dict(rtol=1e-9, atol=1e-11, **NATIVE)
    per = neuralode.odeint(f, y0, t, options={"batch_mode": "per_sample"}, **kw)
    (g_per,) = torch.autograd.grad(per.pow(2).sum(), y0)
    for i in range(4):
        alone = neuralode.odeint(f, y0[i : i + 1], t, **kw)
        (g_alone,) = torch.autograd.grad(alone.pow(2).sum(), y0)
        torch.testing.assert_close(g_per[i], g_alone[i], rtol=1e-7, atol=1e-9)


def test_the_per_sample_lane_reads_from_the_device_once_per_iteration(monkeypatch):
    reads = _count_host_reads(monkeypatch)
    mu = torch.tensor([0.5, 2.0, 6.0], dtype=torch.float64)
    reads.clear()
    _, stats = _vdp(mu, options={"batch_mode": "per_sample"})
    iterations = stats.steps_accepted + stats.steps_rejected  # the hardest sample's
    assert iterations > 50
    assert len(reads) <= iterations + 20, (len(reads), iterations)


def test_a_controller_of_one_s_own_is_one_class():
    """options={'controller': ...} takes a StepSizeController object (or a registered one's
    name): PIController(...) gives what the same torchdiffeq options give, and a stub that
    never changes the step (after a scripted first step) takes exactly T / first_step steps,
    in both lanes."""
    from neuralode.solvers._controller import PIController, StepSizeController

    class Constant(StepSizeController):
        def factor(self, ratio, prev_ratio, order):
            return 1.0 if not isinstance(ratio, torch.Tensor) else torch.ones_like(ratio)

    mu = torch.tensor([0.5, 2.0], dtype=torch.float64)
    by_options, s1 = _vdp(mu, options={"pcoeff": 0.3, "safety": 0.8})
    by_object, s2 = _vdp(mu, options={"controller": PIController(pcoeff=0.3, safety=0.8)})
    torch.testing.assert_close(by_object, by_options, rtol=0, atol=0)
    assert (s1.steps_accepted, s1.steps_rejected) == (s2.steps_accepted, s2.steps_rejected)
    for mode in ("joint", "per_sample"):
        stats = SolveStats()
        y = neuralode.odeint(lambda t, y: -y, torch.ones(3, 1, dtype=torch.float64),
                             torch.tensor([0.0, 1.0], dtype=torch.float64),
                             options={"controller": Constant(), "first_step": 0.01,
                                      "batch_mode": mode}, stats=stats, **NATIVE)  # fmt: skip
        assert stats.steps_accepted == 100 and stats.steps_rejected == 0
        torch.testing.assert_close(y[-1], torch.full((3, 1), math.exp(-1.0), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"replaces the options \['safety'\]"):
        _vdp(mu, options={"controller": PIController(), "safety": 0.5})
    with pytest.raises(TypeError, match="StepSizeController.*or the name of one"):
        _vdp(mu, options={"controller": 5})
    with pytest.raises(ValueError, match="unknown step-size controller 'pi'.*'pid'"):
        _vdp(mu, options={"controller": "pi"})  # (a name: see test_object_api)


def test_per_sample_times_at_the_public_api():
    """odeint with a (batch, n) t and batch_mode='per_sample': row b of the result's sample b
    is its state at its own times (the matrix exponential), equal to solving it alone; a
    shorter series is padded by repeating its last time; decreasing rows solve backwards."""
    torch.manual_seed(3)
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]], dtype=torch.float64)

    def f(t, y):
        return y @ A.T

    y0 = torch.randn(4, 2, dtype=torch.float64)
    t = torch.sort(torch.rand(4, 6, dtype=torch.float64) * 5, dim=1).values
    t[:, 0] = torch.tensor([0.0, 0.3, -1.0, 0.0], dtype=torch.float64)
    t[3, 4:] = t[3, 3]  # a series of four observations, padded
    kw = dict(rtol=1e-9, atol=1e-11, **NATIVE)
    stats = SolveStats()
    out = neuralode.odeint(f, y0, t, options={"batch_mode": "per_sample"}, stats=stats, **kw)
    assert out.shape == (6, 4, 2)
    for b in range(4):
        exact = torch.stack(
            [y0[b] @ torch.linalg.matrix_exp(A * float(s - t[b, 0])).T for s in t[b]]
        )
        torch.testing.assert_close(out[:, b], exact, rtol=1e-7, atol=1e-8)
        n = 4 if b == 3 else 6
        alone = neuralode.odeint(f, y0[b : b + 1], t[b, :n], options={"batch_mode": "per_sample"},
                                 **kw)  # fmt: skip
        torch.testing.assert_close(out[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
    # backwards in time from the last states, every row decreasing: back to the start
    back = neuralode.odeint(f, out[-1, :3], t[:3].flip(1), options={"batch_mode": "per_sample"},
                            **kw)  # fmt: skip
    torch.testing.assert_close(back[-1], y0[:3], rtol=1e-7, atol=1e-8)
    # a series observed only at its start (its row one repeated time) keeps its state, and the
    # direction comes from the rows that move, even when the first row does not
    rows = t[:3].flip(1).clone()
    rows[0] = rows[0, 0]
    back = neuralode.odeint(f, out[-1, :3], rows, options={"batch_mode": "per_sample"}, **kw)
    torch.testing.assert_close(back[:, 0], out[-1, 0].expand(6, 2), rtol=0, atol=0)
    torch.testing.assert_close(back[-1, 1:], y0[1:3], rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="2-D t, every sample its own times, needs options"):
        neuralode.odeint(f, y0, t, **kw)
    with pytest.raises(ValueError, match="4 samples in its first dimension"):
        neuralode.odeint(f, y0[:3], t, options={"batch_mode": "per_sample"}, **kw)
    bad = t.clone()
    bad[1, 2] = bad[1, 1] - 0.1
    with pytest.raises(ValueError, match="row 1 is"):
        neuralode.odeint(f, y0, bad, options={"batch_mode": "per_sample"}, **kw)
    with pytest.raises(ValueError, match="backend='native'"):
        neuralode.odeint(f, y0, t, options={"batch_mode": "per_sample"}, backend="torchdiffeq")
