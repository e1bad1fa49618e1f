"""Density estimation with continuous normalizing flows: FFJORD's 2-D toy distributions (test
NLL in nats, against the data's own entropy) and MNIST (bits per dimension), trained fast with
RNODE's regularizers (``--kinetic``, ``--jacobian``) and STEER (``--steer``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..flows import (
    CNF,
    ConcatSquashMLP,
    FlowDensity,
    FourierTimeMLP,
    MultiscaleCNF,
    SequentialFlow,
)
from ..regularizers import SCALES, JacobianFrobenius, KineticEnergy, replicate
from ..toy_densities import TOY_DATASETS, get_toy
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
from .datasets import MNISTDataOptions, mnist_splits

__all__ = ["DensityData", "DensityOptions", "DensityTask", "bits_per_dim"]

DATASETS = (*TOY_DATASETS, "mnist")
DIVERGENCES = ("auto", "exact", "hutchinson")
DYNAMICS = ("fourier", "concatsquash")
# image sides: MNIST's, and averaged over 2×2 or 4×4 blocks of pixels; each with its scales
# (squeezes halve the side down to 7)
IMAGE_SIZES = {28: 3, 14: 2, 7: 1}


def bits_per_dim(log_prob_unit: torch.Tensor, dims: int) -> torch.Tensor:
    """Bits per dimension of 8-bit data from the log-density of its dequantized values scaled
    to ``[0, 1]``: ``(-log p + D log 256) / (D log 2)``."""
    return (-log_prob_unit + dims * math.log(256.0)) / (dims * math.log(2.0))


MODELS = ModelRegistry()


def _divergence(divergence: str, image: bool) -> str:
    if divergence == "auto":
        return "hutchinson" if image else "exact"
    return divergence


def _dynamics_2d(dynamics: str, hidden: int, depth: int, t1: float) -> nn.Module:
    if dynamics == "concatsquash":  # FFJORD's toy dynamics
        return ConcatSquashMLP(2, (hidden,) * depth, activation="tanh")
    return FourierTimeMLP(2, (hidden,) * depth, period=t1)


@MODELS.register(
    "cnf",
    "2-D data: CNF blocks, normal base; dynamics by --dynamics (an MLP with Fourier time "
    "features, or FFJORD's concat-squash MLP)",
)
def _cnf(
    dynamics: str,
    hidden: int,
    depth: int,
    blocks: int,
    t1: float,
    divergence: str,
    noise: str,
    steer: float,
    solver: dict[str, Any],
    regularizers: Sequence[KineticEnergy | JacobianFrobenius],
) -> FlowDensity:
    layers = [
        CNF(
            _dynamics_2d(dynamics, hidden, depth, t1),
            t1,
            divergence=_divergence(divergence, False),
            eval_divergence="exact",  # two dimensions: the test NLL is exact
            noise=noise,
            steer=steer,
            regularizers=[replicate(r) for r in regularizers],
            **solver,
        )
        for _ in range(blocks)
    ]
    return FlowDensity(SequentialFlow(layers), shape=(2,))


@MODELS.register(
    "multiscale", "images: logit, then CNF blocks per scale with squeeze and factor-out"
)
def _multiscale(
    image_size: int,
    hidden: int,
    depth: int,
    blocks: int,
    t1: float,
    divergence: str,
    noise: str,
    steer: float,
    solver: dict[str, Any],
    regularizers: Sequence[KineticEnergy | JacobianFrobenius],
) -> MultiscaleCNF:
    return MultiscaleCNF(
        (1, image_size, image_size),
        scales=IMAGE_SIZES[image_size],
        blocks=blocks,
        hidden=(hidden,) * depth,
        T=t1,
        divergence=_divergence(divergence, True),
        noise=noise,
        steer=steer,
        regularizers=regularizers,
        **solver,
    )


_MNIST_ONLY = tuple(f.name for f in dataclasses.fields(MNISTDataOptions))


@dataclasses.dataclass
class DensityOptions(
    MNISTDataOptions,
    with_defaults(  # type: ignore[misc]  # (a class made at run time: mypy cannot follow it)
        TrainOptions, epochs=10, lr=3e-3, schedule="cosine", batch_size=512, rtol=1e-5,
        atol=1e-5, eval_rtol=1e-5, eval_atol=1e-5,
        help={"batch_size": "samples per batch (global)"},
    ),
):  # fmt: skip
    """A recipe for the 2-D data: batches of 512 fresh samples, Adam at 3e-3 decayed to 0 by a
    cosine schedule over 10 epochs of 100 iterations, exact trace, dopri5 at 1e-5, dynamics an
    MLP with Fourier time features (64×3, ELU; ``--dynamics concatsquash`` for FFJORD's). MNIST:
    ``--dataset mnist`` (the model follows)."""

    dataset: str = option(
        "8gaussians", "data to model (2-D toy distributions, or mnist)", choices=DATASETS,
        group="model and data",
    )  # fmt: skip
    model: str = option(
        "auto", "model (auto: cnf for 2-D data, multiscale for mnist)",
        choices=lambda: ["auto", *MODELS.names()], group="model and data",
    )  # fmt: skip
    dynamics: str = option(
        "fourier", "2-D data: the dynamics: fourier (an MLP on the state and Fourier features "
        "of the time, ELU, as zuko's CNF; learns fastest) or concatsquash (FFJORD's concat-squash "
        "MLP, tanh)", choices=DYNAMICS, group="model and data", model=True,
    )  # fmt: skip
    hidden: int = option(
        64, "hidden width of the dynamics", check="positive", group="model and data", model=True
    )
    depth: int = option(
        3, "hidden layers of the dynamics", check="positive", group="model and data", model=True
    )
    blocks: int = option(
        1, "CNF blocks stacked (per scale for images)", check="positive",
        group="model and data", model=True,
    )  # fmt: skip
    t1: float = option(
        0.5, "integration time T of each CNF block", check="positive", group="model and data",
        model=True,
    )  # fmt: skip
    divergence: str = option(
        "auto", "trace of the Jacobian: exact, or hutchinson's estimate (auto: exact for 2-D, "
        "hutchinson for images)", choices=DIVERGENCES, group="ODE solver", model=True,
    )  # fmt: skip
    noise: str = option(
        "rademacher", "noise of the hutchinson estimator", choices=("rademacher", "gaussian"),
        group="ODE solver", model=True,
    )  # fmt: skip
    steer: float = option(
        0.0, "STEER: training end times drawn from [T - steer, T + steer]", check="non-negative",
        group="ODE solver", model=True,
    )  # fmt: skip
    image_size: int = option(
        28, "mnist: the side of the images: 28, or 14 and 7 for MNIST averaged over 2×2 or "
        "4×4 blocks of pixels and rounded to 8 bits (a flow a CPU trains in minutes)",
        choices=tuple(IMAGE_SIZES), group="model and data", model=True,
    )  # fmt: skip
    iters: int = option(
        100, "2-D data: iterations per epoch (fresh samples each)", check="positive",
        group="model and data",
    )  # fmt: skip
    val_size: int = option(
        2000, "2-D data: validation samples", check="positive", group="model and data"
    )
    test_size: int = option(
        100_000,
        "2-D data: test samples (the NLL's standard error is below 0.003 nats)",
        check="positive",
        group="model and data",
    )
    regularizer_scale: str = option(
        "rnode", "how --kinetic and --jacobian reduce a sample's state: rnode (the mean over "
        "its elements, the kinetic energy halved: RNODE's terms, for which its weight 0.01 was "
        "tuned) or sum (over its elements)", choices=SCALES, group="ODE solver",
    )  # fmt: skip

    def regularizers(self, scale: str | None = None) -> list[nn.Module]:
        return super().regularizers(self.regularizer_scale if scale is None else scale)

    @property
    def image(self) -> bool:
        return self.dataset == "mnist"

    def check(self) -> None:
        super().check()
        if self.steer >= self.t1:
            raise InvalidArgumentError(
                f"steer must be below t1 ({self.t1}), got {self.steer}: the end time is drawn "
                "from [t1 - steer, t1 + steer]"
            )
        if self.model == "cnf" and self.image:
            raise InvalidArgumentError(
                "model 'cnf' is for 2-D data; use --model multiscale (or auto) for mnist"
            )
        if self.model == "multiscale" and not self.image:
            raise InvalidArgumentError(
                f"model 'multiscale' is for images; use --model cnf (or auto) for {self.dataset}"
            )
        if self.image and self.dynamics != "fourier":
            raise InvalidArgumentError(
                "option dynamics applies to 2-D data only; mnist's model is a multiscale CNF of "
                "convolutional dynamics"
            )
        if self.image and self.divergence == "exact":
            raise InvalidArgumentError(
                f"divergence 'exact' on mnist would take {self.image_size**2} vector-Jacobian "
                "products per evaluation of the dynamics; use --divergence hutchinson (or auto)"
            )
        if not self.image:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in (*_MNIST_ONLY, "image_size"):
                if getattr(self, name) != defaults[name]:
                    raise InvalidArgumentError(
                        f"option {name} applies to --dataset mnist only, not {self.dataset}"
                    )


@dataclasses.dataclass
class DensityData:
    """2-D data: the distribution (training batches are drawn fresh) and fixed val/test
    samples. MNIST: 8-bit pixels ``(N, 1, S, S)`` of each split (``S`` the image size), and
    fixed dequantization noise for val and test."""

    dist: Any
    train: torch.Tensor | None
    val: torch.Tensor
    test: torch.Tensor


def _downsample(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """8-bit images ``(N, 1, 28, 28)`` (any real dtype of the values 0–255) as ``(N, 1, size,
    size)`` uint8: each pixel the mean of its block of ``28 // size`` squared, rounded."""
    k = pixels.shape[-1] // size
    if k * size != pixels.shape[-1]:
        raise InvalidArgumentError(
            f"image size {size} does not divide the images' side {pixels.shape[-1]}; use one of "
            f"{sorted(IMAGE_SIZES)}"
        )
    if k > 1:
        pixels = torch.nn.functional.avg_pool2d(pixels.to(torch.float64), k)
    return pixels.round().to(torch.uint8)


def _dequantize(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantization, scaled to [0, 1): ``(pixel + u) / 256``."""
    u = torch.rand(pixels.shape, generator=generator)
    return (pixels.to(torch.float32) + u) / 256.0


class _SampleLoss(nn.Module):
    """The model as a function of its input for :func:`neuralode.diagnose`: each sample's
    training loss (NLL in nats, or bits/dim for images)."""

    def __init__(self, model: nn.Module, image: bool) -> None:
        super().__init__()
        self.model = model
        self.image = image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_prob = self.model(x)
        return bits_per_dim(log_prob, x[0].numel()) if self.image else -log_prob


def _mean_loss(output: torch.Tensor, target: Any) -> torch.Tensor:
    return output.mean()


@register_task
class DensityTask(Task):
    """``neuralode train density``: continuous normalizing flows on the 2-D toy distributions
    (NLL in nats against the data's entropy) or MNIST (bits per dimension)."""

    name = "density"
    description = "density estimation with continuous normalizing flows (FFJORD, RNODE)"
    Options = DensityOptions
    models = MODELS
    options: DensityOptions
    # runs started before regularizer_scale existed summed over the state's elements
    legacy_options: ClassVar[dict[str, Any]] = {"regularizer_scale": "sum"}

    @classmethod
    def legacy_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        old = dict(cls.legacy_options)
        if config.get("dataset") != "mnist":  # 2-D runs before dynamics existed: FFJORD's MLP
            old["dynamics"] = "concatsquash"
        return old

    def choose_metric(self) -> tuple[str, bool]:
        return ("bpd" if self.options.image else "nll"), False

    @property
    def model_name(self) -> str:
        if self.options.model == "auto":
            return "multiscale" if self.options.image else "cnf"
        return self.options.model

    # -- data
    def load_data(self, progress: bool = False) -> DensityData:
        o = self.options
        if not o.image:
            dist = get_toy(o.dataset)
            # fixed seeds apart from the training seed: the same val/test sets for every run
            val = dist.sample(o.val_size, torch.Generator().manual_seed(1_000_003))
            test = dist.sample(o.test_size, torch.Generator().manual_seed(2_000_003))
            return DensityData(dist, None, val, test)
        train_set, val_set, test_set = mnist_splits(o, progress, normalize=False)

        def pixels(x: torch.Tensor) -> torch.Tensor:
            return _downsample(x.mul(255).round(), o.image_size)

        return DensityData(
            None,
            pixels(train_set.x),
            _dequantize(pixels(val_set.x), torch.Generator().manual_seed(1_000_003)),
            _dequantize(pixels(test_set.x), torch.Generator().manual_seed(2_000_003)),
        )

    def check_data(self, data: DensityData, world: int) -> None:
        if data.train is not None:
            self.check_batch_size(len(data.train), "training images", world)
        else:  # fresh samples every batch: any size, split evenly over the processes
            self.check_batch_size(self.options.batch_size, "samples", world)

    def batches_per_epoch(self, data: DensityData, world: int) -> int:
        if data.train is None:
            return self.options.iters
        return len(data.train) // self.options.batch_size

    def train_batches(
        self, data: DensityData, generator: torch.Generator, rank: int, world: int
    ) -> Iterator[Any]:
        o = self.options
        local = max(1, o.batch_size // world)
        for _ in range(self.batches_per_epoch(data, world)):
            if data.train is None:
                x = data.dist.sample(o.batch_size, generator)
            else:
                idx = torch.randint(0, len(data.train), (o.batch_size,), generator=generator)
                x = _dequantize(data.train[idx], generator)
            yield x[rank * local : (rank + 1) * local]

    # -- the loss and metrics
    def _losses(self, log_prob: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Every sample's NLL (nats) or bits/dim."""
        if self.options.image:
            return bits_per_dim(log_prob, x[0].numel())
        return -log_prob

    def _loss(self, log_prob: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._losses(log_prob, x).mean()

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> Step:
        x = batch.to(device)
        return Step(self._loss(model(x), x), len(x))

    def evaluate(
        self,
        model: nn.Module,
        data: DensityData,
        split: str,
        device: torch.device,
        dist: Any = None,
    ) -> dict[str, float]:
        """NLL (nats) or bits/dim with the evaluation tolerances. 2-D models use the exact
        trace; image models Hutchinson's estimate with noise from a fixed seed, so that an
        evaluation is reproducible and leaves the training's random stream alone."""
        cuda = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(0)
            return self._evaluate(model, data, split, device, dist)

    def _evaluate(
        self, model: nn.Module, data: DensityData, split: str, device: torch.device, dist: Any
    ) -> dict[str, float]:
        x_all = data.val if split == "val" else data.test
        if len(x_all) == 0:
            return {}

        def measure(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
            x = x.to(device)
            n = len(x)
            losses = self._losses(model(x), x).double()
            squares = float(losses.square().sum())
            return {self.metric: (float(losses.sum()), n), "(squares)": (squares, n),
                    "samples": (n, 1)}  # fmt: skip

        size = max(1, self.options.batch_size)
        out = evaluate_batches(model, x_all.split(size), measure, dist)
        # the metric's standard error over the split's samples
        n, squares = out["samples"], out.pop("(squares)")
        spread = max(squares - out[self.metric] ** 2, 0.0) * n / max(n - 1, 1)
        out[f"{self.metric}_se"] = math.sqrt(spread / n)
        if not self.options.image:
            from ..toy_densities import entropy

            out["entropy_gap"] = out[self.metric] - entropy(self.options.dataset)[0]
        return out

    # -- pictures
    def plots(
        self, model: nn.Module, data: DensityData, out: Path, device: torch.device
    ) -> list[str]:
        from ..plotting import plot_density, plot_flow_strip, plot_image_samples, save_flow_gif

        was_training = model.training
        model.eval()
        try:
            if self.options.image:
                with torch.no_grad():
                    samples = cast(MultiscaleCNF, model).sample(
                        64, torch.Generator().manual_seed(0)
                    )
                    samples = samples.cpu()
                return [plot_image_samples(samples.clamp(0, 1), out / "samples.png").name]
            paths = [plot_density(model, data, out / "density.png", device)]
            path = flow_path(cast(FlowDensity, model), 2000, frames=25, device=device)
            paths.append(plot_flow_strip(path, out / "flow_snapshots.png"))
            paths.append(save_flow_gif(path, out / "flow.gif"))
            return [p.name for p in paths]
        finally:
            model.train(was_training)

    # -- diagnosis
    def diagnosis_batch(self, data: DensityData, size: int) -> Any:
        return data.test[:size]

    def diagnosis_view(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Any, ...]:
        return _SampleLoss(model, self.options.image), batch.to(device), _mean_loss


@torch.no_grad()
def flow_path(
    model: FlowDensity, n: int, frames: int, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """Base samples carried by the flow to data: ``(frames, n, 2)`` from the base (first) to
    the data (last), evenly spaced in time across the stacked CNF blocks."""
    z = torch.randn((n, *model.shape), generator=torch.Generator().manual_seed(seed)).to(device)
    layers = cast("list[CNF]", list(model.flow.layers))[::-1]
    per = max(2, math.ceil((frames - 1) / len(layers)) + 1)
    path = [z]
    for layer in layers:
        times = torch.linspace(layer.T, 0.0, per)
        traj = layer.inverse(path[-1], times=times)
        path.extend(traj[1:])
    return torch.stack(path).cpu()
