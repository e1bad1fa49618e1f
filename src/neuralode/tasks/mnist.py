"""MNIST classification: the tutorial's Neural ODE classifier, its ResNet twin, and the other
classifiers of :mod:`neuralode.models`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import TensorData, batches
from ..models import create_model
from .base import (
    ModelRegistry,
    Step,
    Task,
    TrainOptions,
    evaluate_batches,
    option,
    register_task,
)
from .datasets import MNISTDataOptions, mnist_splits

__all__ = [
    "MNISTData",
    "MNISTDataOptions",
    "MNISTOptions",
    "MNISTTask",
    "evaluate_classifier",
    "mnist_splits",
]

MODELS = ModelRegistry()
"""The MNIST task's models: the models of :data:`neuralode.models.MODELS` (one registry of the
models themselves), each with the task's options it takes."""

for _name, _uses, _description in (
    ("ode", "hidden augment_dim t1 solver regularizers",
     "the tutorial's Neural ODE classifier (290,570 parameters)"),
    ("resnet", "hidden num_blocks", "the tutorial's ResNet twin: the same stem and head, 6 blocks"),
    ("ode-strided", "hidden augment_dim t1 solver regularizers",
     "neuralode's earlier Neural ODE classifier (strided stem)"),
    ("resnet-strided", "hidden num_blocks", "neuralode's earlier ResNet twin (strided stem)"),
    ("odenet", "augment_dim t1 solver regularizers",
     "the MNIST ODE-Net of Chen et al. (2018), convolutional dynamics"),
    ("odenet-resnet", "num_blocks", "the ODE-Net's ResNet counterpart"),
):  # fmt: skip
    MODELS.add(_name, functools.partial(create_model, _name), _description, _uses.split())


@dataclasses.dataclass
class MNISTOptions(MNISTDataOptions, TrainOptions):
    model: str = option("ode", "model to train", choices=MODELS.names, group="model and data")
    hidden: int = option(
        64, "hidden size (the vector the ODE evolves)", check="positive",
        group="model and data", model=True,
    )  # fmt: skip
    num_blocks: int = option(
        6, "residual blocks of a ResNet", check="positive", group="model and data", model=True
    )
    augment_dim: int = option(
        0, "ANODE: zero dimensions added to the state", check="non-negative",
        group="model and data", model=True,
    )  # fmt: skip
    t1: float = option(
        1.0, "integration time of the ODE block, [0, t1]", check="positive",
        group="model and data", model=True,
    )  # fmt: skip


@dataclasses.dataclass
class MNISTData:
    train: TensorData
    val: TensorData
    test: TensorData


def evaluate_classifier(
    model: nn.Module,
    data: TensorData,
    batch_size: int,
    device: torch.device,
    dist: Any = None,
) -> dict[str, float]:
    """Cross entropy, accuracy and NFE per batch of ``model`` on ``data`` (eval mode; under
    torchrun every process evaluates whole batches in turn)."""

    def measure(model: nn.Module, batch: Any) -> dict[str, tuple[float, float]]:
        x, y = batch[0].to(device), batch[1].to(device)
        out = model(x)
        n = len(y)
        return {
            "loss": (float(F.cross_entropy(out, y, reduction="sum")), n),
            "accuracy": (int((out.argmax(1) == y).sum()), n),
            "samples": (n, 1),
        }

    return evaluate_batches(model, batches(data, batch_size, None), measure, dist)


@register_task
class MNISTTask(Task):
    """``neuralode train mnist``: the tutorial's MNIST classifier (or its ResNet twin), with
    training and evaluation tolerances."""

    name = "mnist"
    description = "MNIST classification (the tutorial's Neural ODE classifier, ResNet twins)"
    Options = MNISTOptions
    models = MODELS
    metric = "accuracy"
    maximize = True
    options: MNISTOptions

    def load_data(self, progress: bool = False) -> MNISTData:
        return MNISTData(*mnist_splits(self.options, progress))

    def check_data(self, data: MNISTData, world: int) -> None:
        held = f" (after {len(data.val)} held out for validation)" if len(data.val) else ""
        self.check_batch_size(len(data.train), f"training images{held}", world)

    def batches_per_epoch(self, data: MNISTData, world: int) -> int:
        return len(data.train) // self.options.batch_size

    def train_batches(
        self, data: MNISTData, generator: torch.Generator, rank: int, world: int
    ) -> Iterator[Any]:
        return batches(data.train, self.options.batch_size, generator, rank, world, drop_last=True)

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> Step:
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        correct = int((logits.detach().argmax(1) == y).sum())
        return Step(loss, len(y), {"accuracy": correct})

    def evaluate(
        self, model: nn.Module, data: MNISTData, split: str, device: torch.device, dist: Any = None
    ) -> dict[str, float]:
        subset = data.val if split == "val" else data.test
        if len(subset) == 0:
            return {}
        return evaluate_classifier(model, subset, self.options.batch_size, device, dist)

    def diagnosis_batch(self, data: MNISTData, size: int) -> Any:
        return data.test.x[:size], data.test.y[:size]
