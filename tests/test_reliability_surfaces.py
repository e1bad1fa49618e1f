"""Reliability of the newer solving surfaces: events, dense output, per-sample and implicit
solves. Every probe ends with a clear error of the right type (or the right answer), and no
solve runs unbounded: a hopeless one stops within its step budget, or earlier where it would
need far more steps than the budget allows."""

from __future__ import annotations

import math
import re

import pytest
import torch

import neuralode
from neuralode.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    NonFiniteStateError,
    SolverError,
    TooManyStepsError,
)

F64 = torch.float64


def _decay(t, y):
    return -y


# ----------------------------------------------------------------------------- events


def test_an_event_that_never_fires_ends_within_the_step_budget():
    """y -> 0 and an event at y = -1: torchdiffeq searches forever; here the budget ends it
    (the default budget is exercised by the slow test below)."""
    with pytest.raises(TooManyStepsError, match="event function never crosses zero"):
        neuralode.odeint_event(
            _decay,
            torch.ones(2),
            torch.tensor(0.0),
            event_fn=lambda t, y: y[0] + 1,
            options={"max_num_steps": 500},
        )
    with pytest.raises(TooManyStepsError, match="max_num_steps=300"):  # the odeint form too
        neuralode.odeint(
            _decay,
            torch.ones(2),
            torch.tensor([0.0, 10.0]),
            event_fn=lambda t, y: y[0] + 1,
            options={"max_num_steps": 300},
        )


def test_an_event_on_a_settled_solution_ends_at_once():
    """A constant solution lets the step grow without bound: the search stops there with the
    reason, not after the whole budget."""
    with pytest.raises(TooManyStepsError, match="event never triggered"):
        neuralode.odeint_event(
            lambda t, y: torch.zeros_like(y),
            torch.ones(1, dtype=F64),
            torch.tensor(0.0, dtype=F64),
            event_fn=lambda t, y: y[0] + 1,
        )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_event_function_that_returns_nan_is_named(value):
    with pytest.raises(InvalidArgumentError, match="event_fn") as info:
        neuralode.odeint_event(
            _decay, torch.ones(2), torch.tensor(0.0), event_fn=lambda t, y: y[0] * value
        )
    assert info.value.argument == "event_fn"
    # on the torchdiffeq path as well (an adjoint with an event is torchdiffeq's)

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, t, y):
            return self.lin(y)

    with pytest.raises(InvalidArgumentError, match="event_fn"):
        neuralode.odeint_event(
            F(),
            torch.ones(2),
            torch.tensor(0.0),
            event_fn=lambda t, y: y[0] * value,
            odeint_interface=neuralode.odeint_adjoint,
        )


def test_native_events_match_the_exact_crossing_in_every_form():
    """dy/dt = -y from 1 crosses 0.5 at ln 2: a tensor state, a tuple state, backwards in
    time, an event at the start (torchdiffeq returns the start)."""
    t0 = torch.tensor(0.0, dtype=F64)
    et, sol = neuralode.odeint_event(
        _decay,
        torch.ones(1, dtype=F64),
        t0,
        event_fn=lambda t, y: y[0] - 0.5,
        rtol=1e-10,
        atol=1e-12,
    )
    assert float(et) == pytest.approx(math.log(2), rel=1e-9)
    assert sol.shape == (2, 1) and float(sol[-1, 0]) == pytest.approx(0.5, rel=1e-9)
    pair = (torch.ones(1, dtype=F64), torch.ones(2, dtype=F64))
    et, (a, _) = neuralode.odeint_event(
        lambda t, y: (-y[0], -2 * y[1]),
        pair,
        t0,
        event_fn=lambda t, y: y[1][0] - 0.25,
        rtol=1e-10,
        atol=1e-12,
    )
    assert float(et) == pytest.approx(math.log(2), rel=1e-8) and a.shape == (2, 1)
    et, sol = neuralode.odeint_event(
        _decay,
        torch.ones(1, dtype=F64),
        t0,
        reverse_time=True,
        event_fn=lambda t, y: y[0] - 2.0,
        rtol=1e-10,
        atol=1e-12,
    )
    assert float(et) == pytest.approx(-math.log(2), rel=1e-8)
    et, sol = neuralode.odeint_event(
        _decay, torch.ones(1, dtype=F64), t0, event_fn=lambda t, y: y[0] - 1.0
    )
    assert float(et) == 0.0 and torch.equal(sol[0], sol[1])


def test_events_refuse_what_they_cannot_do_with_the_reason():
    y0 = torch.ones(3, 1)
    with pytest.raises(InvalidArgumentError, match="per_sample"):
        neuralode.odeint(
            _decay,
            y0,
            torch.tensor([0.0, 1.0]),
            event_fn=lambda t, y: y[0, 0] - 0.5,
            options={"batch_mode": "per_sample"},
        )
    with pytest.raises(InvalidArgumentError, match="event handling"):
        neuralode.odeint(
            torch.nn.Linear(1, 1),
            y0.requires_grad_(),
            torch.tensor([0.0, 1.0]),
            event_fn=lambda t, y: y[0, 0] - 0.5,
            gradient="checkpoint",
        )
    with pytest.raises(InvalidArgumentError, match="one finite value"):
        neuralode.odeint_event(
            _decay, torch.ones(2), torch.tensor(0.0), event_fn=lambda t, y: y - 0.5
        )


@pytest.mark.slow
def test_an_event_that_never_fires_ends_with_the_default_budget():
    with pytest.raises(TooManyStepsError, match="event function never crosses zero"):
        neuralode.odeint_event(
            _decay, torch.ones(2), torch.tensor(0.0), event_fn=lambda t, y: y[0] + 1
        )


