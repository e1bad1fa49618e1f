"""Vector fields ``f(t, h)`` for Neural ODEs.

Every dynamics module here has ``forward(t, h)`` and returns ``dh/dt`` with the shape of ``h``.
``t`` may be a scalar tensor (what ODE solvers pass) or one time per sample, shape ``(batch,)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from .errors import InvalidArgumentError

__all__ = [
    "ACTIVATIONS",
    "ConcatConv2d",
    "ConvODEFunc",
    "HypernetODEFunc",
    "ODEFunc",
    "TimeConcatODEFunc",
    "get_activation",
    "small_init_",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


def get_activation(name: str) -> nn.Module:
    """A new activation module by name (tanh, softplus, relu, gelu, silu, elu)."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"unknown activation {name!r}; valid activations are: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def small_init_(module: nn.Module, gain: float = 0.1) -> nn.Module:
    """Near-identity start: Xavier-uniform weights with a small gain, zero biases.

    Applied to every ``Linear`` and ``Conv2d`` inside ``module`` (in place). A Neural ODE whose
    dynamics start near zero integrates in few steps and trains stably.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return value


def _time_column(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(batch, 1)`` column matching ``h``: a scalar is broadcast, a vector of one time
    per sample is used as is."""
    t = torch.as_tensor(t, dtype=h.dtype, device=h.device)
    if t.numel() == 1:
        return t.reshape(1, 1).expand(h.shape[0], 1)
    if t.ndim == 1 and t.shape[0] == h.shape[0]:
        return t.reshape(-1, 1)
    raise InvalidArgumentError(
        f"t must be a scalar or hold one time per sample (shape ({h.shape[0]},)), "
        f"got shape {tuple(t.shape)}"
    )


class ODEFunc(nn.Module):
    """Autonomous MLP dynamics ``f(t, h) = MLP(h)``.

    Args:
        dim: state size (the last dimension of ``h``).
        hidden: width of the hidden layers.
        depth: number of hidden layers (≥ 1).
        activation: one of ``tanh``, ``softplus``, ``relu``, ``gelu``, ``silu``, ``elu``.
        small_init: Xavier (gain 0.1) weights and zero biases, for a near-identity start.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "tanh",
        small_init: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int(dim, "dim")
        _check_positive_int(hidden, "hidden")
        _check_positive_int(depth, "depth")
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), get_activation(activation)]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        self.dim = dim
        if small_init:
            small_init_(self)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class TimeConcatODEFunc(nn.Module):
    """Time-dependent MLP dynamics: ``t`` is concatenated to the input of every layer.

    Accepts a scalar ``t`` or one time per sample (shape ``(batch,)``); ``h`` is ``(batch, dim)``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "tanh",
        small_init: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int(dim, "dim")
        _check_positive_int(hidden, "hidden")
        _check_positive_int(depth, "depth")
        widths = [dim] + [hidden] * depth + [dim]
        self.layers = nn.ModuleList(
            nn.Linear(w_in + 1, w_out) for w_in, w_out in itertools.pairwise(widths)
        )
        self.activation = get_activation(activation)
        self.dim = dim
        if small_init:
            small_init_(self)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        tt = _time_column(t, h)
        x = h
        for i, layer in enumerate(self.layers):
            x = layer(torch.cat([x, tt], dim=1))
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


class HypernetODEFunc(nn.Module):
    """Dynamics whose first layer is generated from ``t`` by a hypernetwork.

    ``f(t, h) = W_out σ(W(t) h + b(t)) + b_out`` with ``[W(t), b(t)] = Hyper(t)``. Correct both for
    a scalar ``t`` (one weight matrix for the batch) and for one time per sample (a weight matrix
    per sample).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 32,
        hyper_hidden: int = 32,
        activation: str = "tanh",
        small_init: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int(dim, "dim")
        _check_positive_int(hidden, "hidden")
        _check_positive_int(hyper_hidden, "hyper_hidden")
        self.dim, self.hidden = dim, hidden
        self.hyper = nn.Sequential(
            nn.Linear(1, hyper_hidden),
            nn.Tanh(),
            nn.Linear(hyper_hidden, hidden * dim + hidden),
        )
        self.activation = get_activation(activation)
        self.out = nn.Linear(hidden, dim)
        if small_init:
            small_init_(self)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=h.dtype, device=h.device)
        n_w = self.hidden * self.dim
        if t.numel() == 1:
            params = self.hyper(t.reshape(1, 1))[0]
            w = params[:n_w].reshape(self.hidden, self.dim)
            b = params[n_w:]
            x = h @ w.T + b
        else:
            tt = _time_column(t, h)
            params = self.hyper(tt)
            w = params[:, :n_w].reshape(-1, self.hidden, self.dim)
            b = params[:, n_w:]
            x = torch.einsum("bij,bj->bi", w, h) + b
        return self.out(self.activation(x))


class ConcatConv2d(nn.Module):
    """A 2-D convolution with the time appended as an extra constant input channel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size, stride, padding)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.numel() == 1:
            tt = t.reshape(1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        else:
            tt = _time_column(t, x.flatten(1)).reshape(-1, 1, 1, 1)
            tt = tt.expand(x.shape[0], 1, x.shape[2], x.shape[3])
        return self.conv(torch.cat([x, tt], dim=1))


def group_norm(channels: int) -> nn.GroupNorm:
    """Group normalisation with up to 32 groups (the largest divisor of ``channels`` ≤ 32 that
    divides 32), as in the ODE-Net; works for augmented channel counts too."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ConvODEFunc(nn.Module):
    """Convolutional dynamics of the ODE-Net of Chen et al. (2018) for feature maps.

    norm → ReLU → conv(t) → norm → ReLU → conv(t) → norm, where conv(t) sees the time as an extra
    channel and norm is group normalisation (32 groups for 64 channels).
    """

    def __init__(self, channels: int, activation: str = "relu", small_init: bool = False) -> None:
        super().__init__()
        _check_positive_int(channels, "channels")
        self.norm1 = group_norm(channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = group_norm(channels)
        self.activation = get_activation(activation)
        self.dim = channels
        if small_init:
            small_init_(self)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, self.activation(self.norm1(x)))
        out = self.conv2(t, self.activation(self.norm2(out)))
        return self.norm3(out)
