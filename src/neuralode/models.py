"""Classifiers: Neural ODE models and ResNet baselines that share their stem and head, so that
each pair differs only in the middle. ``create_model(name, **kwargs)`` builds one by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .blocks import NeuralODEBlock, ResidualStack
from .dynamics import ConvODEFunc, HypernetODEFunc, ODEFunc, TimeConcatODEFunc, group_norm
from .errors import InvalidArgumentError
from .registry import Registry
from .regularizers import AbstractRegularizer

__all__ = [
    "MODELS",
    "STEMS",
    "MNISTHead",
    "MNISTStem",
    "NeuralODEClassifier",
    "ODENet",
    "ODENetResNet",
    "ResNetClassifier",
    "StridedStem",
    "create_model",
    "list_models",
]

_DYNAMICS: dict[str, type[nn.Module]] = {
    "mlp": ODEFunc,
    "time": TimeConcatODEFunc,
}


def _make_dynamics(
    kind: str, dim: int, hidden: int, depth: int, activation: str, small_init: bool
) -> nn.Module:
    if kind == "hypernet":  # one generated hidden layer; depth does not apply
        return HypernetODEFunc(dim, hidden, activation=activation, small_init=small_init)
    try:
        cls = _DYNAMICS[kind]
    except KeyError:
        valid = ", ".join(sorted([*_DYNAMICS, "hypernet"]))
        raise InvalidArgumentError(
            f"unknown dynamics {kind!r}; valid dynamics are: {valid}"
        ) from None
    return cls(dim, hidden, depth, activation=activation, small_init=small_init)


class MNISTStem(nn.Module):
    """The tutorial's MNIST feature extractor, 28×28 → 14×14 → 7×7, then a linear map to the
    hidden size: conv 1→32 3×3 pad 1, BatchNorm, ReLU; conv 32→64 3×3 stride 2 pad 1,
    BatchNorm, ReLU; conv 64→64 3×3 stride 2 pad 1, BatchNorm, ReLU; flatten;
    Linear(64·7·7 → hidden). 257,482 parameters with its head at ``hidden=64``."""

    def __init__(self, hidden: int = 64, channels: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=1, padding=1),
            nn.BatchNorm2d(channels // 2),
            nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * 7 * 7, hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StridedStem(nn.Module):
    """neuralode's earlier MNIST stem (not the tutorial's): conv 3×3, conv 4×4 stride 2,
    conv 4×4 stride 2 with ReLUs and no normalisation, then a linear map to the hidden size.
    Kept for runs made with it (models ``ode-strided`` and ``resnet-strided``)."""

    def __init__(self, hidden: int = 64, channels: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * 7 * 7, hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


STEMS: dict[str, type[nn.Module]] = {"tutorial": MNISTStem, "strided": StridedStem}


def _make_stem(stem: str, hidden: int, in_channels: int) -> nn.Module:
    try:
        cls = STEMS[stem]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"unknown stem {stem!r}; valid stems are: {', '.join(STEMS)}"
        ) from None
    return cls(hidden, in_channels=in_channels)


class MNISTHead(nn.Module):
    """ReLU and a linear layer to the class logits."""

    def __init__(self, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class NeuralODEClassifier(nn.Module):
    """An MNIST Neural ODE: stem → ODE block on the hidden vector over t ∈ [0, 1] → head.

    With its defaults it is the tutorial's model, parameter for parameter (290,570): the
    tutorial's stem (:class:`MNISTStem`), dynamics ``Linear(64→128), Tanh, Linear(128→128),
    Tanh, Linear(128→64)`` with PyTorch's default initialisation, dopri5, and the head ReLU,
    ``Linear(64→10)``.

    Args:
        hidden: size of the hidden vector the ODE evolves.
        ode_hidden: width of the dynamics MLP's hidden layers.
        ode_depth: number of hidden layers of the dynamics MLP.
        dynamics: ``"mlp"`` (autonomous), ``"time"`` (time-concatenated) or ``"hypernet"``.
        activation: activation of the dynamics.
        small_init: near-identity initialisation of the dynamics (ours; off in the tutorial).
        augment_dim: ANODE — zero dimensions appended to the state.
        stem: ``"tutorial"`` or ``"strided"`` (:class:`StridedStem`, neuralode's earlier one).
        num_classes: output classes.
        in_channels: input image channels.
        **block_kwargs: method, rtol, atol, eval_rtol, eval_atol, adjoint, regularizers, ... of
            :class:`NeuralODEBlock`.
    """

    def __init__(
        self,
        hidden: int = 64,
        ode_hidden: int = 128,
        ode_depth: int = 2,
        dynamics: str = "mlp",
        activation: str = "tanh",
        small_init: bool = False,
        augment_dim: int = 0,
        num_classes: int = 10,
        in_channels: int = 1,
        t1: float = 1.0,
        regularizers: Iterable[AbstractRegularizer] = (),
        stem: str = "tutorial",
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.stem = _make_stem(stem, hidden, in_channels)
        dim = hidden + augment_dim
        func = _make_dynamics(dynamics, dim, ode_hidden, ode_depth, activation, small_init)
        self.ode = NeuralODEBlock(
            func, t1, augment_dim=augment_dim, regularizers=regularizers, **block_kwargs
        )
        self.head = MNISTHead(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.ode.integrate(self.stem(x))
        return self.head(h)


class ResNetClassifier(nn.Module):
    """The Neural ODE classifier's discrete twin: the same stem and head, ``num_blocks``
    residual blocks ``h ← h + MLP_i(h)`` in the middle.

    With its defaults it is the tutorial's ResNet twin, parameter for parameter (356,938): six
    blocks ``Linear(64→128), Tanh, Linear(128→64)`` with PyTorch's default initialisation.
    """

    def __init__(
        self,
        num_blocks: int = 6,
        hidden: int = 64,
        block_hidden: int = 128,
        block_depth: int = 1,
        activation: str = "tanh",
        small_init: bool = False,
        shared: bool = False,
        num_classes: int = 10,
        in_channels: int = 1,
        stem: str = "tutorial",
    ) -> None:
        super().__init__()
        self.stem = _make_stem(stem, hidden, in_channels)
        self.blocks = ResidualStack(
            lambda: ODEFunc(
                hidden, block_hidden, block_depth, activation=activation, small_init=small_init
            ),
            num_blocks,
            shared=shared,
        )
        self.head = MNISTHead(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class _ODENetStem(nn.Module):
    """Chen et al. (2018) MNIST downsampling: 28×28 → 64 × 6 × 6 feature maps."""

    def __init__(self, in_channels: int = 1, channels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, 1),
            group_norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, 2, 1),
            group_norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ODENetHead(nn.Module):
    def __init__(self, channels: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            group_norm(channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ODENet(nn.Module):
    """The MNIST ODE-Net of Chen et al. (2018): an ODE block with convolutional dynamics on
    64×6×6 feature maps (about 0.22M parameters)."""

    def __init__(
        self,
        channels: int = 64,
        augment_dim: int = 0,
        num_classes: int = 10,
        in_channels: int = 1,
        small_init: bool = False,
        t1: float = 1.0,
        regularizers: Iterable[AbstractRegularizer] = (),
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.stem = _ODENetStem(in_channels, channels)
        dim = channels + augment_dim
        self.ode = NeuralODEBlock(
            ConvODEFunc(dim, small_init=small_init),
            t1,
            augment_dim=augment_dim,
            regularizers=regularizers,
            **block_kwargs,
        )
        self.head = _ODENetHead(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.ode.integrate(self.stem(x))
        return self.head(h)


class _ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(norm(conv(relu(norm(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.norm1(x)))
        out = self.conv2(torch.relu(self.norm2(out)))
        return x + out


class ODENetResNet(nn.Module):
    """The ODE-Net's ResNet counterpart: the same stem and head, ``num_blocks`` (6) residual
    blocks in the middle."""

    def __init__(
        self, num_blocks: int = 6, channels: int = 64, num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise InvalidArgumentError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        self.stem = _ODENetStem(in_channels, channels)
        self.blocks = nn.Sequential(*(_ResBlock(channels) for _ in range(num_blocks)))
        self.head = _ODENetHead(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _strided_ode(**kwargs: Any) -> nn.Module:
    """neuralode's earlier MNIST Neural ODE (before the tutorial's model was the default)."""
    kwargs = {"stem": "strided", "ode_hidden": 64, "small_init": True, **kwargs}
    return NeuralODEClassifier(**kwargs)


def _strided_resnet(**kwargs: Any) -> nn.Module:
    """neuralode's earlier ResNet twin (blocks of two hidden layers of 64)."""
    kwargs = {"stem": "strided", "block_hidden": 64, "block_depth": 2, "small_init": True,
              **kwargs}  # fmt: skip
    return ResNetClassifier(**kwargs)


MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model", "a model is a factory registered with MODELS.register(name, factory)"
)
"""The classifiers by name (a factory each, called with keyword arguments)."""
for _name, _factory in (
    ("ode", NeuralODEClassifier),
    ("resnet", ResNetClassifier),
    ("ode-strided", _strided_ode),
    ("resnet-strided", _strided_resnet),
    ("odenet", ODENet),
    ("odenet-resnet", ODENetResNet),
):
    MODELS.register(_name, _factory)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODELS.names())


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("resnet", num_blocks=6)``."""
    return MODELS.get(name)(**kwargs)
