"""The engine's objects: the object API (solve → Solution), the adapter that turns torchdiffeq's
names and options into objects, one Registry type, the recording context, and the route of
one solve (the modules it runs)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import warnings

import pytest
import torch
import torchdiffeq
from torch import nn

import neuralode
from neuralode import solvers
from neuralode.solvers import (
    RK4,
    Adjoint,
    Checkpoint,
    ConstantStepSize,
    Direct,
    Dopri5,
    ExplicitRK,
    Joint,
    Kvaerno5,
    PerSample,
    PIController,
    SolveStats,
    record,
    solve,
)

F64 = torch.float64


class Decay(nn.Module):
    """dy/dt = -k y, counting its evaluations."""

    def __init__(self, k: float = 1.0) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return -self.k * y


# ----------------------------------------------------------------------------- object API


def test_solve_with_objects_equals_odeint_with_names():
    """The object API and torchdiffeq's interface reach the same engine: bit for bit."""
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.linspace(0, 2, 5, dtype=F64)
    cases = [
        (dict(method=Dopri5(), controller=PIController(rtol=1e-6, atol=1e-8, safety=0.8)),
         dict(method="dopri5", rtol=1e-6, atol=1e-8, options={"safety": 0.8})),
        (dict(method=RK4(), controller=ConstantStepSize(step_size=0.1, interp="cubic")),
         dict(method="rk4", options={"step_size": 0.1, "interp": "cubic"})),
        (dict(method=Kvaerno5(linear_solver="dense"), controller=PIController(rtol=1e-6)),
         dict(method="kvaerno5", rtol=1e-6, options={"linear_solver": "dense"})),
    ]  # fmt: skip
    for objects, names in cases:
        sol = solve(Decay(), y0, t, **objects)
        ref = neuralode.odeint(Decay(), y0, t, **names)
        torch.testing.assert_close(sol.ys, ref, rtol=0, atol=0)
        torch.testing.assert_close(sol.ys[:, 0], torch.exp(-t), rtol=1e-4, atol=1e-6)
        assert sol.stats.nfe_forward > 0 and sol.ts is t and sol.dense is None


def test_solution_dense_output_against_the_exact_solution():
    """dense=True gives the solution between the output times from the steps' interpolants
    (4th order for dopri5): within the tolerance of exp(-t) everywhere, a tuple state in its
    form, a fixed grid by its interpolation."""
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    sol = solve(Decay(), y0, t, controller=PIController(rtol=1e-8, atol=1e-10), dense=True)
    grid = torch.linspace(0.0, 3.0, 31, dtype=F64)
    exact = torch.exp(-grid)[:, None] * y0
    torch.testing.assert_close(sol.dense(grid), exact, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sol.dense(1.3), math.exp(-1.3) * y0, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match=r"covers t in \[0, 3\]"):
        sol.dense(3.5)
    # backwards in time and a tuple state
    pair = (torch.tensor([1.0], dtype=F64), torch.tensor([[2.0, 3.0]], dtype=F64))
    back = solve(lambda t, y: (-y[0], -y[1]), pair, torch.tensor([1.0, 0.0], dtype=F64),
                 controller=PIController(rtol=1e-8, atol=1e-10), dense=True)  # fmt: skip
    a, b = back.dense(0.25)
    torch.testing.assert_close(a, pair[0] * math.exp(0.75), rtol=1e-6, atol=1e-8)
    assert b.shape == (1, 2)
    fixed = solve(Decay(), y0, t, method=RK4(), controller=ConstantStepSize(0.01), dense=True)
    torch.testing.assert_close(fixed.dense(grid), exact, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="Direct"):
        solve(Decay(), y0, t, gradient=Checkpoint(), dense=True)


