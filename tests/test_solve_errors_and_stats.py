"""Bad input gets a clear error before any work; statistics are counted for the user."""

import math

import pytest
import torch
from torch import nn

import neuralode
from neuralode import NonFiniteStateError, SolverError, SolveStats


class Counting(nn.Module):
    """Dynamics that count their own calls — the tutorial's pattern, as an independent
    reference for our counters."""

    def __init__(self, dim=3):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.tanh(self.lin(y))


def _t():
    return torch.linspace(0.0, 1.0, 3)


# ---------------------------------------------------------------- validation


def _calls_made(kwargs, y0=None, t=None, func=None):
    f = func or Counting()
    with pytest.raises((ValueError, TypeError)) as info:
        neuralode.odeint(
            f, torch.randn(2, 3) if y0 is None else y0, _t() if t is None else t, **kwargs
        )
    return f, info


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"method": "dopri"}, ValueError, r"unknown method 'dopri'.*dopri5.*rk4"),
        ({"rtol": -1e-3}, ValueError, r"rtol must be positive.*-0.001"),
        ({"atol": 0.0}, ValueError, r"atol must be positive"),
        ({"rtol": torch.tensor([1e-3, -1.0])}, ValueError, r"rtol must be positive"),
        ({"atol": float("nan")}, ValueError, r"atol must be positive and finite"),
        ({"rtol": "1e-3"}, TypeError, r"rtol must be a positive float"),
        (
            {"method": "rk4", "options": {"stepsize": 0.1}},
            ValueError,
            r"unknown options \['stepsize'\].*step_size",
        ),
        ({"method": "rk4", "options": {"step_size": -0.1}}, ValueError, r"step_size.*positive"),
        ({"options": [1, 2]}, TypeError, r"options must be a dict"),
        ({"backend": "jax"}, ValueError, r"unknown backend 'jax'.*torchdiffeq"),
    ],
    ids=[
        "method",
        "rtol-neg",
        "atol-zero",
        "rtol-tensor",
        "atol-nan",
        "rtol-str",
        "option-key",
        "option-value",
        "options-type",
        "backend",
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs, exc, match):
    f = Counting()
    with pytest.raises(exc, match=match):
        neuralode.odeint(f, torch.randn(2, 3), _t(), **kwargs)
    assert f.calls == 0


@pytest.mark.parametrize(
    ("t", "exc", "match"),
    [
        (torch.zeros(2, 2), ValueError, r"t must be 1-D.*shape \(2, 2\)"),
        (torch.tensor([0, 1]), TypeError, r"t must be a floating-point tensor.*int64"),
        (torch.tensor([0.0, 1.0, 1.0]), ValueError, r"strictly increasing or strictly decreasing"),
        (torch.tensor([0.0, 1.0, 0.5]), ValueError, r"strictly increasing or strictly decreasing"),
        (torch.tensor([]), ValueError, r"at least one time"),
        ([0.0, 1.0], TypeError, r"t must be a 1-D floating-point tensor"),
    ],
    ids=["2d", "int", "repeated", "non-monotonic", "empty", "list"],
)
def test_bad_times(t, exc, match):
    f = Counting()
    with pytest.raises(exc, match=match):
        neuralode.odeint(f, torch.randn(2, 3), t)
    assert f.calls == 0


@pytest.mark.parametrize(
    ("y0", "exc", "match"),
    [
        (torch.ones(2, 3, dtype=torch.long), TypeError, r"y0 must be a floating-point.*int64"),
        ((torch.ones(3), torch.ones(3, dtype=torch.int32)), TypeError, r"y0\[1\] must be"),
        ([1.0, 2.0], TypeError, r"y0 must be a floating-point tensor or a non-empty tuple"),
    ],
    ids=["int", "tuple-int", "list"],
)
def test_bad_initial_state(y0, exc, match):
    f = Counting()
    with pytest.raises(exc, match=match):
        neuralode.odeint(f, y0, _t())
    assert f.calls == 0


def test_wrong_output_shape_is_reported_at_the_first_evaluation():
    f = Counting()
    with pytest.raises(ValueError, match=r"returned dy/dt of shape \(2, 4\).*state y has shape"):
        neuralode.odeint(lambda t, y: torch.cat([y, y[:, :1]], 1), torch.randn(2, 3), _t())
    with pytest.raises(TypeError, match="must be callable"):
        neuralode.odeint(42, torch.randn(2, 3), _t())
    assert f.calls == 0


def test_adjoint_argument_errors():
    y0 = torch.randn(2, 3)
    with pytest.raises(ValueError, match="must be an nn.Module.*adjoint_params"):
        neuralode.odeint_adjoint(lambda t, y: -y, y0, _t())
    with pytest.raises(ValueError, match="unknown adjoint_method 'rk5'"):
        neuralode.odeint_adjoint(Counting(), y0, _t(), adjoint_method="rk5")
    with pytest.raises(ValueError, match="adjoint_rtol must be positive"):
        neuralode.odeint_adjoint(Counting(), y0, _t(), adjoint_rtol=-1.0)
    with pytest.raises(ValueError, match="unknown adjoint_options"):
        neuralode.odeint_adjoint(Counting(), y0, _t(), adjoint_options={"nrom": "seminorm"})
    with pytest.raises(ValueError, match="'seminorm', 'full' or a callable"):
        neuralode.odeint_adjoint(Counting(), y0, _t(), adjoint_options={"norm": "max"})
    with pytest.raises(TypeError, match=r"adjoint_params\[0\] must be a tensor"):
        neuralode.odeint_adjoint(Counting(), y0, _t(), adjoint_params=[1.0])


