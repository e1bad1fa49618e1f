"""The fused CPU kernels of the native engine: each kernel against plain tensor arithmetic, and
whole solves with and without them (``NEURALODE_FUSED=0``) against each other and torchdiffeq."""

import copy
import math
import os

import pytest
import torch
import torchdiffeq
from torch import nn

import neuralode
from neuralode import NonFiniteStateError, SolveStats
from neuralode.solvers import _kernels as kernels
from neuralode.solvers import _newton
from neuralode.solvers._evaluator import Evaluator
from neuralode.solvers._tableau import TABLEAUX

F64 = torch.float64

NATIVE = dict(backend="native")

built = pytest.mark.skipif(
    not kernels.built, reason="the fused kernels were not built (no C compiler)"
)


def test_kernels_are_built_where_required():
    if not kernels.built:
        if os.environ.get("CI") or os.environ.get("NEURALODE_REQUIRE_FUSED"):
            pytest.fail("neuralode.solvers._fused was not built: is a C compiler installed?")
        pytest.skip("the fused kernels were not built (no C compiler)")
    assert kernels.available()


def test_environment_variable_disables_them(monkeypatch):
    monkeypatch.setenv("NEURALODE_FUSED", "0")
    assert not kernels.available()
    assert not kernels.usable(torch.zeros(3))
    # the finiteness check of a solution is not a step of a solve: it keeps its one pass
    assert kernels.all_finite(torch.zeros(3)) is True
    assert kernels.all_finite(torch.tensor([0.0, float("inf")])) is False


# ------------------------------------------------------------------------------ kernels


def _flat(pairs):
    return tuple(x for pair in pairs for x in pair)


def _stages(ks, base=None):
    stages = kernels.Stages(ks[0] if base is None else base)
    for k in ks:
        stages.append(k)
    return stages


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [0, 1, 2, 5, 8, 9, 13, 17])
@pytest.mark.parametrize("with_base", [True, False])
def test_lincomb_matches_tensor_arithmetic(dtype, m, with_base):
    n = 1003  # not a multiple of any vector width
    ks = [torch.randn(n, dtype=dtype) for _ in range(m + 1)]
    base = torch.randn(n, dtype=dtype)
    pairs = [(j, float(torch.randn(()))) for j in range(m)]
    scale = 0.37
    out = kernels.lincomb(_stages(ks, base), _flat(pairs), scale, with_base=with_base)
    ref = base.double().clone() if with_base else torch.zeros(n, dtype=torch.float64)
    for j, c in pairs:
        ref += c * scale * ks[j].double()
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@built
def test_lincomb_with_repeated_terms():
    x = torch.arange(6.0)
    k = torch.ones(6)
    out = kernels.lincomb(_stages([k], x), (0, 2.0, 0, 3.0), 1.0)  # x + 2k + 3k
    torch.testing.assert_close(out, torch.arange(6.0) + 5)


