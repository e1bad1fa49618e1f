"""What a training task is: its options (a dataclass), its models (a registry), its data, its
training step, its metrics and its plots. The loop in :mod:`neuralode.training.loop` does the
rest for every task; the command line is derived from the options.

A new task is a module with a :class:`Task` subclass and ``@register_task``; nothing else
changes (see ``tests/test_tasks.py`` for a toy task in a few lines).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
import math
import os
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..registry import Registry
from ..regularizers import JacobianFrobenius, KineticEnergy
from ..solvers import GRADIENT_METHODS, available_backends, get_backend

__all__ = [
    "SOLVER_OPTIONS",
    "TASKS",
    "ModelRegistry",
    "Step",
    "Task",
    "TrainOptions",
    "evaluate_batches",
    "get_task",
    "list_tasks",
    "make_options",
    "option",
    "register_task",
    "resolve_device",
    "with_defaults",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")

# options a resumed run may change: they do not change what is being trained
RESUMABLE = ("epochs", "device", "data_dir", "threads")


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    check: str | None = None,
    group: str = "optimisation",
    model: bool = False,
) -> Any:
    """A field of a task's options, with what the command line and validation need.

    ``check``: ``"positive"`` or ``"non-negative"`` (numbers); ``choices``: the allowed values
    (or a function returning them, for registries); ``model``: the option configures the model,
    so setting it for a model that does not use it is an error.
    """
    meta = {"help": help, "choices": choices, "check": check, "group": group, "model": model}
    return dataclasses.field(default=default, metadata=meta)


def _methods() -> list[str]:
    return sorted(get_backend("native").methods)


@dataclasses.dataclass
class TrainOptions:
    """The options every task has: optimisation, the run, and the ODE solver of its models."""

    epochs: int = option(1, "number of epochs", check="positive")
    batch_size: int = option(128, "global batch size", check="positive")
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate", check="positive")
    schedule: str = option(
        "none", "learning-rate schedule over the epochs (cosine: to 0)", choices=SCHEDULES
    )
    weight_decay: float = option(0.0, "weight decay", check="non-negative")
    momentum: float = option(0.9, "SGD momentum", check="non-negative")
    max_train_batches: int | None = option(
        None, "stop each epoch after N batches", check="positive"
    )
    seed: int = option(0, "random seed", check="non-negative")
    device: str = option("auto", "cpu, cuda, cuda:1 … (auto: cuda when available)", group="run")
    threads: int | None = option(None, "CPU threads for PyTorch", check="positive", group="run")
    method: str = option("dopri5", "ODE solver", choices=_methods, group="ODE solver", model=True)
    rtol: float = option(1e-3, "training rtol", check="positive", group="ODE solver", model=True)
    atol: float = option(1e-4, "training atol", check="positive", group="ODE solver", model=True)
    eval_rtol: float = option(
        1e-5, "evaluation rtol", check="positive", group="ODE solver", model=True
    )
    eval_atol: float = option(
        1e-6, "evaluation atol", check="positive", group="ODE solver", model=True
    )
    gradient: str = option(
        "direct",
        "direct backpropagation, adjoint, or checkpoint",
        choices=GRADIENT_METHODS.names,
        group="ODE solver",
        model=True,
    )
    backend: str = option(
        "native", "solver engine", choices=available_backends, group="ODE solver", model=True
    )
    kinetic: float = option(
        0.0, "kinetic-energy regularization weight", check="non-negative", group="ODE solver",
        model=True,
    )  # fmt: skip
    jacobian: float = option(
        0.0, "Jacobian Frobenius regularization weight", check="non-negative",
        group="ODE solver", model=True,
    )  # fmt: skip

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        """Options from a mapping of option names (as in ``config.json``); unknown names and
        values of the wrong type are an :class:`InvalidArgumentError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidArgumentError(
                f"unknown configuration keys {unknown}; valid keys: {', '.join(sorted(names))}"
            )
        _check_types(cls, data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainOptions:
        """Raise :class:`InvalidArgumentError` naming the first bad option; return ``self``."""
        _check_types(type(self), self.to_dict())
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value is not None:
                allowed = list(choices() if callable(choices) else choices)
                if value not in allowed:
                    raise InvalidArgumentError(
                        f"unknown {f.name} {value!r}; choose from: {', '.join(map(str, allowed))}"
                    )
            check = f.metadata.get("check")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgumentError(
                    f"{f.name} must be a finite number, got {value!r} (default: {f.default})"
                )
            if check and value is not None and (value < 0 or (value == 0 and check == "positive")):
                word = "a positive" if check == "positive" else "a non-negative"
                kind = "integer" if option_type(type(self), f.name) is int else "number"
                raise InvalidArgumentError(f"{f.name} must be {word} {kind}, got {value!r}")
        if self.method not in get_backend(self.backend).methods:
            raise InvalidArgumentError(
                f"backend {self.backend!r} has no method {self.method!r}; choose from: "
                f"{', '.join(sorted(get_backend(self.backend).methods))}"
            )
        if self.gradient == "checkpoint" and self.backend != "native":
            raise InvalidArgumentError("gradient 'checkpoint' needs backend 'native'")
        if self.device != "auto":
            try:
                dev = torch.device(self.device)
            except RuntimeError as err:
                raise InvalidArgumentError(f"invalid device {self.device!r}: {err}") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise InvalidArgumentError(
                    f"device {self.device!r} requested but CUDA is not available"
                )
        self.check()
        return self

    def check(self) -> None:
        """A task's own checks across options (override; raise InvalidArgumentError)."""

    def normalize(self) -> TrainOptions:
        """Make values that depend on where the command runs independent of it (e.g. an
        absolute data folder). Called once when a run starts; override to add."""
        return self

    # ------------------------------------------------------------------ helpers
    def solver_kwargs(self) -> dict[str, Any]:
        """The :class:`~neuralode.NeuralODEBlock` arguments these options set."""
        return {name: getattr(self, name) for name in SOLVER_OPTIONS}

    def regularizers(self, scale: str = "sum") -> list[nn.Module]:
        """The regularizers ``kinetic`` and ``jacobian`` ask for, reducing a sample's state
        by ``scale`` (see :data:`neuralode.regularizers.SCALES`)."""
        regs: list[nn.Module] = []
        if self.kinetic:
            regs.append(KineticEnergy(self.kinetic, scale=scale))
        if self.jacobian:
            regs.append(JacobianFrobenius(self.jacobian, scale=scale))
        return regs

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


SOLVER_OPTIONS = ("method", "rtol", "atol", "eval_rtol", "eval_atol", "gradient", "backend")
REGULARIZER_OPTIONS = ("kinetic", "jacobian")


def with_defaults(base: type, help: dict[str, str] | None = None, **defaults: Any) -> type:
    """``base`` (an options dataclass) with other defaults for some of its options: the fields
    keep their checks, choices and groups (and their help, unless ``help`` gives a new one). A
    task's options then declare only what differs::

        class TrajectoryOptions(with_defaults(TrainOptions, epochs=20, lr=1e-2)):
            window: int = option(50, "time points per training window", check="positive")
    """
    fields = {f.name: f for f in dataclasses.fields(base)}
    unknown = sorted((set(defaults) | set(help or {})) - set(fields))
    if unknown:
        raise InvalidArgumentError(f"{base.__name__} has no options {unknown}")
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": base.__module__}
    for name in dict.fromkeys([*defaults, *(help or {})]):
        f = fields[name]
        meta = dict(f.metadata)
        if help and name in help:
            meta["help"] = help[name]
        annotations[name] = f.type
        default = defaults.get(name, f.default)
        namespace[name] = dataclasses.field(default=default, metadata=meta)
    namespace["__doc__"] = base.__doc__
    return dataclasses.dataclass(type(base.__name__, (base,), namespace))


def option_type(cls: type, name: str) -> Any:
    hint = typing.get_type_hints(cls)[name]
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    return kinds[0]


def _check_types(cls: type, data: dict[str, Any]) -> None:
    """Raise naming the first value of the wrong type (as from a config file:
    ``data_dir = 5``); integers are accepted for float options."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        allowed = typing.get_args(hints[name]) or (hints[name],)
        ok = any(
            (value is None and kind is type(None))
            or (kind is float and isinstance(value, (int, float)))
            or (kind in (int, str) and isinstance(value, kind))
            or (kind is bool and isinstance(value, bool))
            for kind in allowed
        ) and (bool in allowed or not isinstance(value, bool))
        if not ok:
            names = " or ".join(
                "null" if k is type(None) else getattr(k, "__name__", str(k)) for k in allowed
            )
            raise InvalidArgumentError(
                f"option {name} must be {names}, got {value!r} ({type(value).__name__})"
            )


def resolve_device(name: str | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class _ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    params: tuple[str, ...]  # what the factory is given: options, "solver", "regularizers"
    uses: tuple[str, ...]  # the options it uses (the groups expanded)
    description: str
    expand_solver: bool  # the solver options as keyword arguments (else as one dict, `solver`)

    def __repr__(self) -> str:
        return f"model {self.name!r}"


class ModelRegistry(Registry[_ModelEntry]):
    """A task's models by name, in the style of timm's ``create_model`` (the one
    :class:`~neuralode.Registry` type, its entries the models' factories and the options they
    use).

    A factory registered with :meth:`register` (a decorator) takes as parameters the names of
    the options it uses; two names stand for groups: ``solver`` receives
    :meth:`TrainOptions.solver_kwargs` and ``regularizers`` the regularizers the options ask
    for. :meth:`add` registers a factory (say, a model class) with the options it uses listed,
    the solver's given as keyword arguments. The registry so knows which options each model
    uses, and an option set for a model that ignores it is an error rather than a silent
    no-op.
    """

    def __init__(self, kind: str = "model") -> None:
        super().__init__(kind, "a model is a factory registered with the task's MODELS")

    def register(  # type: ignore[override]
        self, name: str, description: str = "", *, replace: bool = False
    ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            params = tuple(inspect.signature(factory).parameters)
            self.add(name, factory, description, params, expand_solver=False, replace=replace)
            return factory

        return add

    def add(
        self,
        name: str,
        factory: Callable[..., nn.Module],
        description: str = "",
        uses: Sequence[str] = (),
        *,
        expand_solver: bool = True,
        replace: bool = False,
    ) -> None:
        """Register ``factory``, given the options named in ``uses`` (``solver`` and
        ``regularizers`` as groups) when a model is made."""
        expanded: list[str] = []
        for p in uses:
            expanded += {"solver": SOLVER_OPTIONS, "regularizers": REGULARIZER_OPTIONS}.get(p, (p,))
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        entry = _ModelEntry(name, factory, tuple(uses), tuple(expanded), doc, expand_solver)
        Registry.register(self, name, entry, replace=replace)

    def uses(self, name: str) -> tuple[str, ...]:
        return self.get(name).uses

    def description(self, name: str) -> str:
        return self.get(name).description

    def create(self, name: str, options: TrainOptions) -> nn.Module:
        entry = self.get(name)
        kwargs: dict[str, Any] = {}
        for p in entry.params:
            if p == "solver" and entry.expand_solver:
                kwargs.update(options.solver_kwargs())
            elif p == "solver":
                kwargs[p] = options.solver_kwargs()
            elif p == "regularizers":
                kwargs[p] = options.regularizers()
            else:
                kwargs[p] = getattr(options, p)
        return entry.factory(**kwargs)

    def check_options(self, name: str, options: TrainOptions) -> None:
        """An option that configures models, set away from its default for a model that does
        not use it, is an error (it would be silently ignored)."""
        uses = set(self.uses(name))
        for f in dataclasses.fields(options):
            if not f.metadata.get("model") or f.name in uses:
                continue
            if getattr(options, f.name) != f.default:
                raise InvalidArgumentError(
                    f"option {f.name} does not apply to model {name!r}, which uses: "
                    f"{', '.join(u for u in self.uses(name)) or 'no options'}; drop it, or "
                    "choose a model that uses it"
                )


# ---------------------------------------------------------------------------- tasks


@dataclasses.dataclass
class Step:
    """What a training step returns: the loss to minimise (before regularization), the number
    of samples it averages over, and per-sample sums to report (``{"accuracy": 37}`` becomes
    ``train_accuracy`` = 37 / samples, summed over the epoch)."""

    loss: torch.Tensor
    samples: int
    sums: dict[str, float] = dataclasses.field(default_factory=dict)


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[Any],
    measure: Callable[[nn.Module, Any], dict[str, tuple[float, float]]],
    dist: Any = None,
) -> dict[str, float]:
    """Metrics of ``model`` over ``batches`` in evaluation mode, the one evaluation loop of every
    task: ``measure(model, batch)`` returns each metric's numerator and denominator for the
    batch (``{"loss": (summed loss, samples), ...}``; a ``"samples"`` entry counts the
    batch's samples); the sums over the batches — and over the processes of a torchrun, each
    taking whole batches in turn, so that the result is one process's — give each metric as
    numerator / denominator. ``nfe_forward`` is the evaluations per batch (from
    :func:`neuralode.record`); ``samples`` the samples evaluated."""
    from ..solvers import record

    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    n_batches, nfe = 0, 0.0
    try:
        for i, batch in enumerate(batches):
            if i % world != rank:
                continue
            with record() as rec:
                measured = measure(model, batch)
            nfe += rec.nfe_forward
            n_batches += 1
            for key, (num, den) in measured.items():
                acc = sums.setdefault(key, [0.0, 0.0])
                acc[0] += float(num)
                acc[1] += float(den)
    finally:
        model.train(was_training)
    sums["(batches)"] = [n_batches, nfe]
    if dist is not None:  # (a key a rank lacks counts as zero: it may have seen no batch)
        sums = dist.sum_dicts(sums)
    batches_seen, nfe = sums.pop("(batches)")
    out = {k: num / max(den, 1e-300) for k, (num, den) in sorted(sums.items())}
    if "samples" in sums:
        out["samples"] = sums["samples"][0]
    out["nfe_forward"] = nfe / max(batches_seen, 1)
    return out


class Task(abc.ABC):
    """A training job: subclass, set the class attributes, implement the methods, and decorate
    with :func:`register_task`.

    Class attributes:
        name: the name on the command line (``neuralode train NAME``).
        description: one line for ``neuralode train --help``.
        Options: the options dataclass (a :class:`TrainOptions` subclass with a ``model``
            field if the task has several models).
        models: the :class:`ModelRegistry` of the models it can train.
        metric: the validation metric the best checkpoint is chosen by (a key of
            :meth:`evaluate`'s result for the ``"val"`` split), and ``maximize`` its direction;
            a task whose metric depends on its options overrides :meth:`choose_metric`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[TrainOptions]] = TrainOptions
    models: ClassVar[ModelRegistry]
    # what an option added later means for a run whose config.json predates it (a resumed or
    # evaluated run keeps the behaviour it was trained with)
    legacy_options: ClassVar[dict[str, Any]] = {}
    metric: str = "loss"
    maximize: bool = False

    def __init__(self, options: TrainOptions) -> None:
        if not isinstance(options, self.Options):
            raise InvalidArgumentError(
                f"task {self.name!r} takes {self.Options.__name__}, got {type(options).__name__}"
            )
        self.options = options
        self.metric, self.maximize = self.choose_metric()

    @classmethod
    def legacy_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The values of options added since ``config`` (a stored run's) was written, where the
        run was made without them (:attr:`legacy_options`; override where that depends on the
        run, e.g. an option that only one model takes)."""
        return dict(cls.legacy_options)

    def choose_metric(self) -> tuple[str, bool]:
        """``(metric, maximize)``: the class's, unless a task's options decide (override)."""
        return type(self).metric, type(self).maximize

    # -- the model
    @property
    def model_name(self) -> str:
        return getattr(self.options, "model", self.models.names()[0])

    def check_options(self) -> None:
        self.models.check_options(self.model_name, self.options)

    def build_model(self) -> nn.Module:
        return self.models.create(self.model_name, self.options)

    # -- data and training (implement)
    @abc.abstractmethod
    def load_data(self, progress: bool = False) -> Any:
        """Everything the task trains and evaluates on (called once per process)."""

    def check_data(self, data: Any, world: int) -> None:  # noqa: B027 - optional, no-op
        """Refuse a configuration the data cannot serve (override; see
        :meth:`check_batch_size`)."""

    def check_batch_size(self, available: int, what: str, world: int) -> None:
        """The global batch must fit the training data (``available`` of ``what``) and split
        evenly over the ``world`` processes: a larger one would silently train on fewer
        samples than asked."""
        size = self.options.batch_size
        if size > available:
            raise InvalidArgumentError(
                f"--batch-size {size} is larger than the {available} {what}, so a batch would "
                f"hold fewer than asked; use a batch size of at most {available}"
            )
        if size % world:
            raise InvalidArgumentError(
                f"--batch-size {size} is the global batch, split over {world} processes: it "
                f"must be a multiple of {world} (e.g. {max(world, size - size % world)})"
            )

    @abc.abstractmethod
    def batches_per_epoch(self, data: Any, world: int) -> int:
        """Global batches in one epoch."""

    @abc.abstractmethod
    def train_batches(
        self, data: Any, generator: torch.Generator, rank: int, world: int
    ) -> Iterator[Any]:
        """This rank's batches of one epoch, drawn with ``generator``."""

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> Step:
        """The loss of one batch (moved to ``device`` here), as a :class:`Step`."""

    @abc.abstractmethod
    def evaluate(
        self, model: nn.Module, data: Any, split: str, device: torch.device, dist: Any = None
    ) -> dict[str, float]:
        """Metrics of ``split`` (``"val"`` or ``"test"``) in eval mode; ``{}`` when the split
        is empty."""

    # -- optional
    def plots(self, model: nn.Module, data: Any, out: Path, device: torch.device) -> list[str]:
        """Task-specific pictures written into the run folder; their file names."""
        return []

    def diagnosis_view(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[Any, ...]:
        """``(module, batch)`` for :func:`neuralode.diagnose`: the model as a function of one
        input, and a batch of the task's data on ``device`` (by default the model and the
        batch's tensors moved there); a third element, if any, is the loss function
        ``loss_fn(output, target)`` to diagnose with."""
        return model, _to_device(batch, device)

    @abc.abstractmethod
    def diagnosis_batch(self, data: Any, size: int) -> Any:
        """A batch of ``size`` samples of evaluation data for ``neuralode diagnose``."""


TASKS: Registry[type[Task]] = Registry(
    "task", "a task is a Task subclass decorated with @register_task"
)
_PLUGINS_LOADED = False


def register_task(cls: type[Task]) -> type[Task]:
    """Make a task trainable by name: ``neuralode train NAME`` and ``neuralode.train(NAME)``."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise InvalidArgumentError(f"register_task expects a Task subclass, got {cls!r}")
    for attr in ("name", "models"):
        if not hasattr(cls, attr):
            raise InvalidArgumentError(f"task {cls.__name__} must define {attr!r}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise InvalidArgumentError(f"task {cls.__name__} must implement: {missing}")
    TASKS.register(cls.name, cls)
    return cls


def _load_plugins() -> None:
    """Tasks other packages register under the ``neuralode.tasks`` entry-point group."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="neuralode.tasks"):
        ep.load()


def list_tasks() -> list[str]:
    """The names of the registered tasks (plug-ins from entry points included)."""
    _load_plugins()
    return TASKS.names()


def get_task(name: str) -> type[Task]:
    """The task class registered under ``name`` (plug-ins from entry points included)."""
    _load_plugins()
    return TASKS.get(name)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Options from a JSON or TOML file (keys as in ``config.json``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidArgumentError(f"cannot read config file {path}: {err}") from None
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"config file {path} is not a text file (it is not UTF-8): a configuration is a "
            "JSON or TOML table of options, keys as in a run's config.json"
        ) from None
    if path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            raise InvalidArgumentError(
                f"config file {path}: reading TOML needs Python 3.11 or later (tomllib); pass "
                "the same options as JSON (config.json's layout) instead"
            )

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgumentError(f"config file {path} is not valid TOML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidArgumentError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(
            f"config file {path} must hold a table of options (keys as in config.json), "
            f"got a {type(data).__name__}"
        )
    return data


def make_options(
    task: str, config: str | os.PathLike[str] | dict[str, Any] | None = None, **options: Any
) -> TrainOptions:
    """A task's options: its defaults, then a config file (or mapping), then ``options``;
    validated. A config's ``task`` key, if present, must name ``task``."""
    cls = get_task(task)
    values: dict[str, Any] = {}
    if config is not None and not isinstance(config, (dict, str, os.PathLike)):
        raise InvalidArgumentError(
            f"config must be a file's path or a dict of options, got {type(config).__name__}"
        )
    if config is not None:
        data = dict(config) if isinstance(config, dict) else read_config_file(config)
        named = data.pop("task", task)
        if named != task:
            raise InvalidArgumentError(
                f"the configuration is for task {named!r}, not {task!r}; train {named!r} "
                "or drop its task key"
            )
        values.update(data)
    values.update(options)
    opts = cls.Options.from_dict(values).validate()
    cls(opts).check_options()
    return opts


def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with its tensors (alone, or in a tuple or list) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch
