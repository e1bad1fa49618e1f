"""Regularizers of the dynamics, integrated alongside the state in the same solve.

Each regularizer contributes one extra scalar per sample to the ODE state whose derivative is
its integrand; after the solve the value at the final time is the integral over the interval.
This works with direct backpropagation and with the adjoint (the integrand is differentiable).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar, cast

import torch
from torch import nn

from .errors import InvalidArgumentError

__all__ = [
    "SCALES",
    "AbstractRegularizer",
    "JacobianFrobenius",
    "KineticEnergy",
    "RegularizedDynamics",
]


def _per_sample_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


class AbstractRegularizer(nn.Module, abc.ABC):
    """A term ``weight * mean_over_batch(∫ integrand dt)`` added to the training loss."""

    name: ClassVar[str]
    needs_jacobian: ClassVar[bool] = False

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise InvalidArgumentError(
                f"regularizer weight must be a non-negative number, got {weight!r}"
            )
        self.weight = float(weight)

    def begin_solve(self, h0: torch.Tensor) -> None:
        """Called once before each solve (e.g. to draw a random probe)."""

    @abc.abstractmethod
    def integrand(
        self, t: torch.Tensor, h: torch.Tensor, dh: torch.Tensor, create_graph: bool
    ) -> torch.Tensor:
        """The per-sample integrand, shape ``(batch,)``."""


SCALES = ("sum", "rnode")
"""How :class:`KineticEnergy` and :class:`JacobianFrobenius` reduce a sample's state:
``"sum"`` over its elements (the tutorial's ``∫ ‖f‖² dt``), or ``"rnode"`` as Finlay et al.'s
code (``ffjord-rnode``): the mean over the elements, and half of it for the kinetic energy, so
that a weight means the same for a 2-D point and a 784-pixel image."""


def _check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise InvalidArgumentError(f"scale must be 'sum' or 'rnode', got {scale!r}")
    return scale


class KineticEnergy(AbstractRegularizer):
    """Kinetic energy ``∫ ‖f(t, h)‖² dt`` (Finlay et al., 2020): favours straight, slow paths
    that need few solver steps.

    Args:
        weight: multiplier of the term in the loss.
        scale: ``"sum"`` — ``∫ ‖f‖² dt`` (the default); ``"rnode"`` — ``∫ ½ mean_i f_i² dt``,
            the term of RNODE's code, with which its published weights (0.01) were tuned."""

    name = "kinetic"

    def __init__(self, weight: float = 0.01, scale: str = "sum") -> None:
        super().__init__(weight)
        self.scale = _check_scale(scale)

    def factor(self, numel: int) -> float:
        """What the per-sample sum ``‖f‖²`` is multiplied by (``numel``: a sample's size)."""
        return 0.5 / numel if self.scale == "rnode" else 1.0

    def integrand(
        self, t: torch.Tensor, h: torch.Tensor, dh: torch.Tensor, create_graph: bool
    ) -> torch.Tensor:
        return _per_sample_sum(dh * dh) * self.factor(h[0].numel())

    def extra_repr(self) -> str:
        return f"weight={self.weight}, scale={self.scale!r}"


class JacobianFrobenius(AbstractRegularizer):
    """Jacobian Frobenius norm ``∫ ‖∂f/∂h‖²_F dt`` (Finlay et al., 2020).

    Args:
        weight: multiplier of the term in the loss.
        estimator: ``"hutchinson"`` — unbiased one-probe estimate ``‖εᵀ J‖²`` with one
            vector-Jacobian product per evaluation (the probe ε is drawn once per solve); or
            ``"exact"`` — the full Jacobian row by row, one product per state element (small
            dimensions only).
        probe: ``"gaussian"`` or ``"rademacher"`` (Hutchinson only).
        scale: ``"sum"`` — ``∫ ‖J‖²_F dt`` (the default); ``"rnode"`` — divided by the sample's
            size, the term of RNODE's code (``mean_i (εᵀJ)_i²``).

    Samples must be independent under ``f`` (no batch statistics inside the dynamics).
    """

    name = "jacobian"
    needs_jacobian = True

    def __init__(
        self,
        weight: float = 0.01,
        estimator: str = "hutchinson",
        probe: str = "gaussian",
        scale: str = "sum",
    ) -> None:
        super().__init__(weight)
        self.scale = _check_scale(scale)
        if estimator not in ("hutchinson", "exact"):  # (checked after the weight)
            raise InvalidArgumentError(
                f"estimator must be 'hutchinson' or 'exact', got {estimator!r}"
            )
        if probe not in ("gaussian", "rademacher"):
            raise InvalidArgumentError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        self.estimator = estimator
        self.probe = probe
        self._eps: torch.Tensor | None = None

    def factor(self, numel: int) -> float:
        """What the per-sample sum ``‖εᵀJ‖²`` is multiplied by (``numel``: a sample's size)."""
        return 1.0 / numel if self.scale == "rnode" else 1.0

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, estimator={self.estimator!r}, probe={self.probe!r}, "
            f"scale={self.scale!r}"
        )

    def begin_solve(self, h0: torch.Tensor) -> None:
        if self.estimator == "exact":
            return
        if self.probe == "gaussian":
            self._eps = torch.randn_like(h0)
        else:
            self._eps = torch.randint_like(h0, 0, 2) * 2 - 1

    def integrand(
        self, t: torch.Tensor, h: torch.Tensor, dh: torch.Tensor, create_graph: bool
    ) -> torch.Tensor:
        return self._sum(h, dh, create_graph) * self.factor(h[0].numel())

    def _sum(self, h: torch.Tensor, dh: torch.Tensor, create_graph: bool) -> torch.Tensor:
        if self.estimator == "exact":
            return self._exact(h, dh, create_graph)
        eps = self._eps
        if eps is None or eps.shape != h.shape:
            self.begin_solve(h)
            eps = self._eps
        (vjp,) = torch.autograd.grad(dh, h, eps, create_graph=create_graph, allow_unused=True)
        if vjp is None:
            return h.new_zeros(h.shape[0])
        return _per_sample_sum(vjp * vjp)

    @staticmethod
    def _exact(h: torch.Tensor, dh: torch.Tensor, create_graph: bool) -> torch.Tensor:
        flat = dh.reshape(dh.shape[0], -1)
        total = h.new_zeros(h.shape[0])
        for i in range(flat.shape[1]):
            (row,) = torch.autograd.grad(
                flat[:, i].sum(), h, create_graph=create_graph, retain_graph=True, allow_unused=True
            )
            if row is not None:
                total = total + _per_sample_sum(row * row)
        return total