@built
def test_accumulate_in_place_matches_tensor_arithmetic():
    targets = [torch.randn(3, 4, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    before = [t.clone() for t in targets]
    parts = [[torch.randn(3, 4, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]]
    parts.append([p.T.contiguous().T for p in (torch.randn(4, 3, dtype=torch.float64).T,)])
    parts[1].append(torch.randn(7, dtype=torch.float64))
    kernels.accumulate_(targets, parts, (0, 0.5, 1, -2.0), 0.1)
    for i, t in enumerate(targets):
        want = before[i] + 0.1 * (0.5 * parts[0][i] - 2.0 * parts[1][i])
        torch.testing.assert_close(t, want, rtol=1e-14, atol=1e-14)


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 6, 8, 12])
@pytest.mark.parametrize("segments", [1, 2])
def test_error_ratio_matches_tensor_arithmetic(dtype, m, segments):
    seg = 257
    n = seg * segments
    y0, y1 = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    ks = [torch.randn(n, dtype=dtype) for _ in range(m)]
    pairs = [(j, float(torch.randn(()))) for j in range(m)]
    rtol, atol, dt = 1e-3, 1e-5, 0.1
    scratch = kernels.Scratch(y0, (n, seg))
    ratio = kernels.error_ratio(_stages(ks, y0), y1, _flat(pairs), dt, rtol, atol, scratch)
    err = sum(c * dt * ks[j].double() for j, c in pairs)
    scaled = err / (atol + rtol * torch.maximum(y0.abs(), y1.abs()).double())
    ref = max(float(p.pow(2).mean().sqrt()) for p in scaled.split(seg))
    assert math.isclose(ratio, ref, rel_tol=1e-5 if dtype == torch.float32 else 1e-12)


@built
def test_the_workspace_is_made_only_for_a_sum_of_more_than_one_pass_of_terms():
    y0 = torch.zeros(8)
    scratch = kernels.Scratch(y0, (8, 8))
    assert scratch.address(_flat([(j, 1.0) for j in range(kernels.FUSED_TERMS)])) == 0
    assert scratch.tensor is None
    nine = _flat([(j, 1.0) for j in range(kernels.FUSED_TERMS + 1)])
    assert scratch.address(nine) != 0 and scratch.tensor.numel() == 8
    ks = [torch.ones(8) for _ in range(9)]
    with pytest.raises(ValueError, match="more than 8 terms needs a scratch"):  # the C guard
        kernels._fused.error_ratio(False, 8, 8, y0.data_ptr(), y0.data_ptr(), 1e-3, 1e-6, 0,
                                   [k.data_ptr() for k in ks], nine, 1.0)  # fmt: skip


@built
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_error_ratio_is_nan_for_a_non_finite_state(bad):
    y0, y1, k = torch.zeros(8), torch.zeros(8), torch.ones(8)
    y1[3] = bad
    scratch = kernels.Scratch(y0, (8, 8))
    ratio = kernels.error_ratio(_stages([k], y0), y1, (0, 1.0), 1.0, 1e-3, 1e-6, scratch)
    assert math.isnan(ratio)


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_matches_torch(dtype):
    x = torch.randn(1001, dtype=dtype) * 1e30
    assert kernels.all_finite(x) is True
    assert kernels.all_finite(x[:0]) is True
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[777] = bad
        assert kernels.all_finite(y) is False
    assert kernels.all_finite(x[::2]) is None  # not contiguous: PyTorch decides
    assert kernels.all_finite(x.half()) is None


@built
def test_kernels_reject_malformed_terms():
    x = torch.zeros(4)
    st = _stages([x])
    with pytest.raises(IndexError, match="out of range"):
        kernels.lincomb(st, (1, 1.0), 1.0)
    with pytest.raises(ValueError, match="pairs"):
        kernels.lincomb(st, (0, 1.0, 0), 1.0)
    with pytest.raises(TypeError):
        kernels.lincomb(st, [0, 1.0], 1.0)
    with pytest.raises(ValueError, match="extent"):
        kernels.Scratch(x, (4, 0))
    with pytest.raises(ValueError, match="extent"):
        kernels.Scratch(x, (5, 5))


# ----------------------------------------------------------------- memory safety (issue 10)


@built
@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3),  # fewer elements: the kernel would read past its end
        torch.zeros(5),  # more elements
        torch.zeros(4, dtype=torch.float64),  # another dtype
        torch.zeros(8)[::2],  # not contiguous
    ],
    ids=["short", "long", "dtype", "strided"],
)
def test_every_buffer_is_proven_before_a_kernel_reads_it(bad):
    x, k = torch.zeros(4), torch.ones(4)
    stages = _stages([k], x)
    if not bad.is_contiguous():  # a base of another layout
        with pytest.raises(ValueError, match="fused kernels need"):
            kernels.Stages(bad)
    with pytest.raises(ValueError, match="fused kernels need"):
        kernels.error_ratio(stages, bad, (0, 1.0), 1.0, 1e-3, 1e-6, kernels.Scratch(x, (4, 4)))
    with pytest.raises(ValueError, match="fused kernels need"):  # scratch of another dtype
        kernels.error_ratio(
            stages, x, (0, 1.0), 1.0, 1e-3, 1e-6, kernels.Scratch(x.double(), (4, 4))
        )
    with pytest.raises(ValueError, match="fused kernels need"):  # an unreadable dtype
        kernels.Stages(torch.zeros(4, dtype=torch.float16))