# ----------------------------------------------------------------------------- dense output


def test_dense_output_of_stiff_dynamics_stops_early():
    """odeint_dense runs on the native engine: a stiff problem stops once it is clear that it
    would need far more steps than its budget (about a second, not a minute)."""
    with pytest.raises(TooManyStepsError, match="stopped early") as info:
        neuralode.odeint_dense(
            lambda t, y: -1e6 * (y - torch.cos(t)),
            torch.zeros(1, dtype=F64),
            torch.tensor(0.0, dtype=F64),
            torch.tensor(10.0, dtype=F64),
        )
    assert "kvaerno5" in str(info.value)


def test_dense_output_refuses_times_outside_its_interval():
    y = neuralode.odeint_dense(
        _decay, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    )
    assert float(y(torch.tensor(0.5, dtype=F64))) == pytest.approx(math.exp(-0.5), rel=1e-6)
    with pytest.raises(InvalidArgumentError, match=r"covers t in \[0, 1\]"):
        y(torch.tensor(2.0, dtype=F64))


# ----------------------------------------------------------------------------- per sample


def test_one_stiff_sample_stops_the_batch_early_and_is_named():
    rates = torch.tensor([[1e7], [1.0], [2.0]])
    with pytest.raises(TooManyStepsError, match=r"sample 0") as info:
        neuralode.odeint(
            lambda t, y: -rates * y,
            torch.ones(3, 1),
            torch.tensor([0.0, 10.0]),
            options={"batch_mode": "per_sample"},
        )
    assert "stopped early" in str(info.value)


def test_a_nan_sample_is_reported_at_the_start():
    y0 = torch.tensor([[1.0], [float("nan")], [2.0]])
    with pytest.raises(NonFiniteStateError, match="initial state"):
        neuralode.odeint(_decay, y0, torch.tensor([0.0, 1.0]), options={"batch_mode": "per_sample"})


def test_integer_per_sample_times_are_told_to_be_floating():
    with pytest.raises(InvalidTypeError, match="per-sample times must be a floating"):
        neuralode.odeint(
            _decay,
            torch.ones(2, 1),
            torch.tensor([[0, 1], [0, 2]]),
            options={"batch_mode": "per_sample"},
        )


# ----------------------------------------------------------------------------- implicit


def test_an_implicit_method_refuses_a_tolerance_below_its_dtype():
    with pytest.raises(InvalidArgumentError, match="below the resolution.*float32") as info:
        neuralode.odeint(
            _decay, torch.ones(2), torch.tensor([0.0, 1.0]), method="kvaerno5", rtol=1e-9, atol=1e-9
        )
    assert info.value.argument == "rtol"


@pytest.mark.parametrize("proportional", [False, True])
@pytest.mark.parametrize("method", ["kvaerno3", "kvaerno5", "trbdf2"])
def test_the_least_rtol_an_implicit_method_names_is_one_it_solves_at(method, proportional):
    """The refusal names the smallest rtol the method takes in float32; with ``proportional``
    (whose error test tightens as rtol falls) it is where the grown floor is met, not the
    floor at the rtol refused. That rtol is accepted, and the solve at it is accurate (against
    float64 at a tight tolerance); the same number is refused at half of it."""
    t, y0 = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.5])

    def f(s, y):  # stiff linear decay: y1 relaxes fast onto cos(s), y2 decays slowly
        return torch.stack([-500.0 * (y[0] - torch.cos(s)), -y[1]])

    options = {"proportional": proportional}
    with pytest.raises(InvalidArgumentError, match=r"Use rtol >= (\S+) with") as info:
        neuralode.odeint(f, y0, t, method=method, rtol=1e-7, atol=1e-6, options=options)
    least = float(re.search(r"Use rtol >= (\S+) with", str(info.value)).group(1))
    assert 1e-7 < least < 1e-3
    with pytest.raises(InvalidArgumentError, match="below the resolution"):
        neuralode.odeint(f, y0, t, method=method, rtol=least / 2, atol=1e-6, options=options)
    y = neuralode.odeint(f, y0, t, method=method, rtol=least, atol=1e-6, options=options)
    ref = neuralode.odeint(f, y0.double(), t.double(), method="kvaerno5", rtol=1e-10, atol=1e-12)
    assert torch.allclose(y[-1].double(), ref[-1], rtol=0, atol=50 * least)


def test_an_implicit_method_on_a_complex_state_says_what_to_do():
    with pytest.raises(InvalidArgumentError, match="no method 'kvaerno5'.*real and imaginary"):
        neuralode.odeint(
            _decay,
            torch.ones(2, dtype=torch.complex64),
            torch.tensor([0.0, 1.0]),
            method="kvaerno5",
        )


def test_nan_dynamics_mid_solve_are_reported_as_such_by_an_implicit_method():
    def f(t, y):
        return -y + (torch.nan if float(t) > 0.5 else 0.0)

    with pytest.raises(NonFiniteStateError) as info:
        neuralode.odeint(
            f, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="kvaerno5"
        )
    assert 0.5 < info.value.time <= 1.0


# ----------------------------------------------------------------------------- flows


@pytest.mark.parametrize("T", [0.0, -1.0, float("inf"), True])
def test_a_flow_with_a_bad_time_says_so(T):
    from neuralode.flows import CNF, ConcatSquashMLP

    with pytest.raises(ValueError, match="T must be a positive, finite integration time"):
        CNF(ConcatSquashMLP(2, (4,)), T=T)


def test_every_solve_failure_is_a_solver_error():
    """(The types the probes above rely on.)"""
    assert issubclass(TooManyStepsError, SolverError)
    assert issubclass(NonFiniteStateError, SolverError)
