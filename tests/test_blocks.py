import pytest
import torch
from torch import nn

import neuralode
from neuralode import (
    HybridNeuralODE,
    MultiScaleNeuralODE,
    NeuralODEBlock,
    ODEFunc,
    ResidualStack,
    TimeConcatODEFunc,
    solve_stats,
)


def test_block_solves_and_exposes_stats():
    f = ODEFunc(4, 16)
    block = NeuralODEBlock(f, t1=1.0)
    h = torch.randn(3, 4)
    out = block(h)
    ref = neuralode.odeint(f, h, torch.tensor([0.0, 1.0]), rtol=1e-3, atol=1e-4)[-1]
    torch.testing.assert_close(out, ref)
    assert block.stats.nfe_forward > 0
    assert solve_stats(nn.Sequential(block)).nfe_forward == block.stats.nfe_forward


def test_training_and_evaluation_tolerances():
    torch.manual_seed(1)
    f = ODEFunc(4, 32)
    for m in f.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0)
    block = NeuralODEBlock(f, rtol=1e-2, atol=1e-2, eval_rtol=1e-7, eval_atol=1e-8)
    h = torch.randn(8, 4)
    block.train()
    assert block.tolerances == (1e-2, 1e-2)
    block(h)
    train_nfe = block.stats.nfe_forward
    block.eval()
    assert block.tolerances == (1e-7, 1e-8)
    with torch.no_grad():
        out = block(h)
    assert block.stats.nfe_forward > train_nfe
    ref = neuralode.odeint(f, h, torch.tensor([0.0, 1.0]), rtol=1e-7, atol=1e-8)[-1]
    torch.testing.assert_close(out, ref)


