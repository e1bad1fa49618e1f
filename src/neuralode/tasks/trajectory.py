"""Learning dynamics from one observed trajectory: the tutorial's spiral (Exercise 1) and the
cubic system of torchdiffeq's ``ode_demo``. A 2-D Neural ODE is fitted to short windows of the
noisy observations; validation is how well it forecasts the observations 100 points ahead from
starts across the training span, the test is extrapolation over the held-out end."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..blocks import NeuralODEBlock
from ..data import TrajectoryData, make_cubic_trajectory, make_spiral_trajectory
from ..dynamics import ODEFunc
from ..errors import InvalidArgumentError
from ..regularizers import AbstractRegularizer
from .base import (
    ModelRegistry,
    Step,
    Task,
    TrainOptions,
    evaluate_batches,
    option,
    register_task,
    with_defaults,
)

__all__ = ["CubicTask", "SpiralTask", "TrajectoryODE", "TrajectoryOptions"]


VAL_HORIZON, VAL_STRIDE = 100, 25  # validation forecasts: their length and the starts' spacing


class TrajectoryODE(nn.Module):
    """A 2-D Neural ODE whose ``forward(y0, t)`` returns the trajectory ``(len(t), batch, 2)``
    through ``y0`` at the times ``t``."""

    def __init__(self, func: nn.Module, **block_kwargs: Any) -> None:
        super().__init__()
        self.func = func
        self.block = NeuralODEBlock(func, **block_kwargs)

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out, _ = self.block.integrate(y0, times=t)
        return out


class _CubicMLP(nn.Module):
    """An MLP on ``y³``: the form of the cubic system's true dynamics."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = ODEFunc(2, hidden, depth=1, activation="tanh")

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(t, y**3)


