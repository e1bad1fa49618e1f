"""Checkpoints: written atomically, loaded safely (``weights_only=True``)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_write

__all__ = [
    "CheckpointError",
    "capture_rng",
    "has_digest",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]


logger = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    """Every random number generator a training step may draw from."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = cast(
        "tuple[str, Any, int, int, float]",
        np.random.get_state(),  # noqa: NPY002 - user code's RNG
    )
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the random generators' states (torch, Python, NumPy and CUDA where saved) that
    a checkpoint recorded, so that a resumed run draws what the uninterrupted one would."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - the legacy global RNG is what user code draws from
        (
            "MT19937",
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_MAGIC = b"NEURALODE-CHECKPOINT 1 sha256="
_DIGEST_LEN = 64


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename), behind a header
    with the SHA-256 of its bytes, which :func:`load_checkpoint` verifies.

    The state is serialised in memory first, so a full disk is an ``OSError`` from the write
    that says so (and the previous checkpoint stays), not an error from inside the serializer.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(fh: IO[bytes]) -> None:
        fh.write(header)
        fh.write(payload)

    atomic_write(path, write)


def has_digest(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` starts with the digest header (checkpoints written before
    it existed do not)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs), after verifying
    the SHA-256 of its bytes against the one stored with it.

    Raises:
        CheckpointError: the file is missing, unreadable, altered (digest mismatch) or not a
            dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    fix = "delete it to start over, or restore it from a backup"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err.strerror})") from err
    if raw.startswith(_MAGIC):
        end = len(_MAGIC) + _DIGEST_LEN
        stored, payload = raw[len(_MAGIC) : end].decode(errors="replace"), raw[end + 1 :]
        if raw[end : end + 1] != b"\n" or hashlib.sha256(payload).hexdigest() != stored:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its contents do not match the SHA-256 stored "
                f"with it (the file was altered or damaged after it was written); {fix}"
            )
    else:  # written before checkpoints carried a digest: its reader checks it another way
        logger.debug("checkpoint %s has no digest to verify (an older format)", path)
        payload = raw
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler fails in many ways on damaged bytes
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {fix}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a neuralode checkpoint "
            f"(a dictionary); {fix}"
        )
    return state
