"""The solver never answers wrongly in silence and never hangs (issue 10): each case was a
silent wrong result, a hang or a misleading message before, reproduced by a probe."""

import contextlib
import math
import warnings

import pytest
import torch
import torchdiffeq
from torch import nn

import neuralode
from neuralode import NonFiniteStateError, SolverError, SolveStats
from neuralode.solvers import _loops

T01 = torch.tensor([0.0, 1.0])


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64))

    def forward(self, t, y):
        return torch.tanh(self.w * y) * y


def _second_derivative(odeint, func, **kw):
    y0 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = odeint(func, y0, t, rtol=1e-9, atol=1e-11, **kw)[-1]
    (g,) = torch.autograd.grad(out.pow(3).sum(), y0, create_graph=True)
    return torch.autograd.grad(g.sum(), y0)[0]


# ------------------------------------------------------------------------ higher derivatives


def test_direct_second_derivatives_match_torchdiffeq():
    f = Gate()
    ours = _second_derivative(neuralode.odeint, f)
    ref = _second_derivative(torchdiffeq.odeint, f)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "how", ["checkpoint", "adjoint"], ids=["gradient=checkpoint", "odeint_adjoint"]
)
def test_second_derivatives_through_checkpoint_or_adjoint_are_refused(how):
    """They were [0, 0, 0] and [1.04, 2.34, 1.91] where the truth is [0.31, 2.27, 1.63]."""
    f = Gate()
    if how == "checkpoint":
        call = dict(odeint=neuralode.odeint, gradient="checkpoint")
    else:
        call = dict(odeint=neuralode.odeint_adjoint)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        _second_derivative(call.pop("odeint"), f, **call)
    # first derivatives still work there
    y0 = torch.tensor([1.0, 2.0], requires_grad=True)
    fn = neuralode.odeint_adjoint if how == "adjoint" else neuralode.odeint
    kw = {} if how == "adjoint" else {"gradient": "checkpoint"}
    lin = nn.Linear(2, 2)
    (g,) = torch.autograd.grad(fn(lin.__call__ and _Lin(lin), y0, T01, **kw)[-1].sum(), y0)
    assert torch.isfinite(g).all()


class _Lin(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, t, y):
        return self.lin(y)


# ------------------------------------------------------------------------ adjoint_params=()


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_adjoint_with_no_params_and_no_grad_y0_differentiates_nothing(backend):
    """It used to backpropagate directly and fill the module's gradients; torchdiffeq gives a
    result that does not require grad, so that no parameter left out gets a gradient."""
    f = _Lin(nn.Linear(2, 2))
    out = neuralode.odeint_adjoint(f, torch.ones(2), T01, adjoint_params=(), backend=backend)
    ref = torchdiffeq.odeint_adjoint(f, torch.ones(2), T01, adjoint_params=())
    assert out.requires_grad == ref.requires_grad is False
    with pytest.raises(RuntimeError, match="does not require grad"):
        out.sum().backward()
    assert all(p.grad is None for p in f.parameters())


def test_adjoint_with_no_params_still_differentiates_y0():
    f = _Lin(nn.Linear(2, 2))
    y0 = torch.ones(2, requires_grad=True)
    neuralode.odeint_adjoint(f, y0, T01, adjoint_params=())[-1].sum().backward()
    assert y0.grad is not None and all(p.grad is None for p in f.parameters())


# ------------------------------------------------------------------------ output dtype