@built
def test_the_adjoint_quadrature_proves_its_buffers():
    target = torch.zeros(4)
    with pytest.raises(ValueError, match="elements but the state has 4"):
        kernels.accumulate_([target], [[torch.ones(3)]], (0, 1.0), 1.0)
    with pytest.raises(ValueError, match="fused kernels need"):
        kernels.accumulate_([torch.zeros(8)[::2]], [[torch.ones(4)]], (0, 1.0), 1.0)


@built
def test_a_stage_of_another_size_or_device_is_refused_and_others_are_conformed():
    stages = kernels.Stages(torch.zeros(4))
    for wrong in (torch.zeros(3), torch.zeros(2, 4)):
        with pytest.raises(ValueError, match="elements but the state has 4"):
            stages.append(wrong)
    with pytest.raises(ValueError, match="device"):
        stages.append(torch.zeros(4, device="meta"))
    k = stages.append(torch.arange(8, dtype=torch.float64)[::2])  # strided float64: converted
    assert k.dtype == torch.float32 and k.is_contiguous()
    torch.testing.assert_close(k, torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert len(stages) == 1 and stages[0] is k


def test_no_module_but_the_kernels_module_touches_raw_addresses():
    import pathlib

    import neuralode.solvers as solvers

    root = pathlib.Path(solvers.__file__).parent.parent
    users = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py") if "data_ptr(" in p.read_text()
    )
    assert users == ["solvers/_kernels.py"]


@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize("method", ["dopri5", "rk4", "tsit5"])
def test_a_derivative_that_changes_size_mid_solve_is_an_error(monkeypatch, fused, method):
    """The reported memory-safety bug: f returns fewer elements after t = 0.3. The fused path
    read past the end and returned a wrong answer with exit 0; now every call is checked."""
    monkeypatch.setenv("NEURALODE_FUSED", fused)

    def f(t, y):
        return -y if t < 0.3 else -y[: y.numel() // 2]

    opts = {"step_size": 0.05} if method == "rk4" else None
    for n in (32768, 64):
        with pytest.raises(ValueError, match="on every call"), torch.no_grad():
            neuralode.odeint(f, torch.ones(n), torch.tensor([0.0, 1.0]), method=method,
                             options=opts, **NATIVE)  # fmt: skip
        with pytest.raises(ValueError, match="on every call"):  # under autograd too
            neuralode.odeint(f, torch.ones(n, requires_grad=True), torch.tensor([0.0, 1.0]),
                             method=method, options=opts, **NATIVE)  # fmt: skip


def test_a_tuple_derivative_that_changes_shape_mid_solve_is_an_error():
    def f(t, y):
        a, b = y
        return (-a, -b) if t < 0.3 else (-a, -b[:1])

    y0 = (torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="on every call"), torch.no_grad():
        neuralode.odeint(f, y0, torch.tensor([0.0, 1.0]), **NATIVE)


# ------------------------------------------------------------------------------ solves


class Field(nn.Module):
    def __init__(self, dim=5, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def _solve_both(monkeypatch, fn):
    """``fn()`` with the fused kernels and with plain tensor operations."""
    stats_fused, stats_plain = SolveStats(), SolveStats()
    fused = fn(stats_fused)
    with monkeypatch.context() as m:
        m.setenv("NEURALODE_FUSED", "0")
        plain = fn(stats_plain)
    return fused, plain, stats_fused, stats_plain


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["rk4", "euler", "midpoint"])
@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
def test_fused_and_plain_fixed_step_solves_are_the_same(monkeypatch, dtype, method, reverse):
    f = Field().to(dtype)
    y0 = torch.randn(7, 5, dtype=dtype)
    t = torch.linspace(0.0, 2.0, 6, dtype=dtype)
    if reverse:
        t = t.flip(0)

    def run(stats):
        with torch.no_grad():
            return neuralode.odeint(
                f, y0, t, method=method, options={"step_size": 0.05}, stats=stats, **NATIVE
            )

    fused, plain, sf, sp = _solve_both(monkeypatch, run)
    same = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fused, plain, rtol=same, atol=same)
    assert sf.nfe_forward == sp.nfe_forward
    ref = torchdiffeq.odeint(f, y0, t, method=method, options={"step_size": 0.05})
    torch.testing.assert_close(fused, ref, rtol=same, atol=same)


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
def test_fused_and_plain_adaptive_solves_agree(monkeypatch, dtype, method, reverse):
    """Rounding may tip an accept/reject decision, so the two agree within the tolerance, each
    with an accurate reference, and take about the same number of steps."""
    f = Field().to(dtype)
    y0 = torch.randn(7, 5, dtype=dtype)
    t = torch.linspace(0.0, 2.0, 6, dtype=dtype)
    if reverse:
        t = t.flip(0)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-9)

    def run(stats):
        with torch.no_grad():
            return neuralode.odeint(f, y0, t, method=method, stats=stats, **tol, **NATIVE)

    fused, plain, sf, sp = _solve_both(monkeypatch, run)
    with torch.no_grad():
        f64 = copy.deepcopy(f).double()
        exact = torchdiffeq.odeint(f64, y0.double(), t.double(), rtol=1e-12, atol=1e-12)
    bound = 1e3 * (tol["rtol"] + tol["atol"])
    if method != "tsit5":  # low orders at tight tolerances: as accurate as torchdiffeq, or better
        ref = torchdiffeq.odeint(f, y0, t, method=method, **tol).double()
        bound = max(bound, 2 * (ref - exact).abs().max().item())
    for sol in (fused, plain):
        assert (sol.double() - exact).abs().max().item() < bound
    # at most a step or two more or fewer
    assert abs(sf.nfe_forward - sp.nfe_forward) <= 2 * TABLEAUX[method].stages


