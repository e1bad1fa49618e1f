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

Memory safety: the C functions read raw addresses and trust them, so this module is the only
one that takes ``data_ptr()``, and it proves every buffer it hands over, on every call: the
stage derivatives when they enter a :class:`Stages` list (contiguous, on the CPU, of the state's
dtype and exact element count — a derivative of another layout or dtype is converted first, one
of another size or device is a ``ValueError``), the base state of a step once when the list is
made, the workspace once per solve (:class:`Scratch`), and every other tensor when it is passed
in. Outputs are allocated here, from a proven tensor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch

from ..errors import InvalidArgumentError

__all__ = [
    "MAX_BYTES",
    "Scratch",
    "Stages",
    "accumulate_",
    "all_finite",
    "available",
    "error_ratio",
    "lincomb",
    "usable",
]

logger = logging.getLogger(__name__)

try:
    from . import _fused
except ImportError:  # no compiler at install time: plain tensor operations
    _fused = None
    logger.debug("neuralode.solvers._fused is not built: the native engine uses tensor operations")

MAX_BYTES = 1 << 17
"""The largest state (in bytes) for which the fused kernels are used."""

built = _fused is not None
"""Whether the C module was built."""


def available() -> bool:
    """Whether the fused kernels were built and are not disabled by ``NEURALODE_FUSED=0``."""
    return built and os.environ.get("NEURALODE_FUSED", "1") != "0"


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


def _mismatch(x: torch.Tensor, numel: int, dtype: torch.dtype, what: str) -> ValueError:
    return ValueError(
        f"{what}: the fused kernels need a contiguous CPU tensor of {numel} elements of "
        f"{dtype}, got {x.numel()} elements of {x.dtype} on {x.device}"
        f"{'' if x.is_contiguous() else ' (not contiguous)'}"
    )


def _prove(x: torch.Tensor, numel: int, dtype: torch.dtype, what: str) -> int:
    """The address of ``x`` once it is proven to hold what a kernel will read."""
    if not (x.dtype is dtype and x.is_cpu and x.is_contiguous() and x.numel() == numel):
        raise _mismatch(x, numel, dtype, what)
    return x.data_ptr()