def test_objects_validate_themselves_on_construction():
    for make, name in (
        (lambda: PIController(rtol=-1e-3), "rtol"),
        (lambda: PIController(safety=1.5), "safety"),
        (lambda: PIController(min_step=0.2, max_step=0.1), "min_step"),
        (lambda: PIController(max_num_steps=2.5), "max_num_steps"),
        (lambda: PIController(jump_t=[0.5, float("nan")]), "jump_t"),
        (lambda: ConstantStepSize(step_size=0.0), "step_size"),
        (lambda: ConstantStepSize(interp="spline"), "interp"),
        (lambda: Kvaerno5(linear_solver="qr"), "linear_solver"),
    ):
        with pytest.raises(ValueError, match=name) as info:
            make()
        assert info.value.argument == name
    with pytest.raises(TypeError, match="seminorm"):
        Adjoint(seminorm="yes")
    with pytest.raises(TypeError, match="ButcherTableau"):
        ExplicitRK("dopri5")
    with pytest.raises(TypeError, match="names are for odeint"):
        solve(Decay(), torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
              method="dopri5")  # fmt: skip
    with pytest.raises(TypeError, match="controller must be a step-size controller object"):
        solve(Decay(), torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
              controller="pid")  # fmt: skip


def test_the_adapter_translates_options_through_one_table():
    """torchdiffeq's options become the objects' parameters; a bad value's error names the
    option it came from; options['controller'] gets the call's tolerances."""
    _, ctrl, lane = solvers._adapter.translate(
        solvers.METHODS.get("dopri5"),
        {"safety": 0.8, "jump_t": torch.tensor([0.5]), "max_num_steps": 50,
         "batch_mode": "per_sample"}, 1e-5, 1e-7,
    )  # fmt: skip
    assert isinstance(ctrl, PIController) and isinstance(lane, PerSample)
    assert (ctrl.safety, ctrl.jump_t, ctrl.max_num_steps, ctrl.rtol) == (0.8, (0.5,), 50, 1e-5)
    for key in solvers.OPTIONS:  # every option of the table names an object
        assert solvers.OPTIONS[key][0] in ("controller", "lane", "ignored", "torchdiffeq")
    with pytest.raises(ValueError, match=r"options\['safety'\] must be a factor"):
        neuralode.odeint(Decay(), torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                         options={"safety": 2.0})  # fmt: skip
    with pytest.raises(ValueError, match=r"options\['newton_tol'\]"):
        neuralode.odeint(Decay(), torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                         method="kvaerno5", options={"newton_tol": 3})  # fmt: skip
    own = PIController(pcoeff=0.3)
    _, ctrl, _ = solvers._adapter.translate(
        solvers.METHODS.get("dopri5"), {"controller": own, "first_step": 0.1}, 1e-4, 1e-6
    )
    assert (ctrl.pcoeff, ctrl.first_step, ctrl.rtol) == (0.3, 0.1, 1e-4) and own.rtol == 1e-7


# ----------------------------------------------------------------------------- registries


def _ralston() -> ExplicitRK:
    """Ralston's second-order method: a tableau of our own, under a name of our own."""
    tab = solvers.ButcherTableau("ralston_test", 2, (0.0, 2 / 3), ((), (2 / 3,)), (0.25, 0.75))
    return ExplicitRK(tab)


class _CountingCheckpoint(Checkpoint):
    name = "counting_test"
    calls = 0

    def solve(self, plan, y0, params):
        type(self).calls += 1
        return super().solve(plan, y0, params)


@pytest.fixture
def registered():
    solvers.register_method(_ralston())
    solvers.register_gradient_method(_CountingCheckpoint)
    try:
        yield
    finally:
        solvers.METHODS.unregister("ralston_test")
        solvers.GRADIENT_METHODS.unregister("counting_test")


