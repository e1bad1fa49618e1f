"""Datasets: MNIST from the standard IDX files (found, or downloaded and verified), and spiral
dynamics. Everything is loaded once into memory as tensors."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import logging
import math
import os
import struct
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import DataError, InvalidArgumentError

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "TRAJECTORIES",
    "DataError",
    "TensorData",
    "TrajectoryData",
    "batches",
    "cubic_dynamics",
    "find_mnist",
    "load_mnist",
    "make_cubic_trajectory",
    "make_spiral_points",
    "make_spiral_trajectory",
]

logger = logging.getLogger(__name__)


# SHA-256 of the *decompressed* bytes: the .gz wrappers differ between mirrors and recompressions.
MNIST_FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte.gz": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47040016,
    ),
    "train-labels-idx1-ubyte.gz": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60008,
    ),
    "t10k-images-idx3-ubyte.gz": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7840016,
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10008,
    ),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclasses.dataclass
class TensorData:
    """A dataset held in memory: inputs ``x`` and targets ``y`` (first dimension = samples)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, n: int | None) -> TensorData:
        if n is None or n >= len(self):
            return self
        return TensorData(self.x[:n], self.y[:n])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neuralode"


def _candidates(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    env = os.environ.get("NEURALODE_DATA_DIR")
    if env:
        roots.append(Path(env))
    roots.append(default_cache_dir())
    return [r / "mnist" for r in roots]


def _holds_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MNIST_FILES)


def find_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder holding all four MNIST files: ``DATA_DIR/mnist``, then ``DATA_DIR``
    itself (a data folder given as the ``mnist`` folder), then ``$NEURALODE_DATA_DIR/mnist``,
    then the user cache directory."""
    candidates = _candidates(data_dir)
    if data_dir is not None:
        candidates.insert(1, Path(data_dir))
    for folder in candidates:
        if _holds_mnist(folder):
            if data_dir is not None and folder == Path(data_dir):
                logger.info("the MNIST files are in %s itself (not in %s/mnist): using them",
                            folder, folder)  # fmt: skip
            return folder
    return None


def _decompress(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"{path} is corrupt or truncated ({err}); delete it and download it again"
        ) from err


def _verify(name: str, raw: bytes, where: str) -> None:
    digest, size = MNIST_FILES[name]
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
        raise DataError(
            f"{where} does not hold the standard MNIST {name} (size {len(raw)} bytes, expected "
            f"{size}; checksum mismatch); delete it and download it again"
        )


def _parse_idx(raw: bytes, name: str) -> torch.Tensor:
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = offset + math.prod(dims)
    if (magic >> 8) != 0x08 or len(raw) != expected:
        raise DataError(f"{name}: not an unsigned-byte IDX file of shape {dims}")
    data = torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8)
    return data.reshape(dims)


def _download(name: str, folder: Path, retries: int, progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retries):
        for mirror in MNIST_MIRRORS:
            url = mirror + name
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                    total = int(resp.headers.get("Content-Length") or 0)
                    bar = _progress_bar(total, name) if progress else None
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    if bar is not None:
                        bar.close()
                _verify(name, _decompress(Path(tmp)), url)
                os.replace(tmp, folder / name)  # only a verified file gets the real name
                logger.info("downloaded %s from %s", name, mirror)
                return
            except Exception as err:  # network errors, bad content: try the next mirror
                last_error = err
                logger.warning("download of %s from %s failed: %s", name, mirror, err)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        time.sleep(min(2**attempt, 10))
    raise DataError(
        f"could not download {name} ({last_error}). Offline? Put the four MNIST files "
        f"({', '.join(MNIST_FILES)}) in DATA_DIR/mnist and pass --data-dir DATA_DIR, or set "
        "NEURALODE_DATA_DIR"
    )


def _progress_bar(total: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=name, leave=False)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    retries: int = 3,
    progress: bool = False,
    normalize: bool = True,
) -> tuple[TensorData, TensorData]:
    """MNIST train and test sets as normalised float tensors ``(N, 1, 28, 28)`` and int64 labels
    (``normalize=False``: the pixel values scaled to [0, 1], ``k / 255``).

    Files are looked up under ``data_dir/mnist``, ``$NEURALODE_DATA_DIR/mnist`` and the user cache
    directory; if absent they are downloaded into the cache (``download=True``), verified by the
    SHA-256 of their decompressed bytes.
    """
    if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(
            f"--data-dir {data_dir} is a file; it must be the folder that holds mnist/ "
            "(or will hold it once downloaded)"
        )
    folder = find_mnist(data_dir)
    if folder is None:
        searched = ", ".join(str(p) for p in _candidates(data_dir))
        if not download:
            raise DataError(
                f"MNIST files not found (searched {searched}). Put {', '.join(MNIST_FILES)} in "
                "DATA_DIR/mnist and pass --data-dir DATA_DIR, or set NEURALODE_DATA_DIR"
            )
        if data_dir is None:
            folder = _candidates(None)[-1]
        elif Path(data_dir).name == "mnist":  # the mnist folder itself: not mnist/mnist
            folder = Path(data_dir)
        else:
            folder = _candidates(data_dir)[0]
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            for name in MNIST_FILES:
                if not (folder / name).is_file():
                    _download(name, folder, retries, progress)
        except BaseException:
            for p in created:  # deepest first: leave no empty folders behind
                with contextlib.suppress(OSError):
                    p.rmdir()  # only if empty
            raise
    arrays = {}
    for name in MNIST_FILES:
        raw = _decompress(folder / name)
        _verify(name, raw, str(folder / name))
        arrays[name] = _parse_idx(raw, str(folder / name))
    logger.info("MNIST from %s (checksums verified)", folder.resolve())

    def images(key: str) -> torch.Tensor:
        x = arrays[key].to(torch.float32).div_(255.0).unsqueeze(1)
        return x.sub_(MNIST_MEAN).div_(MNIST_STD) if normalize else x

    train = TensorData(
        images("train-images-idx3-ubyte.gz"), arrays["train-labels-idx1-ubyte.gz"].long()
    )
    test = TensorData(
        images("t10k-images-idx3-ubyte.gz"), arrays["t10k-labels-idx1-ubyte.gz"].long()
    )
    return train, test


# ------------------------------------------------------------------------------ spirals

CUBIC_A = ((-0.1, 2.0), (-2.0, -0.1))


@dataclasses.dataclass
class TrajectoryData:
    """A 2-D trajectory (true and noisy observations) split in time: the first ``split``
    points train, the rest (from the last training point on) test extrapolation."""

    t: torch.Tensor  # (T,)
    y: torch.Tensor  # (T, 2) noise-free
    observed: torch.Tensor  # (T, 2) with observation noise
    split: int  # index of the first held-out time

    @property
    def test_t(self) -> torch.Tensor:
        return self.t[self.split - 1 :]


def _split(n_points: int, holdout: float) -> int:
    if not 0.0 <= holdout < 1.0:
        raise InvalidArgumentError(f"holdout must be in [0, 1), got {holdout}")
    return max(2, round(n_points * (1 - holdout)))


def _noisy(y: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return y + noise * torch.randn(y.shape, generator=g, dtype=y.dtype)


def make_spiral_trajectory(
    n_points: int = 1000,
    t_end: float = 4 * math.pi,
    noise: float = 0.1,
    holdout: float = 0.2,
    seed: int = 0,
) -> TrajectoryData:
    """The tutorial's spiral (Exercise 1): one arm ``x = t cos t, y = t sin t``,
    ``t ∈ [0, 4π]``, 1,000 points with Gaussian noise of standard deviation 0.1; the last
    ``holdout`` fraction of times is held out for testing."""
    split = _split(n_points, holdout)
    t = torch.linspace(0.0, t_end, n_points, dtype=torch.float64)
    y = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return TrajectoryData(t.float(), y.float(), _noisy(y, noise, seed).float(), split)


def cubic_dynamics(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``dy/dt = y³ A`` with ``A = [[-0.1, 2], [-2, -0.1]]`` (torchdiffeq's ode_demo system)."""
    A = torch.tensor(CUBIC_A, dtype=y.dtype, device=y.device)
    return (y**3) @ A