class Stages:
    """A base state and the stage derivatives of one step, each proven readable by the kernels
    when it enters: the base once, at construction, and each derivative when appended.

    ``tensors`` is the list the loops index (``ks[j]``); the kernels read ``addresses``. A
    derivative of another dtype or layout is converted; one of another size (a dynamics bug:
    ``f`` returned fewer elements than the state has) or on another device is a ``ValueError``
    instead of a read past its end.
    """

    __slots__ = ("addresses", "base", "base_address", "dtype", "numel", "tensors", "what")

    def __init__(
        self,
        base: torch.Tensor,
        first: torch.Tensor | None = None,
        what: str = "func(t, y) returned dy/dt",
    ) -> None:
        self.what = what
        self.numel = base.numel()
        self.dtype = base.dtype
        if self.dtype not in (torch.float32, torch.float64):
            raise _mismatch(base, self.numel, torch.float32, "base of a fused sum")
        self.base_address = _prove(base, self.numel, self.dtype, "base of a fused sum")
        self.base = base
        self.tensors: list[torch.Tensor] = []
        self.addresses: list[int] = []
        if first is not None:
            self.append(first)

    def append(self, k: torch.Tensor) -> torch.Tensor:
        """Prove ``k`` (converting its dtype or layout where needed) and add it; return it."""
        if not (
            k.is_cpu and k.dtype is self.dtype and k.is_contiguous() and k.numel() == self.numel
        ):
            k = self._conform(k)
        self.tensors.append(k)
        self.addresses.append(k.data_ptr())
        return k

    def _conform(self, k: torch.Tensor) -> torch.Tensor:
        """``k`` converted to a readable tensor of the state's dtype, or a ``ValueError``."""
        if not k.is_cpu:
            raise InvalidArgumentError(
                f"{self.what} on {k.device} but the state y is on the CPU; "
                "the dynamics must return their derivative on the device of the state"
            )
        if k.numel() != self.numel:
            raise InvalidArgumentError(
                f"{self.what} with {k.numel()} elements but the state has "
                f"{self.numel}; the dynamics must return a derivative of the state's shape on "
                "every call"
            )
        return k.to(self.dtype).contiguous()

    def advance(
        self,
        rows: Sequence[Sequence[int | float]],
        scale: float,
        f: Callable[[int, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The stages of an explicit Runge–Kutta step: for each row ``i`` (from 1), the state
        ``y_i = base + scale * sum(c * stages[j] for j, c in pairs(rows[i - 1]))`` in one pass,
        then ``stages.append(f(i, y_i))``; returns the last ``y_i``.

        :meth:`append` and :func:`lincomb` written out in one loop: a dopri5 step calls them
        twelve times, and this saves their calls' overhead."""
        c_lincomb = _fused.lincomb
        empty_like = torch.empty_like
        dbl, n, dtype = self.dtype is torch.float64, self.numel, self.dtype
        base, base_address = self.base, self.base_address
        tensors, addresses = self.tensors, self.addresses
        y = base
        for i, terms in enumerate(rows, 1):
            y = empty_like(base)  # fresh and contiguous, numel elements
            c_lincomb(dbl, n, y.data_ptr(), base_address, addresses, terms, scale)
            k = f(i, y)
            if not (k.is_cpu and k.dtype is dtype and k.is_contiguous() and k.numel() == n):
                k = self._conform(k)
            tensors.append(k)
            addresses.append(k.data_ptr())
        return y

    def extended(self, k: torch.Tensor) -> Stages:
        """A copy with ``k`` appended (the dense output's extra slope); the stages proven
        already are not proven again."""
        out = Stages.__new__(Stages)
        out.what, out.numel, out.dtype = self.what, self.numel, self.dtype
        out.base, out.base_address = self.base, self.base_address
        out.tensors, out.addresses = list(self.tensors), list(self.addresses)
        out.append(k)
        return out

    # the loops index a step's stages as a list (``ks[j]``)
    def __getitem__(self, j):
        return self.tensors[j]

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return iter(self.tensors)


def lincomb(
    stages: Stages, terms: Sequence[int | float], scale: float, with_base: bool = True
) -> torch.Tensor:
    """``base + scale * sum(c * stages[j] for j, c in pairs(terms))`` (without the base when
    ``with_base`` is false) in one pass, into a new tensor of the base's layout."""
    out = torch.empty_like(stages.base)  # a fresh, contiguous tensor of numel elements
    _fused.lincomb(
        stages.dtype is torch.float64,
        stages.numel,
        out.data_ptr(),
        stages.base_address if with_base else None,
        stages.addresses,
        terms,
        scale,
    )
    return out


class Scratch:
    """The workspace of :func:`error_ratio` for one solve, and the extent of its norm:
    ``(elements read, segment length)``."""

    __slots__ = ("address", "extent", "tensor")

    def __init__(self, like: torch.Tensor, extent: tuple[int, int]) -> None:
        numel, seg = extent
        if not (seg > 0 and 0 <= numel <= like.numel()):
            raise InvalidArgumentError(
                f"error_ratio: extent {extent} does not fit a state of {like.numel()} elements"
            )
        self.extent = extent
        self.tensor = like.new_empty(numel)
        self.address = self.tensor.data_ptr()


def error_ratio(
    stages: Stages,
    y1: torch.Tensor,
    terms: Sequence[int | float],
    scale: float,
    rtol: float,
    atol: float,
    scratch: Scratch,
) -> float:
    """The step's error ratio: the largest over segments of ``scratch.extent`` of
    ``RMS(err / (atol + rtol * max(|y0|, |y1|)))`` with ``y0`` the stages' base and ``err`` the
    sum of the terms, as in :func:`lincomb`; NaN where ``y1`` or ``err`` is not finite."""
    n, dtype = stages.numel, stages.dtype
    if scratch.tensor.dtype is not dtype:
        raise _mismatch(scratch.tensor, scratch.extent[0], dtype, "scratch of an error ratio")
    numel, seg = scratch.extent
    if numel > n:
        raise InvalidArgumentError(
            f"error_ratio: extent {scratch.extent} does not fit {n} elements"
        )
    return _fused.error_ratio(
        dtype is torch.float64,
        numel,
        seg,
        stages.base_address,
        _prove(y1, n, dtype, "y1 of an error ratio"),
        rtol,
        atol,
        scratch.address,
        stages.addresses,
        terms,
        scale,
    )


def accumulate_(
    targets: Sequence[torch.Tensor],
    stage_parts: Sequence[Sequence[torch.Tensor]],
    terms: Sequence[int | float],
    scale: float,
) -> None:
    """``targets[i] += scale * sum(c * stage_parts[j][i] for j, c in pairs(terms))``, in place,
    one pass per target (the continuous adjoint's quadrature of parameter adjoints)."""
    for i, target in enumerate(targets):
        parts = Stages(target, what=f"the vector-Jacobian product of parameter {i}")
        for stage in stage_parts:
            parts.append(stage[i])
        address = parts.base_address
        _fused.lincomb(
            parts.dtype is torch.float64, parts.numel, address, address, parts.addresses,
            terms, scale,
        )  # fmt: skip


def all_finite(y: torch.Tensor) -> bool | None:
    """Whether ``y`` holds only finite values, in one pass of the kernel; ``None`` where the
    kernel cannot read ``y`` (the caller then asks PyTorch)."""
    if not _readable(y, 8 * MAX_BYTES):
        return None
    return _fused.all_finite(y.dtype is torch.float64, y.numel(), y.data_ptr())