def replicate(r: KineticEnergy | JacobianFrobenius) -> KineticEnergy | JacobianFrobenius:
    """A new regularizer of ``r``'s kind with its weight and scale: each block of a flow
    integrates a term of its own."""
    return type(r)(r.weight, scale=r.scale)


class RegularizedDynamics(nn.Module):
    """The dynamics ``func`` augmented with one accumulator per regularizer.

    The state is the tuple ``(h, r_1, ..., r_k)`` with ``r_i`` of shape ``(batch,)`` and
    ``dr_i/dt = integrand_i(t, h)``.
    """

    def __init__(self, func: nn.Module, regularizers: list[AbstractRegularizer]) -> None:
        super().__init__()
        self.func = func
        self.regularizers = nn.ModuleList(regularizers)
        self._jacobian = any(r.needs_jacobian for r in regularizers)

    @property
    def terms(self) -> Iterator[AbstractRegularizer]:
        """The regularizers, in order (``regularizers`` is their ``nn.ModuleList``)."""
        return cast("Iterator[AbstractRegularizer]", iter(self.regularizers))

    def begin_solve(self, h0: torch.Tensor) -> None:
        for r in self.terms:
            r.begin_solve(h0)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        h = state[0]
        outer_grad = torch.is_grad_enabled()
        if not self._jacobian:
            dh = self.func(t, h)
            return (dh, *(r.integrand(t, h, dh, outer_grad) for r in self.terms))
        with torch.enable_grad():
            if not h.requires_grad:
                h = h.detach().requires_grad_(True)
            dh = self.func(t, h)
            terms = [r.integrand(t, h, dh, outer_grad) for r in self.terms]
        if not outer_grad:
            return (dh.detach(), *(x.detach() for x in terms))
        return (dh, *terms)