def make_cubic_trajectory(
    n_points: int = 1000,
    t_end: float = 25.0,
    noise: float = 0.01,
    holdout: float = 0.2,
    seed: int = 0,
) -> TrajectoryData:
    """Trajectory of ``dy/dt = y³ A`` (:func:`cubic_dynamics`), ``y(0) = [2, 0]`` on
    ``[0, t_end]``, solved accurately (dopri5, rtol 1e-7), with Gaussian observation noise; the
    last ``holdout`` fraction of times is held out. Not the tutorial's spiral (that is
    :func:`make_spiral_trajectory`): the spiral of torchdiffeq's ``ode_demo``."""
    from .solvers import odeint

    split = _split(n_points, holdout)
    t = torch.linspace(0.0, t_end, n_points, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        y = odeint(cubic_dynamics, y0, t, rtol=1e-7, atol=1e-9)[:, 0]
    return TrajectoryData(t.float(), y.float(), _noisy(y, noise, seed).float(), split)


TRAJECTORIES = {"spiral": make_spiral_trajectory, "cubic": make_cubic_trajectory}
"""The trajectory datasets by name."""


def make_spiral_points(
    n: int = 500, noise: float = 0.05, turns: float = 2.0, seed: int = 0
) -> TensorData:
    """The tutorial's two-arm noisy spiral: ``n`` 2-D points per arm with labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(0.1, 1.0, n)
    theta = r * turns * 2 * math.pi
    arms = []
    for k in range(2):
        x = torch.stack([r * torch.cos(theta + k * math.pi), r * torch.sin(theta + k * math.pi)], 1)
        arms.append(x + noise * torch.randn(x.shape, generator=g))
    x = torch.cat(arms)
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return TensorData(x, y)


def batches(
    data: TensorData,
    batch_size: int,
    generator: torch.Generator | None,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterator over ``(x, y)`` batches; shuffled when a generator is given. With ``world > 1``
    each global batch is split evenly between the ranks."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < batch_size and drop_last:
            break
        if world > 1:
            idx = idx[rank::world]
        if len(idx):
            yield data.x[idx], data.y[idx]
