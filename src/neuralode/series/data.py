"""Batches of irregularly sampled series, their generators (the Chen 2018 spirals and a
periodic toy set after Rubanova et al. 2019), the UEA datasets that aeon's wheel ships, and
random dropping of observations.

A batch is an :class:`IrregularSeries`: ``times (batch, n)``, ``values (batch, n, channels)``,
``mask (batch, n, channels)`` (1 where a channel was observed) and ``lengths (batch,)``.
Series shorter than ``n`` are padded by repeating their last time, with the mask 0 there, which
is the padding ``odeint``'s per-sample times take.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, InvalidArgumentError

__all__ = [
    "UEA_DATASETS",
    "IrregularSeries",
    "concat",
    "drop_observations",
    "load_uea",
    "make_periodic",
    "make_spirals",
    "split_at",
]


@dataclasses.dataclass
class IrregularSeries:
    """A padded batch of series, each at its own times (see the module's doc)."""

    times: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b, n = self.times.shape
        if self.values.shape[:2] != (b, n) or self.mask.shape != self.values.shape:
            raise InvalidArgumentError(
                f"times {tuple(self.times.shape)}, values {tuple(self.values.shape)} and mask "
                f"{tuple(self.mask.shape)} disagree: expected (batch, n) and (batch, n, channels)"
            )
        if self.lengths.shape != (b,):
            raise InvalidArgumentError(f"lengths must have shape ({b},)")

    def __len__(self) -> int:
        return self.times.shape[0]

    @property
    def channels(self) -> int:
        return self.values.shape[-1]

    def __getitem__(self, idx: Any) -> IrregularSeries:
        """The series ``idx`` (an index tensor, a slice or a list), trimmed to their longest."""
        lengths = self.lengths[idx]
        n = int(lengths.max()) if len(lengths) else 1
        return IrregularSeries(
            self.times[idx][:, :n],
            self.values[idx][:, :n],
            self.mask[idx][:, :n],
            lengths,
            None if self.labels is None else self.labels[idx],
        )

    def to(self, device: Any) -> IrregularSeries:
        return IrregularSeries(
            self.times.to(device),
            self.values.to(device),
            self.mask.to(device),
            self.lengths.to(device),
            None if self.labels is None else self.labels.to(device),
        )

    def observed(self) -> torch.Tensor:
        """``(batch, n)``: where any channel was observed (and not padding)."""
        return self.mask.any(dim=-1) & self.valid()

    def valid(self) -> torch.Tensor:
        """``(batch, n)``: the entries within each series' length."""
        n = self.times.shape[1]
        return torch.arange(n, device=self.times.device) < self.lengths.unsqueeze(1)

    def filled(self) -> torch.Tensor:
        """The values with every unobserved entry replaced by the series' last observation
        of that channel (its first, before it was first observed): for paths and GRU inputs."""
        v, m = self.values, self.mask.bool() & self.valid().unsqueeze(-1)
        n = v.shape[1]
        pos = torch.arange(n, device=v.device).view(1, n, 1).expand_as(v)
        last = torch.where(m, pos, -1).cummax(dim=1).values  # index of the last observation
        first = torch.where(m, pos, n).flip(1).cummin(dim=1).values.flip(1)
        src = torch.where(last >= 0, last, first).clamp(max=n - 1)
        out = v.gather(1, src)
        return torch.where((last >= 0) | (first < n), out, torch.zeros_like(out))


def _pack(
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    labels: torch.Tensor | None = None,
) -> IrregularSeries:
    """Series of different lengths → an :class:`IrregularSeries` (padding as the module says)."""
    n = max(len(t) for t, _, _ in rows)
    c = rows[0][1].shape[-1]
    dtype = rows[0][1].dtype
    times = torch.zeros(len(rows), n, dtype=dtype)
    values = torch.zeros(len(rows), n, c, dtype=dtype)
    mask = torch.zeros(len(rows), n, c, dtype=dtype)
    for i, (t, x, m) in enumerate(rows):
        k = len(t)
        times[i, :k], times[i, k:] = t, t[-1]
        values[i, :k], mask[i, :k] = x, m
    lengths = torch.tensor([len(t) for t, _, _ in rows])
    return IrregularSeries(times, values, mask, lengths, labels)


def concat(parts: list[IrregularSeries]) -> IrregularSeries:
    """The series of several batches in one batch, padded to the longest (as the module says);
    the batches must have the same channels, and labels all or none of them."""
    if not parts:
        raise InvalidArgumentError("concat needs at least one batch of series")
    if len({p.channels for p in parts}) > 1:
        raise InvalidArgumentError(
            f"cannot concatenate series with {sorted({p.channels for p in parts})} channels: "
            "every batch needs the same channels"
        )
    labelled = {p.labels is not None for p in parts}
    if len(labelled) > 1:
        raise InvalidArgumentError("cannot concatenate labelled and unlabelled series")
    n = max(p.times.shape[1] for p in parts)

    def pad(p: IrregularSeries) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = n - p.times.shape[1]  # each series' padding repeats its last time
        times = torch.cat((p.times, p.times[:, -1:].expand(-1, k)), 1)
        return (
            times,
            torch.nn.functional.pad(p.values, (0, 0, 0, k)),
            torch.nn.functional.pad(p.mask, (0, 0, 0, k)),
        )

    times, values, mask = (torch.cat(xs) for xs in zip(*map(pad, parts), strict=True))
    labels = [p.labels for p in parts if p.labels is not None]
    lengths = torch.cat([p.lengths for p in parts])
    return IrregularSeries(times, values, mask, lengths, torch.cat(labels) if labels else None)


def split_at(
    series: IrregularSeries, fraction: float = 0.5
) -> tuple[IrregularSeries, IrregularSeries]:
    """Every series cut at ``fraction`` of its own time span: the observed past and the future
    to extrapolate (each keeps at least one point)."""
    rows_past, rows_future = [], []
    for i in range(len(series)):
        k = int(series.lengths[i])
        t, x, m = series.times[i, :k], series.values[i, :k], series.mask[i, :k]
        cut = t[0] + fraction * (t[-1] - t[0])
        j = int((t <= cut).sum().clamp(1, k - 1))
        rows_past.append((t[:j], x[:j], m[:j]))
        rows_future.append((t[j:], x[j:], m[j:]))
    return _pack(rows_past, series.labels), _pack(rows_future, series.labels)


def drop_observations(
    series: IrregularSeries, fraction: float, generator: torch.Generator, keep: int = 2
) -> IrregularSeries:
    """Each series with ``fraction`` of its time points removed at random (all channels of a
    point together, as Kidger et al. 2020 on CharacterTrajectories), keeping at least ``keep``;
    the rest keep their times, so every series ends up with irregular times of its own."""
    if not 0.0 <= fraction < 1.0:
        raise InvalidArgumentError(f"the dropped fraction must be in [0, 1), got {fraction}")
    rows = []
    for i in range(len(series)):
        k = int(series.lengths[i])
        n_keep = max(min(keep, k), k - round(fraction * k))
        idx = torch.randperm(k, generator=generator)[:n_keep].sort().values
        rows.append((series.times[i, idx], series.values[i, idx], series.mask[i, idx]))
    return _pack(rows, series.labels)


def _irregular_times(n_total: int, span: float, n_obs: int, gen: torch.Generator) -> torch.Tensor:
    """``n_obs`` sorted distinct times drawn from a grid of ``n_total`` over ``[0, span]``."""
    grid = torch.linspace(0, span, n_total, dtype=torch.float64)
    return grid[torch.randperm(n_total, generator=gen)[:n_obs].sort().values]


def make_spirals(
    n_series: int = 1000, n_obs: int = 60, noise: float = 0.1, seed: int = 0
) -> IrregularSeries:
    """The Chen 2018 latent-ODE spirals: half clockwise, half counter-clockwise Archimedean
    spirals in the plane, each a window of its arm observed at ``n_obs`` irregular times with
    Gaussian noise. Labels: 0 clockwise, 1 counter-clockwise. Times start at 0 per series.

    Arms (as Chen et al.'s demo): clockwise ``r = 50 / (7 - s)`` about (-5, 0) and
    counter-clockwise ``r = s`` about (5, 0), for ``s`` in ``[0, 6]``; a window spans 1.5."""
    gen = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for _ in range(n_series):
        cw = bool(torch.rand((), generator=gen) < 0.5)
        start = float(torch.rand((), generator=gen)) * 4.0
        t = _irregular_times(200, 1.5, n_obs, gen)
        s = start + t + 0.5
        if cw:
            z = 6.0 - s + 0.5
            r = 50.0 / (z + 1.0)
            xy = torch.stack((r * torch.cos(z) - 5.0, r * torch.sin(z)), -1) / 5.0
        else:
            xy = torch.stack((s * torch.cos(s) + 5.0, s * torch.sin(s)), -1) / 5.0
        xy = xy + noise * torch.randn(xy.shape, generator=gen, dtype=xy.dtype)
        rows.append((t, xy, torch.ones_like(xy)))
        labels.append(0 if cw else 1)
    return _pack(rows, torch.tensor(labels))


def make_periodic(
    n_series: int = 1000, n_obs: int = 50, noise: float = 0.01, seed: int = 0
) -> IrregularSeries:
    """Periodic toy series after Rubanova et al. 2019 (§4.1): sinusoids of amplitude 1 with a
    random frequency and phase, each observed at ``n_obs`` irregular times of its own in
    ``[0, 5]`` (drawn from a grid of 100), with Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_series):
        t = _irregular_times(100, 5.0, n_obs, gen)
        freq = 0.5 + float(torch.rand((), generator=gen))  # cycles per 2π time units
        phase = 2 * math.pi * float(torch.rand((), generator=gen))
        x = torch.sin(freq * t + phase).unsqueeze(-1)
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        rows.append((t, x, torch.ones_like(x)))
    return _pack(rows)


# ------------------------------------------------------------------------------ UEA data

UEA_DATASETS = {"japanese_vowels": "JapaneseVowels", "basic_motions": "BasicMotions"}
"""The UEA datasets this package reads: our name → the archive's name."""

_NO_DATA = (
    "the UEA dataset {name} was not found: install it with `pip install 'neuralode[timeseries]'` "
    "(aeon's wheel ships it), or pass data_dir= a folder holding {name}_TRAIN.ts and "
    "{name}_TEST.ts"
)


def _uea_file(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> Path:
    file = f"{name}_{split.upper()}.ts"
    candidates = []
    if data_dir is not None:
        candidates += [Path(data_dir) / file, Path(data_dir) / name / file]
    spec = importlib.util.find_spec("aeon")  # the files only: importing aeon is slow
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates.append(Path(root) / "datasets" / "data" / name / file)
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(_NO_DATA.format(name=name))


def read_ts(path: Path) -> tuple[list[torch.Tensor], list[str]]:
    """A ``.ts`` file of the UEA archive (no time stamps): every case as a tensor of shape
    ``(length, channels)`` and its class label."""
    cases, labels, in_data = [], [], False
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower().startswith("@timestamps") and line.split()[-1].lower() == "true":
                raise DataError(f"{path}: time-stamped .ts files are not supported")
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        try:
            channels = [[float(v) for v in d.split(",")] for d in dims]
        except ValueError as err:
            raise DataError(f"{path}, line {line_no}: {err}") from None
        if len({len(c) for c in channels}) != 1:
            raise DataError(f"{path}, line {line_no}: channels of different lengths")
        cases.append(torch.tensor(channels, dtype=torch.float64).T)
        labels.append(label)
    if not cases:
        raise DataError(f"{path} holds no cases after @data")
    return cases, labels


def load_uea(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    classes: list[str] | None = None,
) -> tuple[IrregularSeries, list[str]]:
    """A UEA dataset's ``"train"`` or ``"test"`` split as an :class:`IrregularSeries` (times
    0, 1, 2, … per series; variable lengths padded) and the sorted class names."""
    if name not in UEA_DATASETS:
        raise InvalidArgumentError(
            f"unknown UEA dataset {name!r}; choose from: {', '.join(UEA_DATASETS)}"
        )
    cases, labels = read_ts(_uea_file(UEA_DATASETS[name], split, data_dir))
    classes = classes or sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    rows = [(torch.arange(len(x), dtype=torch.float64), x, torch.ones_like(x)) for x in cases]
    return _pack(rows, torch.tensor([index[c] for c in labels])), classes