class _Window(nn.Module):
    """A trajectory model as a function of its initial states, over fixed times (for
    :func:`neuralode.diagnose`)."""

    def __init__(self, model: nn.Module, t: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.t = t

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        return self.model(y0, self.t)


@dataclasses.dataclass
class TrajectoryOptions(
    with_defaults(  # type: ignore[misc]  # (a class made at run time: mypy cannot follow it)
        TrainOptions, epochs=20, lr=1e-2, schedule="cosine", batch_size=32,
        help={"batch_size": "windows per batch (global)"},
    )
):  # fmt: skip
    """A recipe that converges on both trajectories: windows of 50 points, 32 per batch, Adam
    at 1e-2 decayed to 0 by a cosine schedule over 20 epochs of 100 iterations."""

    hidden: int = option(
        64, "hidden size of the dynamics MLP", check="positive", group="model and data",
        model=True,
    )  # fmt: skip
    window: int = option(
        50, "time points per training window", check="positive", group="model and data"
    )
    noise: float | None = option(
        None, "observation noise (default: the dataset's own)", check="non-negative",
        group="model and data",
    )  # fmt: skip
    iters: int = option(100, "iterations per epoch", check="positive", group="model and data")

    def check(self) -> None:
        if self.window < 2:
            raise InvalidArgumentError(f"window must be at least 2 time points, got {self.window}")


class _TrajectoryTask(Task):
    """What the spiral and the cubic system share; each sets its data and its model."""

    Options = TrajectoryOptions
    metric = "mse"
    maximize = False
    options: TrajectoryOptions

    @abc.abstractmethod
    def make_data(self, **kwargs: Any) -> TrajectoryData:
        """The trajectory, from the dataset's generator (``seed``, ``noise``)."""

    def load_data(self, progress: bool = False) -> TrajectoryData:
        kw: dict[str, Any] = {"seed": self.options.seed}
        if self.options.noise is not None:
            kw["noise"] = self.options.noise
        return self.make_data(**kw)

    def check_data(self, data: TrajectoryData, world: int) -> None:
        if self.options.window >= data.split:
            raise InvalidArgumentError(
                f"window {self.options.window} does not fit the {data.split} training points; "
                f"use a window of at most {data.split - 1}"
            )
        windows = data.split - self.options.window
        self.check_batch_size(windows, f"training windows of {self.options.window} points", world)

    def batches_per_epoch(self, data: TrajectoryData, world: int) -> int:
        return self.options.iters

    def train_batches(
        self, data: TrajectoryData, generator: torch.Generator, rank: int, world: int
    ) -> Iterator[Any]:
        o = self.options
        local = max(1, o.batch_size // world)
        t = data.t[: o.window] - data.t[0]
        for _ in range(o.iters):
            starts = torch.randint(0, data.split - o.window, (o.batch_size,), generator=generator)
            starts = starts[rank * local : (rank + 1) * local]
            idx = starts[None, :] + torch.arange(o.window)[:, None]  # (window, B)
            yield data.observed[idx], t  # (window, B, 2)

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> Step:
        target, t = batch[0].to(device), batch[1].to(device)
        pred = model(target[0], t)
        return Step((pred - target).pow(2).mean(), target.shape[1])

    def evaluate(
        self,
        model: nn.Module,
        data: TrajectoryData,
        split: str,
        device: torch.device,
        dist: Any = None,
    ) -> dict[str, float]:
        def measure(model: nn.Module, split: str) -> dict[str, tuple[float, float]]:
            pred, target = self._forecast(model, data, split, device)
            return {"mse": (float((pred - target.to(device)).pow(2).sum()), target.numel())}

        return evaluate_batches(model, [split], measure, dist)  # one forecast, one "batch"

    @staticmethod
    def _forecast(
        model: nn.Module, data: TrajectoryData, split: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "val":  # forecasts of VAL_HORIZON points from starts across the training span
            horizon = min(VAL_HORIZON, data.split - 1)
            starts = torch.arange(0, data.split - horizon, VAL_STRIDE)
            idx = starts[None, :] + torch.arange(horizon + 1)[:, None]  # (horizon + 1, K)
            t, target = data.t[: horizon + 1], data.observed[idx]
            pred = model(target[0].to(device), (t - t[0]).to(device))
        else:  # extrapolation from the last training point over the held-out end
            t, y0 = data.test_t, data.y[data.split - 1 : data.split]
            target = data.y[data.split - 1 :]
            pred = model(y0.to(device), (t - t[0]).to(device))[:, 0]
        return pred, target

    def plots(
        self, model: nn.Module, data: TrajectoryData, out: Path, device: torch.device
    ) -> list[str]:
        from ..plotting import plot_phase_portrait, plot_spiral_fit

        was_training = model.training
        with torch.no_grad():
            model.eval()
            learned = model(data.y[:1].to(device), data.t.to(device))[:, 0].cpu()
        model.train(was_training)
        paths = [
            plot_spiral_fit(data, learned, out / "spiral_trajectories.png"),
            plot_phase_portrait(model.func, data, learned, out / "phase_portrait.png"),
        ]
        return [p.name for p in paths]

    def diagnosis_batch(self, data: TrajectoryData, size: int) -> Any:
        step = max(1, data.split // size)
        return data.observed[: data.split : step][:size], data.t[: self.options.window]

    def diagnosis_view(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Any, ...]:
        y0, t = batch
        if y0.dim() == 3:  # a training batch: (window, B, 2) and its times
            y0 = y0[0]
        return _Window(model, (t - t[0]).to(device)), y0.to(device)


SPIRAL_MODELS = ModelRegistry()


@SPIRAL_MODELS.register("ode", "MLP dynamics on the state, two hidden layers with tanh")
def _spiral_ode(
    hidden: int, solver: dict[str, Any], regularizers: Sequence[AbstractRegularizer]
) -> TrajectoryODE:
    func = ODEFunc(2, hidden, depth=2, activation="tanh")
    return TrajectoryODE(func, regularizers=regularizers, **solver)


@register_task
class SpiralTask(_TrajectoryTask):
    """``neuralode train spiral``: learn the dynamics of the tutorial's spiral arm from
    trajectories of it."""

    name = "spiral"
    description = "the tutorial's spiral arm (t cos t, t sin t): learn its dynamics"
    models = SPIRAL_MODELS

    def make_data(self, **kwargs: Any) -> TrajectoryData:
        return make_spiral_trajectory(**kwargs)


CUBIC_MODELS = ModelRegistry()


@CUBIC_MODELS.register("ode", "MLP on y³ (the form of the true dynamics), one hidden layer")
def _cubic_ode(
    hidden: int, solver: dict[str, Any], regularizers: Sequence[AbstractRegularizer]
) -> TrajectoryODE:
    return TrajectoryODE(_CubicMLP(hidden), regularizers=regularizers, **solver)


@register_task
class CubicTask(_TrajectoryTask):
    """``neuralode train cubic``: learn ``dy/dt = y³A`` (torchdiffeq's ``ode_demo``) from
    trajectories of it."""

    name = "cubic"
    description = "dy/dt = y³A, torchdiffeq's ode_demo system: learn its dynamics"
    models = CUBIC_MODELS

    def make_data(self, **kwargs: Any) -> TrajectoryData:
        return make_cubic_trajectory(**kwargs)