def test_a_registered_method_and_gradient_method_work_by_name_everywhere(registered, tmp_path):
    """odeint, a block and the command line read the live registries."""
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    out = neuralode.odeint(Decay(), y0, t, method="ralston_test", options={"step_size": 0.01},
                           gradient="counting_test")  # fmt: skip
    (g,) = torch.autograd.grad(out[-1].sum(), y0)
    assert (
        abs(float(out[-1].detach()) - math.exp(-1)) < 1e-4 and abs(float(g) - math.exp(-1)) < 1e-4
    )
    block = neuralode.NeuralODEBlock(Decay(), method="ralston_test", gradient="counting_test",
                                     options={"step_size": 0.1})  # fmt: skip
    block(torch.ones(2, 1, dtype=F64)).sum().backward()
    assert _CountingCheckpoint.calls == 2
    from neuralode.cli import main

    code = main(["train", "spiral", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--method", "ralston_test", "--gradient", "counting_test", "--no-progress",
                 "--max-train-batches", "2"])  # fmt: skip
    assert code == 0 and _CountingCheckpoint.calls > 2
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"ralston_test"' in config and '"counting_test"' in config


@dataclasses.dataclass(eq=False)
class _Cautious(PIController):
    """PIController growing the step at most twofold (a controller of our own)."""

    ifactor: float = 2.0


@dataclasses.dataclass(eq=False)
class _Doubling(solvers.StepSizeController):
    """Doubles the step after an accepted attempt, halves it after a rejected one (no PI
    parameters: torchdiffeq's safety, ifactor, ... are not its own)."""

    def factor(self, ratio, prev_ratio, order):
        return 2.0 if ratio <= 1.0 else 0.5


def test_a_registered_controller_works_by_name_in_options(tmp_path):
    """options['controller'] takes a name in CONTROLLERS (its class made with the call's
    tolerances and the options it takes), in odeint and in a block, whose options then fit in a
    JSON file."""
    solvers.CONTROLLERS.register("cautious_test", _Cautious)
    solvers.CONTROLLERS.register("doubling_test", _Doubling)
    try:
        y0, t = torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
        runs = {}
        for key, options in {"name": {"controller": "cautious_test", "first_step": 1e-3},
                             "object": {"controller": _Cautious(), "first_step": 1e-3},
                             "default": {"first_step": 1e-3}}.items():  # fmt: skip
            stats = neuralode.SolveStats()
            out = neuralode.odeint(Decay(), y0, t, rtol=1e-6, atol=1e-9, options=options,
                                   stats=stats)  # fmt: skip
            runs[key] = (out, stats.steps_accepted)
        assert torch.equal(runs["name"][0], runs["object"][0])
        assert runs["name"][1] == runs["object"][1] > runs["default"][1]  # (growth capped at 2)
        assert abs(float(runs["name"][0][-1, 0].detach()) - math.exp(-1)) < 1e-5
        out = neuralode.odeint(Decay(), y0, t, rtol=1e-6, atol=1e-9,
                               options={"controller": "doubling_test"})  # fmt: skip
        assert abs(float(out[-1, 0].detach()) - math.exp(-1)) < 1e-4
        block = neuralode.NeuralODEBlock(Decay(), options={"controller": "cautious_test"})
        assert block(torch.ones(2, 1)).shape == (2, 1)
        json.dumps(block.options)  # (an object there would not serialise)
        call = lambda **options: neuralode.odeint(Decay(), y0, t, options=options)  # noqa: E731
        with pytest.raises(ValueError, match=r"options\['controller'\]: unknown step-size "
                           r"controller 'nope'; .*'pid', 'constant', 'cautious_test'"):  # fmt: skip
            call(controller="nope")
        with pytest.raises(
            ValueError, match=r"'constant' \(ConstantStepSize\), which does not adapt"
        ):
            call(controller="constant")
        with pytest.raises(
            ValueError, match=r"'doubling_test' \(_Doubling\) takes no \['safety'\]"
        ):
            call(controller="doubling_test", safety=0.8)
        with pytest.raises(ValueError, match=r"options\['ifactor'\]"):  # (its own check, renamed)
            call(controller="cautious_test", ifactor=0.5)
    finally:
        solvers.CONTROLLERS.unregister("cautious_test")
        solvers.CONTROLLERS.unregister("doubling_test")