@built
def test_fused_solve_of_a_tuple_state_and_with_a_custom_norm(monkeypatch):
    f1, f2 = Field(3), Field(4)

    def func(t, y):
        return f1(t, y[0]), f2(t, y[1]) * 0.5

    y0 = (torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    f1.double(), f2.double()
    t = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64)
    for options in (None, {"norm": lambda x: max(v.abs().max() for v in x)}):

        def run(stats, options=options):
            with torch.no_grad():
                return neuralode.odeint(func, y0, t, options=options, stats=stats, **NATIVE)

        fused, plain, sf, sp = _solve_both(monkeypatch, run)
        for a, b in zip(fused, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert sf.nfe_forward == sp.nfe_forward


@built
@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_fused_gradients_equal_plain_ones_and_direct_backprop(monkeypatch, gradient):
    f = Field().double()
    y0 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    kw = dict(rtol=1e-9, atol=1e-10, **NATIVE)

    def grads(stats, gradient=gradient):
        if gradient == "adjoint":
            out = neuralode.odeint_adjoint(f, y0, t, stats=stats, **kw)
        else:
            out = neuralode.odeint(f, y0, t, gradient=gradient, stats=stats, **kw)
        return torch.autograd.grad((out**2).sum(), (y0, *f.parameters()))

    fused, plain, sf, sp = _solve_both(monkeypatch, grads)
    direct = grads(SolveStats(), gradient="direct")
    for a, b, d in zip(fused, plain, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-7)
    assert abs(sf.nfe_backward - sp.nfe_backward) <= 0.1 * sp.nfe_backward


@built
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2"])
def test_fused_dense_output_equals_the_plain_one(method):
    tab = TABLEAUX[method]
    y0 = torch.randn(2, 9, dtype=torch.float64)
    ev = Evaluator(
        lambda t, y: torch.sin(y) * torch.cos(3 * t),
        1.0,
        torch.float64,
        torch.device("cpu"),
        SolveStats(),
    )
    plain_k, fused_k = (
        kernels.TorchKernels(None, None, None),
        kernels.FusedKernels(None, None, None, y0),
    )
    with torch.no_grad():
        f0 = ev(0.2, y0)
        y1, ks = plain_k.rk_stages(ev, tab, 0.2, y0, f0, 0.3)
        y1_fused, ks_fused = fused_k.rk_stages(ev, tab, 0.2, y0, f0, 0.3)
        torch.testing.assert_close(y1_fused, y1, rtol=1e-14, atol=1e-14)
        f1 = ks[-1] if tab.fsal else ev(0.5, y1)
        for theta in (0.0, 0.1, 0.5, 0.93):
            plain = plain_k.dense(tab, y0, y1, ks, f1, 0.3, theta)
            fused = fused_k.dense(tab, y0, y1, ks_fused, f1, 0.3, theta)
            torch.testing.assert_close(fused, plain, rtol=1e-14, atol=1e-14)


def _spy_on_fused(monkeypatch):
    used = []
    real = kernels.select

    def spy(y0, *args):
        chosen = real(y0, *args)
        used.append(type(chosen).__name__)
        return chosen

    monkeypatch.setattr(kernels, "select", spy)
    return used


@built
def test_when_the_kernels_are_used(monkeypatch):
    used = _spy_on_fused(monkeypatch)
    f = Field()
    t = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        neuralode.odeint(f, torch.randn(4, 5), t, **NATIVE)
        neuralode.odeint(f, torch.randn(5, 4).T, t, **NATIVE)  # not contiguous
        rk4 = dict(method="rk4", options={"step_size": 0.25})
        neuralode.odeint(Field().half(), torch.randn(4, 5).half(), t.half(), **rk4, **NATIVE)
        big = kernels.MAX_BYTES // 4 // 5 + 1
        neuralode.odeint(Field().float(), torch.randn(big, 5), t, **NATIVE)  # too large
    neuralode.odeint(Field(), torch.randn(4, 5), t, **NATIVE)  # graph being recorded
    monkeypatch.setenv("NEURALODE_FUSED", "0")
    neuralode.odeint(Field(), torch.randn(4, 5), t, **NATIVE)
    fused, plain, graph = "FusedKernels", "TorchKernels", "GraphKernels"
    assert used == [fused, plain, plain, plain, graph, plain]


@built
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_error_ratio_with_a_graph_is_fused_and_matches_tensor_arithmetic(dtype, monkeypatch):
    """GraphKernels (a solve that records a graph) forms the error ratio in one fused pass over
    stages that require grad, one of them not contiguous, with the value of the tensor form; it
    records nothing (a float, no graph). A state not contiguous takes the tensor form."""
    from neuralode.solvers._loops import RMS_NORM

    passes = []
    real = kernels._fused

    class Counting:
        def __getattr__(self, name):
            if name == "error_ratio":
                passes.append(name)
            return getattr(real, name)

    monkeypatch.setattr(kernels, "_fused", Counting())
    tab = TABLEAUX["dopri5"]
    y = torch.randn(6, 5, dtype=dtype, requires_grad=True)
    ks = [torch.randn(6, 5, dtype=dtype, requires_grad=True) for _ in range(6)]
    ks.append(torch.randn(5, 6, dtype=dtype, requires_grad=True).T)  # not contiguous
    y1 = (y + 0.01 * ks[0]).detach().requires_grad_()
    graph = kernels.GraphKernels(1e-3, 1e-5, RMS_NORM, y)
    plain = kernels.TorchKernels(1e-3, 1e-5, RMS_NORM)
    got = graph.error_ratio(tab, y, y1, ks, 0.1)
    assert passes == ["error_ratio"]
    want = plain.error_ratio(tab, y, y1, ks, 0.1)
    assert type(got) is float and got > 0
    assert got == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-12)
    y_t = y.detach().T.contiguous().T.requires_grad_()  # a state not contiguous: tensor form
    assert graph.error_ratio(tab, y_t, y1, ks, 0.1) == plain.error_ratio(tab, y_t, y1, ks, 0.1)
    assert passes == ["error_ratio"]


