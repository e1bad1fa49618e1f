"""Fused CPU kernels for the native Runge–Kutta loops, with the checks that make them safe.

Besides calling ``f``, a step of dopri5 forms six weighted sums of stage derivatives (21 terms)
and an error estimate (6 more). With one tensor operation per term each term is a pass over
memory; on a small CPU problem (batch 128, 64 states) those passes cost about a third of the
dynamics themselves. The C module ``_fused`` (built by ``pip install`` where a C compiler is
available) forms each sum in one pass and the step's error ratio in one more; for the implicit
methods it also takes Newton's iterations on small systems (:mod:`._newton` hands it buffers
proven here, by :func:`prove`).

:func:`select` picks the kernels of a solve. Where the state is a contiguous float32 or float64
CPU tensor of at most :data:`MAX_BYTES` with memory of its own (beyond that size one pass of a
single thread loses to PyTorch's multi-threaded operations; a ``torch.func`` wrapper has no
memory to read), the module was built and ``NEURALODE_FUSED`` is not ``0``: without an autograd
graph (inference, the forward pass of the adjoint and checkpointed methods, the adjoint's
backward solve) :class:`FusedKernels`; with one, :class:`GraphKernels` (the sums in tensor
operations, which the graph records; the norms fused). Otherwise :class:`TorchKernels`.

Memory safety: the C functions read raw addresses and trust them, so this module is the only
one that takes ``data_ptr()`` (:func:`prove`, which :mod:`._newton` calls for the buffers of the
Newton kernels too), and every buffer handed over is proven, on every call: the
stage derivatives when they enter a :class:`Stages` list (contiguous, on the CPU, of the state's
dtype and exact element count — a derivative of another layout or dtype is converted first, one
of another size or device is a ``ValueError``), the base state of a step once when the list is
made, the workspace when it is made (:class:`Scratch`), and every other tensor when it is passed
in. Outputs are allocated here, from a proven tensor.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError
from ._controller import initial_step
from ._tensor_kernels import Kernels, Terms, TorchKernels, combine, hermite, rms

__all__ = [  # (with the tensor-operation kernels of ._tensor_kernels, as one namespace)
    "MAX_BYTES",
    "FusedKernels",
    "GraphKernels",
    "Kernels",
    "Scratch",
    "Stages",
    "Terms",
    "TorchKernels",
    "accumulate_",
    "all_finite",
    "available",
    "combine",
    "error_ratio",
    "has_data",
    "hermite",
    "lincomb",
    "prove",
    "readable",
    "rms",
    "select",
    "usable",
]

logger = logging.getLogger(__name__)

try:
    _fused: Any = importlib.import_module(f"{__package__}._fused")
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


def readable(y: torch.Tensor, max_bytes: int, switch: bool = True) -> bool:
    """A contiguous float32/float64 CPU tensor of at most ``max_bytes``, and kernels to read it
    (not turned off by ``NEURALODE_FUSED=0``, unless ``switch`` is false: a check's kernel)."""
    return (
        y.dtype in (torch.float32, torch.float64)
        and y.is_cpu
        and y.is_contiguous()
        and y.numel() * y.element_size() <= max_bytes
        and (available() if switch else built)
        and has_data(y)
    )


def has_data(x: torch.Tensor) -> bool:
    """Whether ``x`` has memory to read: not so for a ``torch.func`` transform's wrapper
    (``grad``, ``vmap``), whose ``data_ptr()`` raises."""
    try:
        x.data_ptr()
    except RuntimeError:
        return False
    return True


def usable(y: torch.Tensor) -> bool:
    """Whether a solve of the state ``y`` may use the fused kernels now (see the module doc)."""
    return not torch.is_grad_enabled() and readable(y, MAX_BYTES)


def _mismatch(x: torch.Tensor, numel: int, dtype: torch.dtype, what: str) -> ValueError:
    return ValueError(
        f"{what}: the fused kernels need a contiguous CPU tensor of {numel} elements of "
        f"{dtype}, got {x.numel()} elements of {x.dtype} on {x.device}"
        f"{'' if x.is_contiguous() else ' (not contiguous)'}"
    )


def prove(x: torch.Tensor, numel: int, dtype: torch.dtype, what: str) -> int:
    """The address of ``x`` once it is proven to hold what a kernel will read."""
    if not (x.dtype is dtype and x.is_cpu and x.is_contiguous() and x.numel() == numel):
        raise _mismatch(x, numel, dtype, what)
    return x.data_ptr()


def address_if(x: torch.Tensor, numel: int, dtype: torch.dtype) -> int:
    """The address of ``x`` where it holds what a kernel reads (:func:`prove`'s test), else 0:
    for a buffer the caller can take another way (a derivative of another layout)."""
    try:
        return prove(x, numel, dtype, "")
    except ValueError:
        return 0


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
        self.numel = n = base.numel()
        self.dtype = dtype = base.dtype
        if dtype not in (torch.float32, torch.float64):
            raise _mismatch(base, n, torch.float32, "base of a fused sum")
        if not (base.is_cpu and base.is_contiguous()):  # (prove's test, written out: every step)
            prove(base, n, dtype, "base of a fused sum")
        self.base_address = base.data_ptr()
        self.base = base
        self.tensors: list[torch.Tensor] = []
        self.addresses: list[int] = []
        if first is not None:
            if not (
                first.is_cpu
                and first.dtype is dtype
                and first.is_contiguous()
                and first.numel() == n
            ):
                first = self._conform(first)
            self.tensors.append(first)
            self.addresses.append(first.data_ptr())

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
        f: Any,  # the solve's evaluator (an _evaluator.Evaluator), or a plain f(t, y)
        t: float,
        nodes: Sequence[float],
        last_node: float | None = None,
    ) -> torch.Tensor:
        """The stages of an explicit Runge–Kutta step of size ``scale`` from ``t``: for each
        row ``i`` (from 1), the state ``y_i = base + scale * sum(c * stages[j] for j, c in
        pairs(rows[i - 1]))`` in one pass, then ``stages.append(f(t + nodes[i - 1] * scale,
        y_i))`` (at ``last_node`` instead where the node is 1 and it is given: just before a
        jump); returns the last ``y_i``.

        :meth:`append` and :func:`lincomb` written out in one loop: a dopri5 step calls them
        twelve times, and this saves their calls' overhead. Where ``f`` is an evaluator in its
        plain case (``f.fast``: a tensor state forwards in time, checked once) its dynamics
        are called here directly, and a derivative of the state's shape, dtype and layout is
        only counted; any other goes through the evaluator's checks."""
        c_lincomb = _fused.lincomb
        empty_like = torch.empty_like
        dbl, n, dtype = self.dtype is torch.float64, self.numel, self.dtype
        base, base_address = self.base, self.base_address
        tensors, addresses = self.tensors, self.addresses
        fast = getattr(f, "fast", False)
        if fast:
            func, time_kw, stats, shape = f.func, f.time_kw, f.stats, base.shape
            scalar_tensor, tensor_type = torch.scalar_tensor, torch.Tensor
        y = base
        for terms, c in zip(rows, nodes, strict=True):
            y = empty_like(base)  # fresh and contiguous, numel elements
            c_lincomb(dbl, n, y.data_ptr(), base_address, addresses, terms, scale)
            ti = t + c * scale if last_node is None or c != 1.0 else last_node
            if fast:
                k = func(scalar_tensor(ti, **time_kw), y)
                if (
                    type(k) is tensor_type
                    and k.shape == shape
                    and k.dtype is dtype
                    and k.is_cpu
                    and k.is_contiguous()
                ):
                    stats.nfe_forward += 1
                    tensors.append(k)
                    addresses.append(k.data_ptr())
                    continue
                k = f.after(k, y)  # checked and counted by the evaluator
            else:
                k = f(ti, y)
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
    _fused.lincomb(stages.dtype is torch.float64, stages.numel, out.data_ptr(),
                   stages.base_address if with_base else None, stages.addresses, terms,
                   scale)  # fmt: skip
    return out