def test_an_unknown_method_name_is_refused_with_every_name_the_native_backend_takes(registered):
    """Not only torchdiffeq's names (where the call would have gone): the native methods and a
    registered one too, from odeint, odeint_adjoint and a block (when it is made)."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    y0 = torch.ones(1, dtype=F64)
    every = r"valid methods are: .*dopri5.*implicit_adams.*kvaerno5.*ralston_test.*tsit5"
    with pytest.raises(ValueError, match=r"unknown method 'nope'; " + every):
        neuralode.odeint(Decay(), y0, t, method="nope")
    with pytest.raises(ValueError, match=r"unknown method 'nope'; " + every):
        neuralode.odeint_adjoint(Decay(), y0, t, method="nope")
    with pytest.raises(ValueError, match=r"unknown adjoint_method 'nope'; " + every):
        neuralode.odeint_adjoint(Decay(), y0, t, adjoint_method="nope")
    with pytest.raises(ValueError, match=r"unknown method 'nope'; " + every):
        neuralode.NeuralODEBlock(Decay(), method="nope")
    block = neuralode.NeuralODEBlock(Decay(), method="ralston_test", options={"step_size": 0.5})
    assert block.method == "ralston_test"


def test_the_registry_warns_on_overwrite_and_lists_names():
    reg = neuralode.Registry("widget")
    reg.register("a", 1)
    with pytest.warns(UserWarning, match="replaces"):
        reg.register("a", 2)
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3 and reg.names() == ["a"] and "a" in reg and reg.find("b") is None
    with pytest.raises(ValueError, match=r"unknown widget 'b'; valid widgets are: 'a'"):
        reg.get("b")
    with pytest.raises(ValueError, match="unknown method 'nope'.*'dopri5'"):
        solvers.METHODS.get("nope")


# ----------------------------------------------------------------------------- recording


def test_record_collects_every_solve_and_regularizer():
    """Nested recordings see every solve inside them; backward counters fill in after the
    block ends; regularization terms are summed."""
    block = neuralode.NeuralODEBlock(
        Decay(), regularizers=[neuralode.KineticEnergy(0.5)], gradient="adjoint"
    )
    x = torch.ones(3, 1, dtype=F64)
    with record() as outer:
        block(x)
        with record() as inner:
            h, reg = block(x)
    assert len(outer.solves) == 2 and len(inner.solves) == 1
    assert inner.regularization is not None
    torch.testing.assert_close(inner.regularization, reg)
    assert outer.terms_by_name()["kinetic"].shape == ()
    (h.sum() + reg).backward()
    assert inner.nfe_backward > 0 and inner.nfe_backward == block.stats.nfe_backward
    assert outer.nfe_forward == sum(s.nfe_forward for s in outer.solves)


def test_the_ode_rnn_counts_every_interval():
    """The ODE-RNN solves once per observation interval: the recording's forward NFE equals
    the calls a counting dynamics received."""
    from neuralode.series import ODERNN, IrregularSeries

    torch.manual_seed(0)
    rnn = ODERNN(2, hidden=4, rtol=1e-4, atol=1e-6)
    calls = []
    inner = rnn.func.forward
    rnn.func.forward = lambda t, h: (calls.append(1), inner(t, h))[1]
    times = torch.tensor([[0.0, 0.3, 0.9, 1.4], [0.0, 0.5, 0.6, 0.6]])
    series = IrregularSeries(times, torch.randn(2, 4, 2), torch.ones(2, 4, 2),
                             torch.tensor([4, 3]))  # fmt: skip
    with record() as rec:
        rnn(series)
    assert len(rec.solves) == 3  # three intervals with something to integrate
    assert rec.nfe_forward == len(calls) > 0


# ----------------------------------------------------------------------------- the route


def test_an_odeint_call_runs_code_in_at_most_eight_modules():
    """The route of one solve (traced as the issue traced it): the adapter, the core, the
    evaluator, the loop, the method, the kernels, the controller, and the registry's or
    statistics' few lines; none of them over 600 lines."""
    pkg = os.path.dirname(neuralode.__file__)
    f = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))

    def dynamics(t, y):
        return f(y)

    y0, t = torch.randn(3, 4), torch.tensor([0.0, 0.5, 1.0])
    for mode in (torch.no_grad, torch.enable_grad):
        with mode():
            neuralode.odeint(dynamics, y0, t)  # warm
            seen: set[str] = set()

            def profile(frame, event, arg, seen=seen):
                if event == "call" and frame.f_code.co_filename.startswith(pkg):
                    seen.add(frame.f_code.co_filename)

            sys.setprofile(profile)
            try:
                neuralode.odeint(dynamics, y0, t, rtol=1e-5, atol=1e-7)
            finally:
                sys.setprofile(None)
        assert len(seen) <= 8, sorted(os.path.relpath(s, pkg) for s in seen)
        for path in seen:
            with open(path) as fh:
                assert sum(1 for _ in fh) <= 620, path