@built
def test_a_solve_with_a_graph_takes_the_same_steps_and_gradients_with_the_fused_norms(
    monkeypatch,
):
    """With a graph recorded the sums stay tensor operations and the norms are fused: the same
    steps, evaluations, solution and gradients as the tensor form to rounding, and the kernels
    the solve took are GraphKernels."""
    used = _spy_on_fused(monkeypatch)
    f = Field().double()
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    y0 = torch.randn(6, 5, dtype=F64, requires_grad=True)

    def run(stats):
        y = neuralode.odeint(f, y0, t, rtol=1e-7, atol=1e-9, stats=stats, **NATIVE)
        return (y, *torch.autograd.grad((y**2).sum(), (y0, *f.parameters())))

    fused, plain, sf, sp = _solve_both(monkeypatch, run)
    assert used == ["GraphKernels", "TorchKernels"]
    assert (sf.nfe_forward, sf.steps_accepted, sf.steps_rejected) == (
        sp.nfe_forward, sp.steps_accepted, sp.steps_rejected
    )  # fmt: skip
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@built
def test_derivatives_of_another_layout_or_dtype_are_conformed(monkeypatch):
    A = torch.randn(5, 5, dtype=torch.float64) * 0.3

    def transposed(t, y):  # a non-contiguous derivative of another dtype
        return (A.float() @ y.T.float()).T

    def plain(t, y):
        return y @ A.T

    y0 = torch.randn(4, 5, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        got = neuralode.odeint(transposed, y0, t, rtol=1e-6, atol=1e-8, **NATIVE)
        want = neuralode.odeint(plain, y0, t, rtol=1e-6, atol=1e-8, **NATIVE)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_derivative_on_another_device_is_an_error():
    def elsewhere(t, y):
        return torch.empty_like(y, device="meta")

    with pytest.raises(ValueError, match="device"), torch.no_grad():
        neuralode.odeint(elsewhere, torch.zeros(3), torch.tensor([0.0, 1.0]), **NATIVE)


@built
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_fused_solve_that_turns_non_finite_reports_where(monkeypatch, bad):
    def breaks(t, y):
        return -y if t < 0.5 else torch.full_like(y, bad)

    for fused in ("1", "0"):
        monkeypatch.setenv("NEURALODE_FUSED", fused)
        with pytest.raises(NonFiniteStateError) as info, torch.no_grad():
            neuralode.odeint(breaks, torch.ones(3), torch.tensor([0.0, 2.0]), **NATIVE)
        assert 0.5 <= info.value.time <= 2.0


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_the_newton_update_matches_tensor_arithmetic(dtype, n):
    g = torch.Generator().manual_seed(n)
    z, rhs, fz = (torch.randn(n, generator=g, dtype=dtype) for _ in range(3))
    weights = torch.rand(n, generator=g, dtype=dtype) + 0.1
    inverse = torch.eye(n, dtype=dtype) + 0.1 * torch.randn(n, n, generator=g, dtype=dtype)
    assert _newton.fused_update_usable(rhs, weights, inverse, 0.3)
    got, size = _newton.FusedUpdate(rhs, 0.3, inverse, weights)(z, fz)
    delta = inverse @ (z - rhs - 0.3 * fz)
    same = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, z - delta, rtol=same, atol=same)
    want = float(torch.sqrt(((delta / weights) ** 2).mean()))
    assert size == pytest.approx(want, rel=same)
    # an update that is not finite reports NaN, as the tensor form's norm does
    nan = torch.full_like(fz, math.nan)
    assert math.isnan(_newton.FusedUpdate(rhs, 0.3, inverse, weights)(z, nan)[1])