FUSED_TERMS = 8
"""The terms the C module sums in one pass; an error estimate of more terms (dopri8's) is
summed into the solve's workspace first."""


class Scratch:
    """The extent of a solve's error norm, ``(elements read, segment length)``, and the
    workspace of :func:`error_ratio`, made when a sum of more than :data:`FUSED_TERMS` terms
    first needs it (dopri5's error estimate has six: it is never made)."""

    __slots__ = ("_like", "dtype", "extent", "tensor")

    def __init__(self, like: torch.Tensor, extent: tuple[int, int]) -> None:
        numel, seg = extent
        if not (seg > 0 and 0 <= numel <= like.numel()):
            raise InvalidArgumentError(
                f"error_ratio: extent {extent} does not fit a state of {like.numel()} elements"
            )
        self.extent = extent
        self.dtype = like.dtype
        self._like = like
        self.tensor: torch.Tensor | None = None

    def address(self, terms: Sequence[int | float]) -> int:
        """The workspace's address for a sum of these (flattened) terms; 0, no workspace, where
        the kernel sums them in one pass."""
        if len(terms) <= 2 * FUSED_TERMS:
            return 0
        if self.tensor is None:
            self.tensor = self._like.new_empty(self.extent[0])
        return self.tensor.data_ptr()


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
    if scratch.dtype is not dtype:
        raise InvalidArgumentError(
            f"error_ratio: the fused kernels need a workspace of the stages' dtype {dtype}, got "
            f"{scratch.dtype}"
        )
    numel, seg = scratch.extent
    if numel > n:
        raise InvalidArgumentError(
            f"error_ratio: extent {scratch.extent} does not fit {n} elements"
        )
    return _fused.error_ratio(
        dtype is torch.float64, numel, seg, stages.base_address,
        prove(y1, n, dtype, "y1 of an error ratio"), rtol, atol, scratch.address(terms),
        stages.addresses, terms, scale,
    )  # fmt: skip


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
    kernel cannot read ``y`` (the caller then asks PyTorch). A check, whose answer does not
    depend on the kernels: ``NEURALODE_FUSED=0`` does not turn it off."""
    if not readable(y, 8 * MAX_BYTES, switch=False):
        return None
    return _fused.all_finite(y.dtype is torch.float64, y.numel(), y.data_ptr())


class FusedKernels(Kernels):
    """The primitives in one pass of the C module each (see the module doc for when)."""

    def __init__(self, rtol: Any, atol: Any, norm: Any, y0: torch.Tensor) -> None:
        super().__init__(rtol, atol, norm)
        extent = getattr(norm, "extent", None)
        self._ratio = (
            Scratch(y0, extent(y0.numel()))
            if extent is not None and type(rtol) is float and type(atol) is float
            else None
        )

    def rk_stages(self, ev, tab, t: float, y, f0, dt, last_node: float | None = None):
        ks = Stages(y, f0)
        yi = ks.advance(tab.a_flat_stages, dt, ev, t, tab.c_stages, last_node)
        if not tab.fsal:
            yi = lincomb(ks, tab.b_flat, dt)
        return yi, ks

    def error_ratio(self, tab, y, y1, ks, dt: float) -> float:
        scratch = self._ratio
        if scratch is None:
            return super().error_ratio(tab, y, y1, ks, dt)
        # error_ratio() written out (prove's test of y1 too): it proves or refuses the rest
        n, dtype = ks.numel, ks.dtype
        numel, seg = scratch.extent
        terms = tab.b_err_flat
        if not (y1.dtype is dtype and y1.is_cpu and y1.is_contiguous() and y1.numel() == n) or (
            scratch.dtype is not dtype or numel > n
        ):
            return error_ratio(ks, y1, terms, dt, self.rtol, self.atol, scratch)
        return _fused.error_ratio(
            dtype is torch.float64, numel, seg, ks.base_address, y1.data_ptr(), self.rtol,
            self.atol, scratch.address(terms), ks.addresses, terms, dt,
        )  # fmt: skip

    def initial_step(self, ev, order: int, t0: Any, y0, f0) -> Any:
        if self._ratio is None:
            return super().initial_step(ev, order, t0, y0, f0)
        # (no graph is recorded where these kernels are used) the stages [y0, f0, f1]
        stages = Stages(y0, y0)
        stages.append(f0)

        def d2_at(h0: float) -> float:
            stages.append(ev(t0 + h0, lincomb(stages, (1, 1.0), h0)))
            return self._norm_of(stages, (2, 1.0, 1, -1.0)) / h0

        d0, d1 = self._norm_of(stages, (0, 1.0)), self._norm_of(stages, (1, 1.0))
        return initial_step(order, d0, d1, d2_at)

    def _norm_of(self, stages: Stages, terms) -> float:
        """The norm of a sum of stages scaled by ``atol + rtol * |y0|`` (``y0`` is the stages'
        base, proven with them; the workspace is made where a sum needs it)."""
        scratch = self._ratio
        if scratch is None:
            raise RuntimeError("the fused norms need the solve's scratch (made with the kernels)")
        numel, seg = scratch.extent
        if numel > stages.numel or scratch.dtype is not stages.dtype:
            raise InvalidArgumentError(
                f"a norm of extent {scratch.extent} ({scratch.dtype}) over {stages.numel} "
                f"elements of {stages.dtype}"
            )
        return _fused.error_ratio(
            stages.dtype is torch.float64, numel, seg, stages.base_address, stages.base_address,
            self.rtol, self.atol, scratch.address(terms), stages.addresses, terms, 1.0,
        )  # fmt: skip

    def dense(self, tab, y0, y1, ks, f1, dt: float, theta: float) -> torch.Tensor:
        if theta >= 1.0:
            return y1
        terms: list[int | float] = []
        for j, (q1, q2, q3, q4) in tab.dense_poly:
            terms.append(j)
            terms.append(theta * (q1 + theta * (q2 + theta * (q3 + theta * q4))))
        if isinstance(ks, Stages) and ks.base is y0:
            stages = ks.extended(f1)
        else:
            stages = Stages(y0)
            for k in (*ks, f1):
                stages.append(k)
        return lincomb(stages, tuple(terms), dt)

    def accumulate_(self, targets, stage_parts, tab, dt: float) -> None:
        """(The caller checks once that every target is :func:`usable`.)"""
        accumulate_(targets, stage_parts, tab.b_flat, dt)


class GraphKernels(FusedKernels):
    """With an autograd graph: the sums of stages in tensor operations, which the graph records;
    the error ratio and the first step's norms, which need none, fused (one pass each, not a
    dozen tensor operations) where every tensor can be read (not a ``torch.func`` wrapper)."""

    rk_stages = Kernels.rk_stages
    dense = Kernels.dense
    accumulate_ = Kernels.accumulate_

    def error_ratio(self, tab, y, y1, ks, dt: float) -> float:
        if (
            type(dt) is float
            and self._ratio is not None
            and y.is_contiguous()
            and y1.is_contiguous()
            and all(map(has_data, (y, y1, *ks)))
        ):
            with torch.no_grad():  # (a derivative of another layout is converted: no graph)
                stages = Stages(y, ks[0])
                for k in ks[1:]:
                    stages.append(k)
                return super().error_ratio(tab, y, y1, stages, dt)
        return Kernels.error_ratio(self, tab, y, y1, ks, dt)

    def initial_step(self, ev, order: int, t0: Any, y0, f0) -> Any:
        if not has_data(f0):  # (the dynamics answer through a torch.func transform)
            return Kernels.initial_step(self, ev, order, t0, y0, f0)
        with torch.no_grad():
            return super().initial_step(ev, order, t0, y0, f0)


def select(y0: torch.Tensor, rtol: Any = None, atol: Any = None, norm: Any = None) -> Kernels:
    """The kernels for a solve of the state ``y0`` started now: the fused ones where
    :func:`usable`; where only a graph is in the way, :class:`GraphKernels`; else tensor
    operations."""
    if not readable(y0, MAX_BYTES):
        return TorchKernels(rtol, atol, norm)
    if torch.is_grad_enabled():
        return GraphKernels(rtol, atol, norm, y0)
    return FusedKernels(rtol, atol, norm, y0)