@pytest.mark.parametrize("method", ["dopri5", "rk4", "euler", "bosh3"])
@pytest.mark.parametrize("grad", [True, False])
def test_output_dtype_is_the_state_dtype_in_both_grad_modes(method, grad):
    def f(t, y):  # float64 derivatives of a float32 state
        return (-y).double()

    y0 = torch.ones(3, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = neuralode.odeint(f, y0, torch.linspace(0, 1, 4), method=method)
        ref = torchdiffeq.odeint(f, y0, torch.linspace(0, 1, 4), method=method)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ bad options


def _never_called(t, y):
    raise AssertionError("the dynamics must not run when the input is invalid")


@pytest.mark.parametrize(
    ("method", "options", "exc", "match"),
    [
        ("rk4", {"step_size": math.inf}, ValueError, "step_size.*finite"),
        ("euler", {"step_size": torch.tensor(-0.1)}, ValueError, "step_size.*positive"),
        ("rk4", {"step_size": "0.1"}, TypeError, "step_size.*real number"),
        ("dopri5", {"dfactor": 5.0}, ValueError, "dfactor"),
        ("dopri5", {"ifactor": 0.1}, ValueError, "ifactor"),
        ("dopri5", {"safety": 1.5}, ValueError, "safety"),
        ("dopri5", {"max_num_steps": math.inf}, ValueError, "max_num_steps.*whole number"),
        ("dopri5", {"max_num_steps": 2.5}, ValueError, "max_num_steps"),
        ("dopri5", {"first_step": math.inf}, ValueError, "first_step.*finite"),
        ("dopri5", {"min_step": 0.5, "max_step": 0.1}, ValueError, "min_step.*max_step"),
        ("dopri5", {"min_step": math.inf}, ValueError, "min_step"),
    ],
)
@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_bad_options_are_clear_errors_before_any_work(method, options, exc, match, backend):
    with pytest.raises(exc, match=match):
        neuralode.odeint(
            _never_called, torch.ones(2), T01, method=method, options=options, backend=backend
        )


def test_stats_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="SolveStats"):
        neuralode.odeint(_never_called, torch.ones(2), T01, stats={})


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_tolerance_tensors_must_broadcast_to_the_state(name):
    with pytest.raises(ValueError, match=f"{name} of shape \\(3,\\) does not broadcast"):
        neuralode.odeint(_never_called, torch.ones(4, 2), T01, **{name: torch.full((3,), 1e-3)})
    # shapes that do broadcast are accepted (one tolerance per element or per column)
    f = lambda t, y: -y  # noqa: E731
    for shape in ((2,), (4, 1), (4, 2)):
        neuralode.odeint(f, torch.ones(4, 2), T01, **{name: torch.full(shape, 1e-4)})


# ------------------------------------------------------------------------ messages


def test_a_non_finite_y0_is_named_as_such():
    """It reported 'became NaN at t ≈ nan' with advice about the learning rate."""
    y0 = torch.tensor([1.0, float("nan")])
    for backend in ("native", "torchdiffeq"):
        with pytest.raises(NonFiniteStateError, match="initial state y0") as info:
            neuralode.odeint(lambda t, y: -y, y0, T01, backend=backend)
        assert "nan" not in str(info.value.time)
        assert info.value.time == 0.0


def test_float16_with_tolerances_below_its_resolution_warns_and_says_why_it_fails():
    """It reported a NaN story (learning rate, ...) instead of the tolerance's resolution."""
    y0 = torch.ones(4, dtype=torch.float16)
    t = torch.tensor([0.0, 1.0], dtype=torch.float16)
    warns = pytest.warns(UserWarning, match="below the resolution of the state's dtype")
    with warns, pytest.raises(SolverError, match="because rtol=1e-07 is below") as info:
        neuralode.odeint(lambda t, y: -y, y0, t)
    assert "learning rate" not in str(info.value) and "float32" in str(info.value)


def test_bfloat16_default_tolerances_warn():
    """bfloat16 with default tolerances was silently 0.29 off."""
    y0 = torch.ones(4, dtype=torch.bfloat16)
    t = torch.tensor([0.0, 1.0], dtype=torch.bfloat16)
    warns = pytest.warns(UserWarning, match="rtol=1e-07 is below the resolution")
    with warns, contextlib.suppress(SolverError):
        neuralode.odeint(lambda t, y: -y, y0, t, options={"max_num_steps": 200})
    with warnings.catch_warnings():  # a tolerance the dtype can meet: no warning
        warnings.simplefilter("error")
        out = neuralode.odeint(lambda t, y: -y, y0, t, rtol=3e-2, atol=1e-2)
    assert abs(float(out[-1, 0]) - math.exp(-1)) < 0.05