@built
def test_the_newton_update_proves_its_buffers():
    x, inv = torch.zeros(3), torch.eye(3)
    assert not _newton.fused_update_usable(x, x, None, 0.1)  # no inverse: the tensor form
    assert not _newton.fused_update_usable(x, x, inv, torch.tensor(0.1))  # a tensor g
    assert _newton.fused_update_usable(x, x, inv.t().clone().t(), 0.1)  # contiguous
    assert not _newton.fused_update_usable(x, x, torch.eye(4)[:3, :3], 0.1)  # a strided inverse
    assert not _newton.fused_update_usable(torch.zeros(17), torch.zeros(17), torch.eye(17), 0.1)
    assert not _newton.fused_update_usable(x, x.double(), inv, 0.1)  # weights of another dtype
    # a derivative the kernel cannot read is left to the tensor form; a bad buffer is an error
    for fz in (torch.zeros(4), torch.zeros(3, dtype=torch.float64), torch.zeros(6)[::2]):
        assert _newton.FusedUpdate(x, 0.1, inv, torch.ones(3))(x, fz) is None
    for args in ((torch.zeros(3), torch.zeros(4), torch.eye(3)), (x, x, torch.eye(2))):
        with pytest.raises(ValueError, match="fused kernels need"):
            _newton.FusedUpdate(args[1], 0.1, args[2], torch.ones(3))(args[0], x)
    with pytest.raises(ValueError, match="fused kernels need"):  # an iterate of another size
        _newton.FusedUpdate(x, 0.1, inv, torch.ones(3))(torch.zeros(4), torch.zeros(4))