def test_nan_during_solve_names_the_time():
    def f(t, y):
        return y * (float("nan") if float(t) > 0.4 else 1.0)

    with pytest.raises(NonFiniteStateError, match=r"t ≈ 0\.4.*learning rate.*tolerance") as info:
        neuralode.odeint(f, torch.ones(2), torch.tensor([0.0, 1.0]))
    assert 0.4 <= info.value.time <= 0.5


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_nan_with_fixed_step_names_the_output_time(backend):
    def f(t, y):  # infinite from the grid point 0.45 on: the output at 0.5 is the first hit
        return y * (float("inf") if float(t) > 0.42 else 1.0)

    t = torch.linspace(0, 1, 11)
    with pytest.raises(NonFiniteStateError, match=r"t ≈ 0\.5") as info:
        neuralode.odeint(
            f, torch.ones(2), t, method="euler", options={"step_size": 0.05}, backend=backend
        )
    assert math.isclose(info.value.time, 0.5, abs_tol=1e-6)
    assert isinstance(info.value, FloatingPointError)


def test_blow_up_is_a_solver_error_not_an_assertion():
    with pytest.raises(SolverError, match="step size shrank"):
        neuralode.odeint(lambda t, y: y * y, torch.ones(1), torch.tensor([0.0, 2.0]))
    with pytest.raises(SolverError, match="max_num_steps"):
        neuralode.odeint(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 10.0]),
            options={"max_num_steps": 3},
        )


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_forward_nfe_matches_a_counter_in_the_function(backend):
    f = Counting()
    stats = SolveStats()
    neuralode.odeint(f, torch.randn(4, 3), _t(), rtol=1e-6, atol=1e-8, stats=stats, backend=backend)
    assert stats.nfe_forward == f.calls > 0
    assert stats.nfe_backward == 0
    assert stats.steps_accepted > 0 and stats.steps_rejected >= 0
    # dopri5 is FSAL: 6 new evaluations per step attempt plus 2 for the initial step selection
    attempts = stats.steps_accepted + stats.steps_rejected
    assert stats.nfe_forward == 6 * attempts + 2
    assert stats.method == "dopri5" and stats.backend == backend


def test_fixed_step_counts():
    f = Counting()
    stats = SolveStats()
    neuralode.odeint(
        f,
        torch.randn(4, 3),
        torch.tensor([0.0, 1.0]),
        method="rk4",
        options={"step_size": 0.1},
        stats=stats,
    )
    assert stats.steps_accepted == 10
    assert stats.steps_rejected is None
    assert stats.nfe_forward == f.calls == 40


def test_adjoint_backward_nfe_matches_a_counter():
    f = Counting()
    stats = SolveStats()
    y = neuralode.odeint_adjoint(f, torch.randn(4, 3), _t(), rtol=1e-5, atol=1e-6, stats=stats)
    forward_calls = f.calls
    assert stats.nfe_forward == forward_calls
    assert stats.nfe_backward == 0
    y.pow(2).sum().backward()
    assert stats.nfe_backward == f.calls - forward_calls > 0
    assert stats.steps_accepted_backward > 0
    assert f.lin.weight.grad is not None


def test_seminorm_reduces_backward_work():
    torch.manual_seed(3)
    f = Counting(8)
    y0 = torch.randn(16, 8)
    counts = {}
    for norm in (None, "seminorm"):
        stats = SolveStats()
        opts = None if norm is None else {"norm": norm}
        y = neuralode.odeint_adjoint(
            f, y0, _t(), rtol=1e-6, atol=1e-7, adjoint_options=opts, stats=stats
        )
        y.sum().backward()
        counts[norm] = stats.nfe_backward
    assert counts["seminorm"] <= counts[None]


def test_stats_add_and_reset():
    a = SolveStats(nfe_forward=3, nfe_backward=1, steps_accepted=2, solves=1)
    b = SolveStats(nfe_forward=5, steps_accepted=None, steps_rejected=1, solves=1)
    c = a + b
    assert (c.nfe_forward, c.nfe_backward, c.steps_accepted, c.steps_rejected, c.solves) == (
        8,
        1,
        2,
        1,
        2,
    )
    assert c.nfe == 9
    assert "nfe forward=8" in str(c)
    c.reset()
    assert c.nfe == 0 and c.steps_accepted is None


def test_native_is_the_default_and_torchdiffeq_one_keyword_away():
    f = Counting()
    y0, t = torch.randn(4, 3), _t()
    assert neuralode.get_default_backend() == "native"
    assert neuralode.available_backends() == ["native", "torchdiffeq"]
    stats = SolveStats()
    neuralode.odeint(f, y0, t, stats=stats)
    assert stats.backend == "native"
    neuralode.odeint(f, y0, t, stats=stats, backend="torchdiffeq")
    assert stats.backend == "torchdiffeq"
    try:
        neuralode.set_default_backend("torchdiffeq")
        stats = SolveStats()
        neuralode.odeint(f, y0, t, stats=stats)
        assert stats.backend == "torchdiffeq"
    finally:
        neuralode.set_default_backend("native")
    with pytest.raises(ValueError, match="valid backends are: 'torchdiffeq', 'native'"):
        neuralode.set_default_backend("scipy")