def test_float32_and_float64_default_tolerances_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (torch.float32, torch.float64):
            neuralode.odeint(lambda t, y: -y, torch.ones(2, dtype=dtype), T01.to(dtype))


# ------------------------------------------------------------------------ no hangs


@pytest.mark.parametrize("backend", ["native", "torchdiffeq"])
def test_min_step_steps_are_accepted_as_in_torchdiffeq(backend):
    """options={'min_step': 0.1} on dy/dt = -50 y looped forever (0 accepted steps)."""
    stats = SolveStats()
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opts = {"min_step": 0.1, "max_num_steps": 1000}
    out = neuralode.odeint(lambda t, y: -50 * y, y0, t, options=opts, stats=stats, backend=backend)
    ref_nfe = [0]

    def counted(t, y):
        ref_nfe[0] += 1
        return -50 * y

    ref = torchdiffeq.odeint(counted, y0, t, options=opts)
    assert stats.nfe_forward < 200
    assert stats.nfe_forward == pytest.approx(ref_nfe[0], abs=2)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.slow  # (runs to the default budget of 100,000 steps: 13 s)
def test_the_default_step_budget_ends_a_hopeless_solve():
    """A discontinuous right-hand side at rtol 1e-14 hung (2**31 steps); the default budget
    ends it with a message that names the likely causes and how to raise the limit."""

    def sawtooth(t, y):
        return torch.sign(torch.sin(1e4 * t)) * torch.ones_like(y)

    with pytest.raises(SolverError) as info:
        neuralode.odeint(sawtooth, torch.zeros(1, dtype=torch.float64),
                         torch.tensor([0.0, 10.0], dtype=torch.float64),
                         rtol=1e-14, atol=1e-14)  # fmt: skip
    msg = str(info.value)
    assert f"max_num_steps={neuralode.solvers.DEFAULT_MAX_NUM_STEPS}" in msg
    assert "the default limit" in msg and "discontinuous" in msg and "jump_t" in msg


def test_an_event_that_never_triggers_ends_with_a_message():
    def never(t, y):
        return torch.ones(()) + y.sum() * 0

    with pytest.raises(SolverError, match="event function never crosses zero"):
        neuralode.odeint(
            lambda t, y: -y, torch.ones(2), T01, event_fn=never,
            options={"max_num_steps": 200},
        )  # fmt: skip


def test_the_torchdiffeq_backend_gets_the_default_budget(monkeypatch):
    seen = {}
    real = torchdiffeq.odeint

    def spy(*args, **kw):
        seen.update(kw["options"])
        return real(*args, **kw)

    monkeypatch.setattr(torchdiffeq, "odeint", spy)
    neuralode.odeint(lambda t, y: -y, torch.ones(2), T01, backend="torchdiffeq")
    assert seen["max_num_steps"] == neuralode.solvers.DEFAULT_MAX_NUM_STEPS
    neuralode.odeint(
        lambda t, y: -y, torch.ones(2), T01, backend="torchdiffeq", options={"max_num_steps": 777}
    )
    assert seen["max_num_steps"] == 777


# ------------------------------------------------------------------------ graph size warning


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_a_large_direct_backprop_graph_warns_once(monkeypatch, method):
    monkeypatch.setattr(_loops, "GRAPH_WARNING_BYTES", 200 << 10)  # about 6 steps' worth
    f = _Lin(nn.Linear(2, 2))
    opts = {"step_size": 0.01} if method == "rk4" else None
    t = torch.tensor([0.0, 10.0])
    with pytest.warns(UserWarning, match="gradient='checkpoint'") as rec:
        neuralode.odeint(f, torch.ones(2), t, method=method, options=opts)
    assert sum("direct backpropagation has recorded" in str(r.message) for r in rec) == 1
    with warnings.catch_warnings():  # no graph, or the checkpointed method: no warning
        warnings.simplefilter("error")
        with torch.no_grad():
            neuralode.odeint(f, torch.ones(2), t, method=method, options=opts)
        neuralode.odeint(f, torch.ones(2), t, method=method, options=opts, gradient="checkpoint")
        neuralode.odeint_adjoint(f, torch.ones(2), t, method=method, options=opts)