# ----------------------------------------------------------------------------- torchdiffeq's ways


class Kink(nn.Module):
    """dy/dt = a y before t = 0.5 and -2 a y after: a kink the solver should be told of."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7, dtype=F64))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.a * torch.where(t < 0.5, y, -2 * y)


def test_jump_t_is_honoured_by_the_adjoint_s_backward_solve():
    """As torchdiffeq's: with jump_t the backward pass takes fewer evaluations, and the
    gradient is the exact one (y(1) = y0 exp(a/2 - a) = y0 exp(-a/2))."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    backward = {}
    for opts in ({}, {"jump_t": torch.tensor([0.5], dtype=F64)}):
        f = Kink()
        y0 = torch.ones(2, dtype=F64, requires_grad=True)
        out = neuralode.odeint_adjoint(f, y0, t, rtol=1e-8, atol=1e-10, options=opts)
        before = f.calls
        ga, gy = torch.autograd.grad(out[-1].sum(), (f.a, y0))
        backward[bool(opts)] = f.calls - before
        tol = 1e-8 if opts else 1e-5  # across the kink unannounced, the error is larger
        assert abs(float(ga) - (-0.5 * 2 * math.exp(-0.35))) < tol
        torch.testing.assert_close(gy, torch.full((2,), math.exp(-0.35), dtype=F64), atol=tol,
                                   rtol=0)  # fmt: skip
    assert backward[True] < backward[False]


def test_torchdiffeq_backend_warns_of_callbacks_a_fixed_method_never_calls():
    class F(nn.Module):
        def forward(self, t, y):
            return -y

        def callback_accept_step(self, t, y, dt):
            pass

    seen = {}
    for name, solve_ in (("torchdiffeq", torchdiffeq.odeint),
                         ("ours", lambda *a, **k: neuralode.odeint(*a, backend="torchdiffeq", **k)),
                         ("native", neuralode.odeint)):  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            solve_(F(), torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
                   options={"step_size": 0.1})  # fmt: skip
        seen[name] = [str(w.message) for w in caught]
    assert seen["ours"] == seen["torchdiffeq"] == seen["native"] != []


