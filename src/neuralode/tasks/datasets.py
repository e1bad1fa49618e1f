"""Data options shared by tasks, kept with the data they describe: MNIST's files and splits
(the classifier and the image flows train on them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..data import TensorData, load_mnist
from ..errors import InvalidArgumentError
from .base import option

__all__ = ["MNISTDataOptions", "mnist_splits"]


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
        super().check()  # type: ignore[misc]  # (a mixin: TrainOptions, after it, has one)
        if self.val_fraction >= 0.5:
            raise InvalidArgumentError(
                f"val_fraction must be below 0.5, got {self.val_fraction} (0.1 holds out a "
                "tenth of the training images)"
            )

    def normalize(self) -> Any:
        if self.data_dir is not None:  # resolvable from any working directory
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        return super().normalize()  # type: ignore[misc]  # (as check)


def mnist_splits(
    o: MNISTDataOptions, progress: bool = False, normalize: bool = True
) -> tuple[TensorData, TensorData, TensorData]:
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
