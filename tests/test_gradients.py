"""Gradients: adjoint against direct backprop, gradcheck, finite differences."""

import pytest
import torch
from torch import nn

import neuralode


class Field(nn.Module):
    def __init__(self, dim=3, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y) * (1 + 0.5 * torch.sin(t))


def _grads(solve, f, y0, t, **kw):
    y0 = y0.clone().requires_grad_(True)
    out = solve(f, y0, t, **kw)
    loss = (out**2).sum() + out[-1].sum()
    params = [y0, *f.parameters()]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("reverse", [False, True], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("norm", [None, "seminorm"])
def test_adjoint_agrees_with_direct_backprop(reverse, norm):
    f = Field().double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64)
    if reverse:
        t = t.flip(0)
    tol = dict(rtol=1e-10, atol=1e-10)
    direct = _grads(neuralode.odeint, f, y0, t, **tol)
    adj_opts = None if norm is None else {"norm": norm}
    adjoint = _grads(neuralode.odeint_adjoint, f, y0, t, adjoint_options=adj_opts, **tol)
    for d, a in zip(direct, adjoint):
        torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-8)


def test_adjoint_tuple_state_agrees_with_direct_backprop():
    lin = nn.Linear(2, 2).double()

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t, y):
            a, b = y
            return (torch.tanh(self.lin(b)), -a)

    f = Pair()
    y0 = (torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = []
    for solve in (neuralode.odeint, neuralode.odeint_adjoint):
        a, b = solve(f, y0, t, rtol=1e-10, atol=1e-10)
        grads.append(torch.autograd.grad(a[-1].sum() + (b[-1] ** 2).sum(), list(f.parameters())))
    for d, a in zip(*grads):
        torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-8)


def test_adjoint_passes_gradcheck():
    torch.manual_seed(0)
    A = torch.randn(2, 2, dtype=torch.float64) * 0.5
    y0 = torch.randn(2, dtype=torch.float64)

    def run(a, y):
        def f(t, s):
            return torch.tanh(s @ a.T)

        out = neuralode.odeint_adjoint(
            f,
            y,
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            rtol=1e-11,
            atol=1e-11,
            adjoint_params=(a,),
        )
        return out[-1]

    assert torch.autograd.gradcheck(
        run, (A.requires_grad_(True), y0.requires_grad_(True)), atol=1e-6, rtol=1e-5
    )


def test_direct_backprop_matches_finite_differences():
    f = Field().double()
    y0 = torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    w = f.net[0].weight

    def loss():
        return neuralode.odeint(f, y0, t, method="rk4", options={"step_size": 0.05})[-1].sum()

    (g,) = torch.autograd.grad(loss(), w)
    eps = 1e-6
    fd = torch.zeros_like(w)
    with torch.no_grad():
        for idx in [(0, 0), (3, 1), (7, 2)]:
            w[idx] += eps
            up = loss()
            w[idx] -= 2 * eps
            down = loss()
            w[idx] += eps
            fd[idx] = (up - down) / (2 * eps)
            assert abs(float(g[idx] - fd[idx])) < 1e-7


@pytest.mark.parametrize("wrt", ["params", "y0"])
def test_torch_func_grad_through_a_solve_equals_autograd(wrt):
    """``torch.func.grad`` through ``odeint`` (functional training): the transform wraps the
    parameters or the state in tensors without memory of their own, which the fused CPU kernels
    cannot read; the solve takes tensor operations for them and gives autograd's gradient (it
    once failed with "Cannot access data pointer of Tensor that doesn't have storage")."""
    from torch.func import functional_call, grad

    f = Field().double()
    params = {k: v.detach() for k, v in f.named_parameters()}
    y0 = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    tol = dict(rtol=1e-8, atol=1e-10)

    def loss(p, y):
        out = neuralode.odeint(lambda s, x: functional_call(f, p, (s, x)), y, t, **tol)
        return (out**2).sum()

    argnums = 0 if wrt == "params" else 1
    got = grad(loss, argnums=argnums)(params, y0)
    leaves = [y0.clone().requires_grad_(True)] if wrt == "y0" else list(f.parameters())
    y_in = leaves[0] if wrt == "y0" else y0
    want = torch.autograd.grad((neuralode.odeint(f, y_in, t, **tol) ** 2).sum(), leaves)
    got = [got] if wrt == "y0" else [got[k] for k, _ in f.named_parameters()]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