@pytest.mark.parametrize("seminorm", [False, True])
def test_grad_fn_exposes_the_adjoint_norm_as_torchdiffeq_does(seminorm):
    """odeint_adjoint's result carries grad_fn.adjoint_options['norm'], torchdiffeq's default
    norm of the augmented state (t, y, adj_y, *adj_params); replaced, the replacement is what
    the backward pass calls."""
    adjoint_params = (torch.rand(7, dtype=F64, requires_grad=True),
                      torch.rand((), dtype=F64, requires_grad=True))  # fmt: skip
    pair = (torch.tensor(1.0, dtype=F64), torch.tensor([[0.5, 0.5], [0.1, 0.1]], dtype=F64))
    for x0, tuple_state in ((torch.full((2, 2), 1.0, dtype=F64), False), (pair, True)):
        kwargs = {"adjoint_options": {"norm": "seminorm"}} if seminorm else {}
        f = (lambda t, x: (x[0], x[1])) if tuple_state else (lambda t, x: x)
        xs = neuralode.odeint_adjoint(f, x0, torch.tensor([0.0, 1.0], dtype=F64),
                                      adjoint_params=adjoint_params, **kwargs)  # fmt: skip
        if tuple_state:  # (torchdiffeq's view and slice of the flat solution)
            node = xs[0].grad_fn.next_functions[0][0].next_functions[0][0]
        else:
            node = xs.grad_fn
        ours = node.adjoint_options["norm"]
        called = []

        def actual(tup, tuple_state=tuple_state):
            t, y, adj_y, p1, p2 = tup
            assert y.shape == ((5,) if tuple_state else (2, 2)) and p1.shape == (7,)
            rms = [y.pow(2).mean().sqrt(), adj_y.pow(2).mean().sqrt()]
            if tuple_state:
                rms = [y[0].abs(), y[1:].pow(2).mean().sqrt(), adj_y[0].abs(),
                       adj_y[1:].pow(2).mean().sqrt()]  # fmt: skip
            out = max(t.abs(), *rms)
            return out if seminorm else max(out, p1.pow(2).mean().sqrt(), p2.abs())

        def spy(tup, called=called, ours=ours, actual=actual):
            called.append(1)
            value = ours(tup)
            assert float((value - actual(tup)).abs()) < 1e-9
            return value

        node.adjoint_options["norm"] = spy
        (xs[0] if tuple_state else xs).sum().backward()
        assert called


# ----------------------------------------------------------------------------- flows


def test_a_cnf_composes_a_block_and_keeps_its_checkpoint_keys():
    from neuralode.flows import CNF, ConcatSquashMLP

    cnf = CNF(ConcatSquashMLP(2, (8,)), regularizers=[neuralode.KineticEnergy(0.1)])
    assert not isinstance(cnf, neuralode.NeuralODEBlock)
    assert isinstance(cnf.ode_block, neuralode.NeuralODEBlock)
    keys = list(cnf.state_dict())
    assert keys[0] == "integration_times" and all(
        k == "integration_times" or k.startswith("func.layers.") for k in keys
    )
    cnf.eval()
    assert cnf.ode_block.training is False and cnf.tolerances == (1e-5, 1e-6)
    cnf.rtol = 1e-4
    assert cnf.ode_block.rtol == 1e-4
    with record() as rec:
        cnf.train()(torch.randn(5, 2))
    assert rec.solves == [cnf.stats] and "kinetic" in rec.terms_by_name()
    assert neuralode.solve_stats(cnf).nfe_forward == cnf.stats.nfe_forward > 0


def test_lanes_and_gradients_are_objects():
    y0 = torch.randn(3, 1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    joint = solve(Decay(), y0, t, lane=Joint(), gradient=Direct())
    alone = solve(Decay(), y0, t, lane=PerSample())
    torch.testing.assert_close(joint.ys, alone.ys, rtol=1e-6, atol=1e-8)
    assert alone.stats.nfe_per_sample is not None
    with pytest.raises(ValueError, match="direct backpropagation only"):
        solve(Decay(), y0, t, lane=PerSample(), gradient=Checkpoint())
    stats = SolveStats()
    f = Decay()
    y = solve(f, y0.clone().requires_grad_(True), t, gradient=Adjoint(seminorm=True),
              stats=stats).ys  # fmt: skip
    y[-1].sum().backward()
    assert stats.nfe_backward > 0 and f.k.grad is not None


def test_an_adaptive_controller_that_is_not_a_step_size_controller_is_refused_by_name():
    """An adaptive solve reads ``rtol``, ``atol`` and the step rules of a StepSizeController:
    a controller of one's own that says it is adaptive without being one is a clear error,
    not an AttributeError from inside the solve."""

    class Mine(solvers.AbstractStepSizeController):
        adaptive = True

    with pytest.raises(neuralode.NeuralODEError, match="Mine is adaptive.*StepSizeController"):
        solvers.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), controller=Mine())
