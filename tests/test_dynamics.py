import pytest
import torch
from torch import nn

from neuralode import (
    ACTIVATIONS,
    ConcatConv2d,
    ConvODEFunc,
    HypernetODEFunc,
    ODEFunc,
    TimeConcatODEFunc,
    small_init_,
)

VECTOR_FUNCS = [ODEFunc, TimeConcatODEFunc, HypernetODEFunc]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("cls", VECTOR_FUNCS, ids=lambda c: c.__name__)
def test_vector_dynamics_shape_and_activation(cls, activation):
    f = cls(5, 16, activation=activation)
    h = torch.randn(7, 5)
    out = f(torch.tensor(0.3), h)
    assert out.shape == h.shape
    assert torch.isfinite(out).all()
    assert any(type(m) is type(ACTIVATIONS[activation]()) for m in f.modules())


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*gelu.*silu.*tanh"):
        ODEFunc(3, activation="swish")


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="must be a positive integer"):
        ODEFunc(bad)


def test_depth_and_width():
    f = ODEFunc(4, hidden=10, depth=3)
    linears = [m for m in f.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (4, 10),
        (10, 10),
        (10, 10),
        (10, 4),
    ]


def test_small_init_is_xavier_gain_01_with_zero_bias():
    torch.manual_seed(0)
    f = ODEFunc(64, hidden=256, small_init=True)
    for m in f.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
            bound = 0.1 * (6 / (m.in_features + m.out_features)) ** 0.5
            assert m.weight.abs().max() <= bound
            assert m.weight.abs().max() > 0.9 * bound  # uniform on [-bound, bound]
    h = torch.randn(8, 64)
    big = ODEFunc(64, hidden=256)
    assert f(0, h).norm() < 0.2 * big(0, h).norm()
    conv = small_init_(ConvODEFunc(8))
    assert torch.all(conv.conv1.conv.bias == 0)


@pytest.mark.parametrize("cls", [TimeConcatODEFunc, HypernetODEFunc], ids=lambda c: c.__name__)
def test_per_sample_times_equal_scalar_times(cls):
    """One time per sample gives, for every sample, what a scalar time gives it alone —
    the tutorial's hypernetwork broke on this."""
    f = cls(3, 8)
    h = torch.randn(5, 3)
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0])
    batched = f(ts, h)
    for i in range(5):
        single = f(ts[i], h[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single)
    assert not torch.allclose(f(torch.tensor(0.0), h), f(torch.tensor(1.0), h))


def test_time_dependence_of_time_funcs():
    h = torch.randn(2, 3)
    assert not torch.allclose(TimeConcatODEFunc(3)(0.0, h), TimeConcatODEFunc(3)(1.0, h))
    f = ODEFunc(3)
    torch.testing.assert_close(f(torch.tensor(0.0), h), f(torch.tensor(5.0), h))


def test_bad_time_shape():
    with pytest.raises(ValueError, match="one time per sample"):
        TimeConcatODEFunc(3)(torch.zeros(4), torch.randn(5, 3))


def test_conv_dynamics_is_the_odenet_function():
    f = ConvODEFunc(64)
    x = torch.randn(2, 64, 6, 6)
    out = f(torch.tensor(0.5), x)
    assert out.shape == x.shape
    assert f.norm1.num_groups == 32
    assert f.conv1.conv.in_channels == 65  # time as an extra channel
    # time matters
    assert not torch.allclose(out, f(torch.tensor(0.0), x))
    # per-sample time agrees with scalar time
    ts = torch.tensor([0.1, 0.7])
    batched = f(ts, x)
    torch.testing.assert_close(batched[1:], f(ts[1], x[1:]))


def test_concat_conv_time_channel_is_constant_time():
    c = ConcatConv2d(2, 3)
    x = torch.randn(1, 2, 4, 4)
    manual = c.conv(torch.cat([x, torch.full((1, 1, 4, 4), 0.7)], 1))
    torch.testing.assert_close(c(torch.tensor(0.7), x), manual)
