"""The training configuration: one dataclass, validated before any work, saved with every run."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..blocks import NeuralODEBlock
from ..data import TRAJECTORIES, TrajectoryData
from ..dynamics import ODEFunc
from ..models import create_model, list_models
from ..regularizers import JacobianFrobenius, KineticEnergy
from ..solvers import GRADIENT_METHODS, available_backends, get_backend

__all__ = [
    "DATASETS",
    "GRADIENTS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "TrajectoryODE",
    "build_model",
    "resolve_device",
]

DATASETS = ("mnist", "spiral", "cubic")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
GRADIENTS = GRADIENT_METHODS


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. Saved as ``config.json`` in the run folder."""

    model: str = "ode"
    dataset: str = "mnist"
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "none"
    weight_decay: float = 0.0
    momentum: float = 0.9
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    eval_rtol: float = 1e-5
    eval_atol: float = 1e-6
    gradient: str = "direct"
    backend: str = "native"
    kinetic: float = 0.0
    jacobian: float = 0.0
    augment_dim: int = 0
    num_blocks: int = 6
    hidden: int = 64
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    max_train_batches: int | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    threads: int | None = None
    spiral_window: int = 10
    spiral_noise: float | None = None  # None: the dataset's own (0.1 spiral, 0.01 cubic)
    spiral_iters: int = 100

    # ------------------------------------------------------------------ validation
    def check_types(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first option of the wrong type (as from a config
        file: ``data_dir = 5``); integers are accepted for float options."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
            ok = any(
                (value is None and kind is type(None))
                or (kind is float and isinstance(value, (int, float)))
                or (kind in (int, str) and isinstance(value, kind))
                for kind in allowed
            ) and not isinstance(value, bool)
            if not ok:
                names = " or ".join(
                    "null" if k is type(None) else getattr(k, "__name__", str(k)) for k in allowed
                )
                raise ValueError(
                    f"option {f.name} must be {names}, got {value!r} ({type(value).__name__})"
                )
        return self

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first bad option; return ``self``."""
        self.check_types()

        def choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose from: {', '.join(choices)}")

        def positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False):
            kind = int if integer else (int, float)
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if not ok or value < 0 or (value == 0 and not allow_zero):
                word = "a non-negative" if allow_zero else "a positive"
                raise ValueError(
                    f"{name} must be {word} {'integer' if integer else 'number'}, got {value!r}"
                )

        choice("dataset", self.dataset, DATASETS)
        models = ["ode"] if self.dataset in TRAJECTORIES else list_models()
        choice("model", self.model, models)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        choice("gradient", self.gradient, GRADIENTS)
        choice("backend", self.backend, available_backends())
        choice("method", self.method, sorted(get_backend(self.backend).methods))
        for name in (
            "epochs",
            "batch_size",
            "num_blocks",
            "hidden",
            "spiral_window",
            "spiral_iters",
        ):
            positive(name, getattr(self, name), integer=True)
        for name in ("lr", "rtol", "atol", "eval_rtol", "eval_atol"):
            positive(name, getattr(self, name))
        for name in ("kinetic", "jacobian", "weight_decay", "momentum"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.spiral_noise is not None:
            positive("spiral_noise", self.spiral_noise, allow_zero=True)
        positive("augment_dim", self.augment_dim, integer=True, allow_zero=True)
        positive("seed", self.seed, integer=True, allow_zero=True)
        for name in ("max_train_batches", "train_subset", "test_subset", "threads"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), integer=True)
        if self.dataset in TRAJECTORIES and self.spiral_window < 2:
            raise ValueError("spiral_window must be at least 2")
        if self.gradient == "checkpoint" and self.backend != "native":
            raise ValueError("gradient 'checkpoint' needs backend 'native'")
        if self.device != "auto":
            try:
                dev = torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"invalid device {self.device!r}: {err}") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        return self

    def solver_kwargs(self) -> dict[str, Any]:
        """The :class:`NeuralODEBlock` arguments this configuration sets."""
        return dict(
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            eval_rtol=self.eval_rtol,
            eval_atol=self.eval_atol,
            gradient=self.gradient,
            backend=self.backend,
        )

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown configuration keys {unknown}; valid keys: {', '.join(sorted(names))}"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> dict[str, Any]:
        """Defaults from a JSON or TOML file (keys as in ``config.json``)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ValueError(f"cannot read config file {path}: {err}") from None
        if path.suffix == ".toml":
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"config file {path} is not valid TOML: {err}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"config file {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"config file {path} must hold a table of options (keys as in config.json), "
                f"got a {type(data).__name__}"
            )
        cls.from_dict(data).check_types()  # check the keys and the types
        return data


def trajectory_data(cfg: TrainConfig) -> TrajectoryData:
    """The trajectory a spiral or cubic run trains on (the same for train, evaluate, diagnose
    and resume)."""
    kw: dict[str, Any] = {"seed": cfg.seed}
    if cfg.spiral_noise is not None:
        kw["noise"] = cfg.spiral_noise
    return TRAJECTORIES[cfg.dataset](**kw)


def resolve_device(name: str | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------- models


class _CubicMLP(nn.Module):
    """An MLP on ``y³``: the form of the cubic system's true dynamics."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = ODEFunc(2, hidden, depth=1, activation="tanh")

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(t, y**3)


class TrajectoryODE(nn.Module):
    """A 2-D Neural ODE fitted to a trajectory; ``forward(y0, t)`` returns the trajectory
    ``(len(t), batch, 2)`` through ``y0`` at the times ``t``.

    For ``dataset="spiral"`` (the tutorial's arm) the dynamics are an MLP on the state, two
    hidden layers of ``hidden`` with tanh; for ``dataset="cubic"`` an MLP on ``y³``, one
    hidden layer (the form of that system's true dynamics).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        if cfg.dataset == "cubic":
            self.func: nn.Module = _CubicMLP(cfg.hidden)
        else:
            self.func = ODEFunc(2, cfg.hidden, depth=2, activation="tanh")
        self.block = NeuralODEBlock(self.func, **cfg.solver_kwargs())

    def forward(self, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out, _ = self.block.integrate(y0, times=t)
        return out


# the registry's models without an ODE (they take num_blocks), and those sized by --hidden
_DISCRETE = ("resnet", "resnet-strided", "odenet-resnet")
_TAKES_HIDDEN = ("ode", "ode-strided", "resnet", "resnet-strided")


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model a configuration describes."""
    if cfg.dataset in TRAJECTORIES:
        return TrajectoryODE(cfg)
    if cfg.model in _DISCRETE:
        kw: dict[str, Any] = {"num_blocks": cfg.num_blocks}
        if cfg.model in _TAKES_HIDDEN:
            kw["hidden"] = cfg.hidden
        return create_model(cfg.model, **kw)
    regs = []
    if cfg.kinetic:
        regs.append(KineticEnergy(cfg.kinetic))
    if cfg.jacobian:
        regs.append(JacobianFrobenius(cfg.jacobian))
    kw = dict(regularizers=regs, augment_dim=cfg.augment_dim, **cfg.solver_kwargs())
    if cfg.model in _TAKES_HIDDEN:
        kw["hidden"] = cfg.hidden
    return create_model(cfg.model, **kw)
