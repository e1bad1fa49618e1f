"""MNIST classification: the tutorial's Neural ODE classifier, its ResNet twin, and the other
classifiers of :mod:`neuralode.models`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import TensorData, batches, load_mnist
from ..errors import InvalidArgumentError
from ..models import create_model
from ..solvers import record
from .base import ModelRegistry, Step, Task, TrainOptions, option, register_task

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
class MNISTDataOptions:
    """The options of MNIST's files and splits, for every task that trains on MNIST (mixed in
    before :class:`TrainOptions`)."""

    data_dir: str | None = option(
        None,
        "folder holding mnist/; none: $NEURALODE_DATA_DIR, then the user cache (downloaded "
        "there if absent)",
        group="model and data",
    )
    train_subset: int | None = option(
        None, "use only the first N training images", check="positive", group="model and data"
    )
    test_subset: int | None = option(
        None, "use only the first N test images", check="positive", group="model and data"
    )
    val_fraction: float = option(
        0.1,
        "the last fraction of the training images held out for validation (the best "
        "checkpoint is chosen on it); 0: none",
        check="non-negative",
        group="model and data",
    )

    def check(self) -> None:
        super().check()
        if self.val_fraction >= 0.5:
            raise InvalidArgumentError(
                f"val_fraction must be below 0.5, got {self.val_fraction} (0.1 holds out a "
                "tenth of the training images)"
            )

    def normalize(self):
        if self.data_dir is not None:  # resolvable from any working directory
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        return super().normalize()


def mnist_splits(o: MNISTDataOptions, progress: bool = False, normalize: bool = True):
    """``(train, val, test)`` as these options ask: the training images' first
    ``train_subset``, the last ``val_fraction`` of them held out, the test images' first
    ``test_subset`` (``normalize=False``: pixel values scaled to [0, 1])."""
    train, test = load_mnist(o.data_dir, progress=progress, normalize=normalize)
    train = train.subset(o.train_subset)
    cut = len(train) - round(len(train) * o.val_fraction)
    return (
        TensorData(train.x[:cut], train.y[:cut]),
        TensorData(train.x[cut:], train.y[cut:]),
        test.subset(o.test_subset),
    )


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


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    data: TensorData,
    batch_size: int,
    device: torch.device,
    dist: Any = None,
) -> dict[str, float]:
    """Cross entropy, accuracy and NFE per batch of ``model`` on ``data`` (eval mode)."""
    was_training = model.training
    model.eval()
    total, correct, loss_sum, nfe, n_batches = 0, 0, 0.0, 0, 0
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    for x, y in batches(data, batch_size * world, None, rank, world):
        x, y = x.to(device), y.to(device)
        with record() as rec:
            out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
        nfe += rec.nfe_forward
        n_batches += 1
    if dist is not None:
        total, correct, loss_sum, nfe, n_batches = dist.sum(
            [total, correct, loss_sum, nfe, n_batches]
        )
    model.train(was_training)
    return {
        "loss": loss_sum / max(total, 1),
        "accuracy": correct / max(total, 1),
        "nfe_forward": nfe / max(n_batches, 1),
        "samples": total,
    }


@register_task
class MNISTTask(Task):
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
        n = len(data.train)
        if self.options.batch_size > n:
            held = f", after {len(data.val)} held out for validation" if len(data.val) else ""
            raise InvalidArgumentError(
                f"--batch-size {self.options.batch_size} is larger than the training set "
                f"({n} images{held}), so an epoch would train on nothing; use a batch size "
                f"of at most {n}"
            )

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

    def evaluate(self, model, data: MNISTData, split, device, dist=None) -> dict[str, float]:
        subset = data.val if split == "val" else data.test
        if len(subset) == 0:
            return {}
        return evaluate_classifier(model, subset, self.options.batch_size, device, dist)

    def diagnosis_batch(self, data: MNISTData, size: int) -> Any:
        return data.test.x[:size], data.test.y[:size]