@built
@pytest.mark.parametrize("method", ["kvaerno5", "kvaerno3", "trbdf2"])
def test_fused_and_plain_newton_iterations_agree(monkeypatch, method):
    """Van der Pol (μ = 100) with and without the fused Newton update: the same steps and
    evaluations, and the same answer to rounding."""

    def vdp(t, y):
        return torch.stack([y[1], 100.0 * (1 - y[0] ** 2) * y[1] - y[0]])

    def run(stats):
        with torch.no_grad():
            return neuralode.odeint(vdp, torch.tensor([2.0, 0.0], dtype=torch.float64),
                                    torch.linspace(0.0, 200.0, 5, dtype=torch.float64),
                                    method=method, rtol=1e-6, atol=1e-8, stats=stats)  # fmt: skip

    calls = []
    newton = _newton.FusedUpdate.__call__
    monkeypatch.setattr(
        _newton.FusedUpdate, "__call__", lambda *args: calls.append(1) or newton(*args)
    )
    fused, plain, sf, sp = _solve_both(monkeypatch, run)
    assert len(calls) >= 0.9 * sf.nfe_forward, (len(calls), sf)  # nearly every evaluation's
    assert (sf.nfe_forward, sf.steps_accepted) == (sp.nfe_forward, sp.steps_accepted)
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------- per-sample Newton iterations


def _iteration_case(dtype, n, B=12, seed=0):
    """A batch mid-iteration whose samples meet every branch of the stopping rule: running or
    not, a first update or a later one, converging, contracting too slowly, at the iteration
    cap, an update that is not finite, with a fresh Jacobian or an old one."""
    from neuralode.solvers._implicit_per_sample import _Iteration

    g = torch.Generator().manual_seed(seed)
    z, rhs, fz = (torch.randn(B, n, generator=g, dtype=dtype) for _ in range(3))
    weights = torch.rand(B, n, generator=g, dtype=dtype) + 0.5
    inverse = torch.eye(n, dtype=dtype) + 0.1 * torch.randn(B, n, n, generator=g, dtype=dtype)
    gs = torch.rand(B, generator=g, dtype=dtype)
    z[5] = rhs[5] + gs[5] * fz[5]  # a residual of zero: converged
    it = _Iteration(z, torch.rand(B, generator=g) < 0.8, torch.rand(B, generator=g, dtype=F64))
    it.count = torch.randint(0, 4, (B,), generator=g)
    it.count[:3] = torch.tensor([0, 1, 6])  # a first update, a later one, one at the cap of 7
    it.running[:3] = True
    size = float(
        torch.sqrt((((inverse[1] @ (z[1] - rhs[1] - gs[1] * fz[1])) / weights[1]) ** 2).mean())
    )
    it.prev = torch.rand(B, generator=g, dtype=F64) * 4
    it.prev[1] = size / 0.95  # contracts at 0.95: gives up
    fz[4, 0] = math.nan  # an update that is not finite
    it.running[4:6] = True
    fresh = torch.rand(B, generator=g) < 0.5
    slowest = torch.rand(B, generator=g, dtype=F64) * 0.5
    return it, fz, rhs, gs, inverse, weights, slowest, fresh


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_the_per_sample_newton_iteration_matches_its_tensor_form(dtype, n):
    """One call of the C kernel against :meth:`_Iteration.tensor_step` on the same batch: the
    same iterates to rounding, and the same bookkeeping and flags exactly."""
    from neuralode.solvers._implicit_per_sample import _Blocks

    for seed in range(4):
        it, fz, rhs, gs, inverse, weights, slowest, fresh = _iteration_case(dtype, n, seed=seed)
        B = rhs.shape[0]
        assert _newton.fused_iteration_usable(rhs, weights, inverse, gs)
        ours = _copy_iteration(it)
        slow_ours = slowest.clone()
        flags = _newton.fused_iteration(ours, fz, rhs, gs, inverse, weights, slow_ours, fresh,
                                        1e-2, 7)  # fmt: skip

        blocks = _Blocks(rhs, None)
        blocks._lu, blocks.fresh = (None, inverse), fresh

        class Stepper:  # what tensor_step reads of the per-sample stepper
            _mean = torch.empty(0)
            _rms = neuralode.solvers._implicit_per_sample.PerSampleESDIRKStepper._rms

            def _blocks(self, blocks=blocks):
                return blocks

        stepper = Stepper()
        stepper.slowest = slowest.clone()
        want = it.tensor_step(stepper, fz, rhs, gs.reshape(B, 1), weights, 1e-2, 7)
        assert flags == want, (flags, want)
        assert want & 1 and want & 2  # the non-finite sample and the slow one were met
        assert it.give_up[1] and it.give_up[2] and it.nonfinite[4] and it.converged[5]
        same = 1e-5 if dtype == torch.float32 else 1e-12
        keep = torch.isfinite(it.z).all(dim=1)
        torch.testing.assert_close(ours.z[keep], it.z[keep], rtol=same, atol=same)
        for name in ("running", "converged", "count", "nonfinite", "give_up"):
            assert torch.equal(getattr(ours, name), getattr(it, name)), name
        for name in ("prev", "eta", "eta_done"):  # (sample 5's size is rounding: atol)
            torch.testing.assert_close(getattr(ours, name), getattr(it, name), rtol=same, atol=same)
        torch.testing.assert_close(slow_ours, stepper.slowest, rtol=same, atol=0)


