"""Fused CPU kernels for the native Runge–Kutta loops, with the checks that make them safe.

Besides calling ``f``, a step of dopri5 forms six weighted sums of stage derivatives (21 terms)
and an error estimate (6 more). With one tensor operation per term each term is a pass over
memory; on a small CPU problem (batch 128, 64 states) those passes cost about a third of the
dynamics themselves. The C module ``_fused``
(built by ``pip install`` where a C compiler is available) forms each sum in one pass and the
step's error ratio in one more.

The kernels are used for a solve when all of these hold, and plain tensor operations otherwise:

* the module was built and ``NEURALODE_FUSED`` is not ``0``;
* no autograd graph is being recorded (``torch.is_grad_enabled()`` is false: inference, the
  forward pass of the adjoint and checkpointed methods, and the adjoint's backward solve);
* the state is a contiguous float32 or float64 CPU tensor of at most :data:`MAX_BYTES` (beyond
  that one pass of a single thread loses to PyTorch's multi-threaded operations).

Derivatives returned by ``f`` are made contiguous and cast to the state's dtype before they are
used; one on another device is an error.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["MAX_BYTES", "all_finite", "available", "usable"]

logger = logging.getLogger(__name__)

try:
    from . import _fused
except ImportError:  # no compiler at install time: plain tensor operations
    _fused = None
    logger.debug("neuralode.solvers._fused is not built: the native engine uses tensor operations")

MAX_BYTES = 1 << 17
"""The largest state (in bytes) for which the fused kernels are used."""

lincomb = None if _fused is None else _fused.lincomb
error_ratio = None if _fused is None else _fused.error_ratio
_all_finite = None if _fused is None else _fused.all_finite


def available() -> bool:
    """Whether the fused kernels were built and are not disabled by ``NEURALODE_FUSED=0``."""
    return _fused is not None and os.environ.get("NEURALODE_FUSED", "1") != "0"


def _readable(y: torch.Tensor, max_bytes: int) -> bool:
    """A contiguous float32/float64 CPU tensor of at most ``max_bytes``, and kernels to read it."""
    return (
        y.dtype in (torch.float32, torch.float64)
        and y.device.type == "cpu"
        and y.is_contiguous()
        and y.numel() * y.element_size() <= max_bytes
        and available()
    )


def usable(y: torch.Tensor) -> bool:
    """Whether a solve of the state ``y`` may use the fused kernels now (see the module doc)."""
    return not torch.is_grad_enabled() and _readable(y, MAX_BYTES)


def all_finite(y: torch.Tensor) -> bool | None:
    """Whether ``y`` holds only finite values, in one pass of the kernel; ``None`` where the
    kernel cannot read ``y`` (the caller then asks PyTorch)."""
    if not _readable(y, 8 * MAX_BYTES):
        return None
    return _all_finite(y.dtype == torch.float64, y.numel(), y.data_ptr())