def test_adjoint_block_matches_direct_block():
    torch.manual_seed(2)
    f = TimeConcatODEFunc(3, 8).double()
    h = torch.randn(5, 3, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        block = NeuralODEBlock(f, adjoint=adjoint, rtol=1e-9, atol=1e-9)
        out = block(h)
        grads.append(torch.autograd.grad(out.pow(2).sum(), list(f.parameters())))
        if adjoint:
            assert block.stats.nfe_backward > 0
        else:
            assert block.stats.nfe_backward == 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_times_are_buffers_that_follow_dtype_and_device():
    block = NeuralODEBlock(ODEFunc(2), t1=2.0)
    assert "integration_times" in dict(block.named_buffers())
    block = block.double()
    assert block.integration_times.dtype == torch.float64
    out = block(torch.randn(3, 2, dtype=torch.float64))
    assert out.dtype == torch.float64
    state = block.state_dict()
    assert torch.equal(state["integration_times"], torch.tensor([0.0, 2.0], dtype=torch.float64))


def test_trajectory_output():
    block = NeuralODEBlock(ODEFunc(2), output_times=[0.0, 0.5, 1.0, 2.0])
    h = torch.randn(6, 2)
    traj = block(h)
    assert traj.shape == (4, 6, 2)
    torch.testing.assert_close(traj[0], h)


def test_block_argument_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        NeuralODEBlock(lambda t, h: h)
    with pytest.raises(ValueError, match="rtol must be positive"):
        NeuralODEBlock(ODEFunc(2), rtol=0)
    with pytest.raises(ValueError, match="eval_atol must be positive"):
        NeuralODEBlock(ODEFunc(2), eval_atol=-1)
    with pytest.raises(ValueError, match="strictly increasing"):
        NeuralODEBlock(ODEFunc(2), output_times=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="augment_dim"):
        NeuralODEBlock(ODEFunc(2), augment_dim=-1)
    with pytest.raises(ValueError, match="unknown method 'rk45'.*dopri5.*tsit5"):
        NeuralODEBlock(ODEFunc(2), method="rk45")  # (refused when made, not at the first solve)
    with pytest.raises(ValueError, match="unknown method 'tsit5'.*dopri5"):
        NeuralODEBlock(ODEFunc(2), method="tsit5", backend="torchdiffeq")  # (its backend's names)
    with pytest.raises(TypeError, match="method must be a method name"):
        NeuralODEBlock(ODEFunc(2), method=5)
    with pytest.raises(ValueError, match=r"unknown options \['bogus'\] for method 'rk4'"):
        NeuralODEBlock(ODEFunc(2), method="rk4", options={"bogus": 1})  # (when made)
    with pytest.raises(ValueError, match=r"unknown adjoint_options \['batch_mode'\]"):
        NeuralODEBlock(ODEFunc(2), adjoint=True, adjoint_options={"batch_mode": "per_sample"})
    with pytest.raises(TypeError, match="options must be a dict"):
        NeuralODEBlock(ODEFunc(2), options=[("step_size", 0.1)])


def test_augmented_block_pads_with_zeros():
    f = ODEFunc(5)
    block = NeuralODEBlock(f, augment_dim=2, method="euler", options={"step_size": 1.0})
    h = torch.randn(3, 3)
    out = block(h)
    assert out.shape == (3, 5)
    padded = torch.cat([h, torch.zeros(3, 2)], 1)
    torch.testing.assert_close(out, padded + f(0.0, padded))


def test_residual_stack_with_shared_block_is_euler_with_unit_step():
    """The tutorial's central identity: h ← h + f(h), L times, is Euler with step 1 on [0, L]."""
    torch.manual_seed(0)
    L = 6
    stack = ResidualStack(lambda: TimeConcatODEFunc(4, 16), L, shared=True).double()
    h = torch.randn(5, 4, dtype=torch.float64)
    f = stack.funcs[0]
    euler = neuralode.odeint(
        f,
        h,
        torch.tensor([0.0, float(L)], dtype=torch.float64),
        method="euler",
        options={"step_size": 1.0},
    )[-1]
    torch.testing.assert_close(stack(h), euler, rtol=0, atol=1e-12)
    # and the Neural ODE block with Euler steps of 1 is that same network
    block = NeuralODEBlock(f, t1=float(L), method="euler", options={"step_size": 1.0})
    torch.testing.assert_close(block(h), stack(h), rtol=0, atol=1e-12)
    assert block.stats.nfe_forward == L


def test_residual_stack_unshared_has_independent_blocks():
    stack = ResidualStack(lambda: ODEFunc(3), 4)
    assert len(stack.funcs) == 4
    assert stack.funcs[0].net[0].weight.data_ptr() != stack.funcs[1].net[0].weight.data_ptr()


def test_multiscale_block():
    torch.manual_seed(0)
    fast, slow = ODEFunc(3, 8), ODEFunc(3, 8)
    block = MultiScaleNeuralODE(fast, slow, speedup=5.0, rtol=1e-7, atol=1e-8)
    h = torch.randn(4, 3)
    out = block(h)
    t = torch.tensor([0.0, 1.0])
    ref_fast = neuralode.odeint(lambda s, y: 5.0 * fast(s, y), h, t, rtol=1e-7, atol=1e-8)[-1]
    ref_slow = neuralode.odeint(slow, h, t, rtol=1e-7, atol=1e-8)[-1]
    torch.testing.assert_close(out, ref_fast + ref_slow, rtol=1e-5, atol=1e-5)
    cat = MultiScaleNeuralODE(fast, slow, combine="concat")(h)
    assert cat.shape == (4, 6)
    assert solve_stats(block).solves == 2
    with pytest.raises(ValueError, match="combine"):
        MultiScaleNeuralODE(fast, slow, combine="max")


def test_hybrid_block_is_ode_jump_ode():
    torch.manual_seed(0)
    f1, jump, f2 = TimeConcatODEFunc(3, 8), nn.Linear(3, 3), TimeConcatODEFunc(3, 8)
    block = HybridNeuralODE(f1, jump, f2, t_split=0.4, t1=1.0, rtol=1e-7, atol=1e-8)
    h = torch.randn(4, 3)
    kw = dict(rtol=1e-7, atol=1e-8)
    a = neuralode.odeint(f1, h, torch.tensor([0.0, 0.4]), **kw)[-1]
    b = a + jump(a)
    c = neuralode.odeint(f2, b, torch.tensor([0.4, 1.0]), **kw)[-1]
    torch.testing.assert_close(block(h), c)
    with pytest.raises(ValueError, match="t_split"):
        HybridNeuralODE(f1, jump, f2, t_split=1.5)


def test_the_tutorials_multiscale_block():
    """Fast block over [0, 0.1], slow over [0, 1], a learned layer on the concatenation."""
    torch.manual_seed(0)
    fast, slow = ODEFunc(3, 8), ODEFunc(3, 8)
    block = neuralode.TutorialMultiScaleODE(fast, slow, dim=3, rtol=1e-6, atol=1e-8)
    assert block.fast.integration_times.tolist() == pytest.approx([0.0, 0.1])
    assert block.slow.integration_times.tolist() == [0.0, 1.0]
    assert (block.combine.in_features, block.combine.out_features) == (6, 3)
    h = torch.randn(4, 3)
    kw = dict(rtol=1e-6, atol=1e-8)
    a = neuralode.odeint(fast, h, torch.tensor([0.0, 0.1]), **kw)[-1]
    b = neuralode.odeint(slow, h, torch.tensor([0.0, 1.0]), **kw)[-1]
    want = torch.cat([a, b], dim=1) @ block.combine.weight.T + block.combine.bias
    out = block(h)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in block.parameters())  # the layer is learned too
    with pytest.raises(ValueError, match="fast_t1"):
        neuralode.TutorialMultiScaleODE(fast, slow, dim=3, fast_t1=2.0)


class _Clock(nn.Module):
    def forward(self, t, h):  # dh/dt = t: the time the dynamics see, integrated
        return t * torch.ones_like(h)


def test_the_tutorials_hybrid_block_restarts_time_in_its_second_segment():
    """The tutorial's second segment sees t in [0, 0.5]; the default continues to [0.5, 1]:
    with dh/dt = t they add 0.125 and 0.375."""
    h = torch.zeros(2, 1, dtype=torch.float64)
    kw = dict(rtol=1e-9, atol=1e-10)
    restart = HybridNeuralODE(_Clock(), nn.Identity(), _Clock(), restart_time=True, **kw)
    assert restart.after.integration_times.tolist() == [0.0, 0.5]
    # first segment adds 0.125, the jump doubles (h + h), the second adds 0.125 (or 0.375)
    want = torch.full((2, 1), 2 * 0.125 + 0.125, dtype=torch.float64)
    torch.testing.assert_close(restart(h), want)
    continued = HybridNeuralODE(_Clock(), nn.Identity(), _Clock(), **kw)
    torch.testing.assert_close(continued(h), want + 0.25)