def _copy_iteration(it):
    from neuralode.solvers._implicit_per_sample import _Iteration

    out = _Iteration.__new__(_Iteration)
    for name in _Iteration.__slots__:
        setattr(out, name, getattr(it, name).clone())
    return out


@built
def test_the_per_sample_newton_iteration_proves_its_buffers():
    it, fz, rhs, gs, inverse, weights, slowest, fresh = _iteration_case(torch.float64, 3)
    usable = _newton.fused_iteration_usable
    assert usable(rhs, weights, inverse, gs)
    assert not usable(rhs, weights, None, gs)  # LU factors: the tensor form
    assert not usable(rhs, weights, inverse.transpose(1, 2), gs)  # not contiguous
    assert not usable(rhs, weights, inverse, gs[:-1])  # not one g per sample
    assert not usable(rhs, weights.float(), inverse, gs)  # weights of another dtype
    big = torch.zeros(2, 17, dtype=F64)
    assert not usable(big, big, torch.zeros(2, 17, 17, dtype=F64), torch.zeros(2, dtype=F64))
    args = (rhs, gs, inverse, weights, slowest, fresh, 1e-2, 7)
    for bad in (fz.float(), fz.t().contiguous().t(), fz[:-1]):  # the tensor form takes these
        assert _newton.fused_iteration(_copy_iteration(it), bad, *args) is None
    wrong = _copy_iteration(it)
    wrong.count = wrong.count.int()
    with pytest.raises(ValueError, match="fused kernels need"):
        _newton.fused_iteration(wrong, fz, *args)
    with pytest.raises(ValueError, match="fused kernels need"):
        _newton.fused_iteration(_copy_iteration(it), fz, rhs, gs, inverse, weights,
                                slowest.float(), fresh, 1e-2, 7)  # fmt: skip


@built
def test_the_per_sample_lane_takes_its_newton_iterations_in_the_kernel(monkeypatch):
    """A batch of small stiff systems: nearly every Newton iteration is one kernel call, and
    the solve takes the evaluations and answers of the tensor form."""
    from neuralode.solvers import _implicit_per_sample as ips

    mus = torch.linspace(20.0, 80.0, 6, dtype=F64)

    def vdp(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mus * (1 - x * x) * v - x], dim=-1)

    def run(stats):
        with torch.no_grad():
            return neuralode.odeint(vdp, torch.tensor([[2.0, 0.0]] * 6, dtype=F64),
                                    torch.linspace(0.0, 20.0, 3, dtype=F64), method="kvaerno5",
                                    rtol=1e-6, atol=1e-8, options={"batch_mode": "per_sample"},
                                    stats=stats)  # fmt: skip

    calls = []
    real = ips.fused_iteration
    monkeypatch.setattr(ips, "fused_iteration", lambda *a: calls.append(1) or real(*a))
    fused, plain, sf, sp = _solve_both(monkeypatch, run)
    # one call per iteration of the batch: at least the hardest sample's Newton iterations
    assert len(calls) >= 0.8 * max(sf.nfe_per_sample), (len(calls), sf.nfe_per_sample)
    assert sf.nfe_per_sample == sp.nfe_per_sample
    assert sf.steps_accepted_per_sample == sp.steps_accepted_per_sample
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-11)
