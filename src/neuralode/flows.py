"""Continuous normalizing flows (Chen et al., 2018; FFJORD, Grathwohl et al., 2019), trained
fast with RNODE's regularizers (Finlay et al., 2020) and STEER's random end time (Ghosh et
al., 2020).

A flow layer maps data ``x`` to ``z`` and returns ``log|det ∂z/∂x|`` per sample, so that
``log p(x) = log p_base(z) + logdet``; its ``inverse`` maps ``z`` back. The continuous layer,
:class:`CNF`, integrates ``dx/dt = f(t, x)`` from ``0`` to ``T`` together with

    d logdet / dt = tr(∂f/∂x)      (the instantaneous change of variables)

(the log-density of a point carried by the flow changes by ``-∫ tr(∂f/∂x) dt``). The trace is
exact (one vector-Jacobian product per dimension: low dimensions) or Hutchinson's estimate
``εᵀ(∂f/∂x)ε`` with the noise ``ε`` drawn once per solve, as FFJORD does. The RNODE terms
``∫‖f‖²`` and ``∫‖∂f/∂x‖²_F`` are integrated in the same solve; the Frobenius estimate
``‖εᵀ ∂f/∂x‖²`` reuses the trace estimator's noise and vector-Jacobian product, so it costs
nothing more.

Layers: :class:`CNF`, :class:`SequentialFlow` (a stack), :class:`LogitTransform`,
:class:`Squeeze`; models with a standard normal base: :class:`FlowDensity` (any stack) and
:class:`MultiscaleCNF` (squeeze and factor-out for images, after FFJORD's multiscale
architecture).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from .blocks import NeuralODEBlock
from .dynamics import ConcatConv2d, get_activation
from .errors import InvalidArgumentError, InvalidTypeError
from .regularizers import AbstractRegularizer, JacobianFrobenius, KineticEnergy, replicate
from .solvers import get_backend, publish_regularization

__all__ = [
    "CNF",
    "ConcatConvNet",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "FlowDensity",
    "FourierTimeMLP",
    "LogitTransform",
    "MultiscaleCNF",
    "SequentialFlow",
    "Squeeze",
    "standard_normal_log_prob",
]

DIVERGENCES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per sample (all dimensions after the first summed)."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat * flat).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


# ------------------------------------------------------------------------------ dynamics


class ConcatSquashLinear(nn.Module):
    """FFJORD's concat-squash layer: ``(W x + b) ⊙ σ(g t + c) + e t`` — a linear map of the
    state gated and shifted by the time (``hyper_gate``: ``Linear(1, out)``, ``hyper_bias``:
    ``Linear(1, out, bias=False)``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(1, 1)
        out: torch.Tensor = self.layer(x) * torch.sigmoid(self.hyper_gate(tt)) + self.hyper_bias(tt)
        return out


class _TimeLayers(nn.Module):
    """Layers ``layer(t, x)`` with an activation after each but the last."""

    layers: nn.ModuleList
    acts: nn.ModuleList

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(t, x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return x


class ConcatSquashMLP(_TimeLayers):
    """Time-dependent dynamics for vectors: concat-squash layers with an activation between
    them, as in FFJORD's toy models (``hidden=(64, 64, 64)``, tanh)."""

    def __init__(
        self, dim: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh"
    ) -> None:
        super().__init__()
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in itertools.pairwise(sizes))
        self.acts = nn.ModuleList(get_activation(activation) for _ in hidden)


class FourierTimeMLP(nn.Module):
    """Time-dependent dynamics for vectors: an MLP on the state beside Fourier features of the
    time, ``cos(kπ t / period)`` and ``sin(kπ t / period)`` for ``k = 1 … frequencies`` — the
    time embedding of zuko's CNF (``zuko.flows.CNF``, there with ``period=1``) — with ELU
    between the layers, as zuko's. Our default for the density task's 2-D data: at equal CPU
    time it learns them far faster than FFJORD's concat-squash MLP (``benchmarks/
    density_zuko.py``), which gates every layer by one function of the time only.

    Args:
        dim: the state's size.
        hidden: the hidden layers' widths.
        activation: between the layers (a name of :data:`neuralode.ACTIVATIONS`).
        frequencies: the number of frequencies ``k``.
        period: the time over which the lowest frequency makes half a turn (the flow's ``T``).
    """

    freqs: torch.Tensor

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "elu",
        frequencies: int = 3,
        period: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(frequencies, bool) or not isinstance(frequencies, int) or frequencies < 1:
            raise InvalidArgumentError(
                f"frequencies must be a positive integer, got {frequencies!r}",
                argument="frequencies",
            )
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0:
            raise InvalidArgumentError(
                f"period must be a positive number (the flow's T), got {period!r}",
                argument="period",
            )
        sizes = [dim + 2 * frequencies, *hidden, dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(hidden):
                layers.append(get_activation(activation))
        self.net = nn.Sequential(*layers)
        self.register_buffer(
            "freqs",
            torch.arange(1, frequencies + 1, dtype=torch.get_default_dtype()) * (math.pi / period),
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        angle = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1) * self.freqs.to(
            x.dtype
        )
        features = torch.cat((angle.cos(), angle.sin()), dim=-1)
        if x.ndim == 1:  # one unbatched state
            features = features.reshape(-1)
        features = features.expand(*x.shape[:-1], features.shape[-1])
        out: torch.Tensor = self.net(torch.cat((features, x), dim=-1))
        return out


class ConcatConvNet(_TimeLayers):
    """Time-dependent dynamics for images: 3×3 convolutions with the time as an extra input
    channel (FFJORD's ``concat`` layers) and softplus between them, as in FFJORD's image
    models (``hidden=(64, 64, 64)``)."""

    def __init__(
        self, channels: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "softplus"
    ) -> None:
        super().__init__()
        sizes = [channels, *hidden, channels]
        self.layers = nn.ModuleList(ConcatConv2d(a, b) for a, b in itertools.pairwise(sizes))
        self.acts = nn.ModuleList(get_activation(activation) for _ in hidden)


# ------------------------------------------------------------------------------ the flow


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def _flow_norm(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The error norm of a regularized flow: the largest RMS of ``x`` and ``logdet`` (as
    torchdiffeq's mixed norm), leaving out the regularizers' integrals, which are training
    signals rather than outputs and should not make the solver take more steps."""
    return torch.max(state[0].pow(2).mean().sqrt(), state[1].pow(2).mean().sqrt())


class _FlowDynamics(nn.Module):
    """``f`` and what is integrated beside it: the state is ``(x, logdet, *regularizers)``."""

    kinetic: KineticEnergy | None
    frobenius: JacobianFrobenius | None

    def __init__(
        self,
        func: nn.Module,
        divergence: str,
        kinetic: KineticEnergy | None,
        frobenius: JacobianFrobenius | None,
    ) -> None:
        super().__init__()
        self.func = func
        self.divergence = divergence
        # (plain attributes: the regularizers are the CNF's modules, not these dynamics')
        object.__setattr__(self, "kinetic", kinetic)
        object.__setattr__(self, "frobenius", frobenius)
        self.noise: torch.Tensor | None = None
        self.with_logdet = True

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...] | torch.Tensor) -> Any:
        if isinstance(state, torch.Tensor):  # the vector field alone (a probe of the flow)
            return self.func(t, state)
        x = state[0]
        if not self.with_logdet:
            return (self.func(t, x),)
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            dx = self.func(t, x)
            if self.divergence == "exact":
                div, frob = self._exact(x, dx, outer_grad)
            else:
                noise = self.noise
                if noise is None:
                    raise RuntimeError("Hutchinson's estimator needs the CNF to draw its noise")
                (vjp,) = torch.autograd.grad(dx, x, noise, create_graph=outer_grad)
                div = _sum(vjp * noise)
                frob = _sum(vjp * vjp) if self.frobenius is not None else None
        out = [dx, div]
        numel = x[0].numel()
        if self.kinetic is not None:
            out.append(_sum(dx * dx) * self.kinetic.factor(numel))
        if self.frobenius is not None and frob is not None:
            out.append(frob * self.frobenius.factor(numel))
        if not outer_grad:
            return tuple(o.detach() for o in out)
        return tuple(out)

    def _exact(
        self, x: torch.Tensor, dx: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        flat = dx.reshape(dx.shape[0], -1)
        div = x.new_zeros(x.shape[0])
        frob = x.new_zeros(x.shape[0]) if self.frobenius is not None else None
        for i in range(flat.shape[1]):
            (row,) = torch.autograd.grad(
                flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True
            )
            row = row.reshape(row.shape[0], -1)
            div = div + row[:, i]
            if frob is not None:
                frob = frob + (row * row).sum(1)
        return div, frob


class CNF(nn.Module):
    """A continuous normalizing flow layer: ``x ↦ (z, logdet)`` with ``z = x(T)`` under
    ``dx/dt = func(t, x)`` and ``logdet = log|det ∂z/∂x| = ∫₀ᵀ tr(∂func/∂x) dt``;
    ``inverse(z)`` integrates back from ``T`` to ``0``.

    A CNF composes a :class:`~neuralode.NeuralODEBlock` (``ode_block``) that solves the state
    ``(x, logdet, *regularizers)``; the block's solver settings are the CNF's
    (``cnf.rtol``, ``cnf.method``, ``cnf.stats``, ... read and set the block's).

    Args:
        func: the dynamics ``forward(t, x)``; samples must be independent under it (no batch
            statistics), since the trace is taken per sample.
        T: the integration time.
        divergence: ``"exact"`` (one vector-Jacobian product per dimension) or
            ``"hutchinson"`` (one product per evaluation; an unbiased estimate).
        eval_divergence: the divergence in evaluation mode (default: ``divergence``);
            ``"exact"`` makes a low-dimensional model's test log-likelihood exact while it
            trains on the cheaper estimate.
        noise: the Hutchinson noise, ``"rademacher"`` or ``"gaussian"``, drawn once per solve.
        regularizers: :class:`~neuralode.KineticEnergy` and/or
            :class:`~neuralode.JacobianFrobenius` (RNODE), integrated in the same solve; the
            Frobenius norm uses the divergence's noise and product (with ``"exact"``, the exact
            norm from the same rows). Their weighted sum is ``last_regularization`` after each
            forward pass (and goes to any open :func:`neuralode.record`, from which the training
            loop adds it to the loss). Their integrals do not control the step size (the error
            norm is that of ``x`` and ``logdet``), unless ``options`` names a ``norm``.
        steer: STEER — in training mode the end time is drawn uniformly from
            ``[T - steer, T + steer]`` for each solve (``0 <= steer < T``).
        **block_kwargs: ``method``, ``rtol``, ``atol``, ``eval_rtol``, ``eval_atol``,
            ``gradient``, ``options``, ``adjoint_options``, ``backend``, as for
            :class:`~neuralode.NeuralODEBlock`; every gradient method and backend works.

    After a forward pass ``stats`` holds the solve's counters.
    """

    ode_block: NeuralODEBlock

    def __init__(
        self,
        func: nn.Module,
        T: float = 1.0,
        *,
        divergence: str = "exact",
        eval_divergence: str | None = None,
        noise: str = "rademacher",
        regularizers: Iterable[AbstractRegularizer] = (),
        steer: float = 0.0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        for name in ("output_times", "augment_dim", "t0"):
            if name in block_kwargs:
                raise InvalidArgumentError(f"a CNF takes no {name}; it integrates over [0, T]")
        if (
            isinstance(T, bool)
            or not isinstance(T, (int, float))
            or not (math.isfinite(T) and T > 0)
        ):
            raise InvalidArgumentError(
                f"T must be a positive, finite integration time, got {T!r}; a flow maps x to "
                "z = x(T) with T > 0 (e.g. T=1.0)"
            )
        if eval_divergence is None:
            eval_divergence = divergence
        for name, value in (("divergence", divergence), ("eval_divergence", eval_divergence)):
            if value not in DIVERGENCES:
                raise InvalidArgumentError(
                    f"{name} must be one of {', '.join(DIVERGENCES)}, got {value!r}"
                )
        if noise not in NOISES:
            raise InvalidArgumentError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
        if not isinstance(steer, (int, float)) or isinstance(steer, bool) or not 0 <= steer < T:
            raise InvalidArgumentError(
                f"steer must be a number in [0, T) = [0, {T}), got {steer!r}; it is the "
                "half-width of the interval the end time is drawn from"
            )
        regs = list(regularizers)
        for r in regs:
            if not isinstance(r, (KineticEnergy, JacobianFrobenius)):
                raise InvalidTypeError(
                    "a CNF integrates KineticEnergy and JacobianFrobenius regularizers, got "
                    f"{type(r).__name__}"
                )
        kinds = [type(r) for r in regs]
        if len(set(kinds)) != len(kinds):
            raise InvalidArgumentError("each regularizer may be given once")
        if not isinstance(func, nn.Module):
            raise InvalidTypeError(
                f"func must be an nn.Module with forward(t, x), got {type(func).__name__}"
            )
        self.func = func
        # the integration interval (a buffer, as in the checkpoints of every earlier version)
        self.register_buffer("integration_times", torch.tensor([0.0, float(T)]))
        self.T = float(T)
        self.divergence = divergence
        self.eval_divergence = eval_divergence
        self.noise = noise
        self.steer = float(steer)
        self.flow_regularizers = nn.ModuleList(
            sorted(regs, key=lambda r: isinstance(r, JacobianFrobenius))
        )
        kinetic = next((r for r in regs if isinstance(r, KineticEnergy)), None)
        frobenius = next((r for r in regs if isinstance(r, JacobianFrobenius)), None)
        flow = _FlowDynamics(func, divergence, kinetic, frobenius)
        # composed, not registered: its only parameters are func's, which are the CNF's
        object.__setattr__(self, "ode_block", NeuralODEBlock(flow, t1=float(T), **block_kwargs))
        self.has_regularizers = bool(regs)
        self.last_regularization: torch.Tensor | None = None
        self.last_regularization_terms: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> CNF:
        super().train(mode)
        self.ode_block.train(mode)  # its tolerances follow the mode
        return self

    @property
    def dynamics(self) -> _FlowDynamics:
        """What is integrated: ``func`` with the log-determinant and the regularizers."""
        return cast(_FlowDynamics, self.ode_block.func)

    def _draw_noise(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.dynamics.divergence == "exact":
            return None
        if self.noise == "gaussian":
            return torch.randn_like(x)
        return torch.randint_like(x, 0, 2).mul_(2).sub_(1)

    def _end_time(self) -> float:
        if self.training and self.steer > 0:
            return self.T + self.steer * (2 * float(torch.rand(())) - 1)
        return self.T

    def _solve(self, y0: tuple[torch.Tensor, ...], times: torch.Tensor) -> tuple[torch.Tensor, ...]:
        block = self.ode_block
        options = None
        if (
            len(y0) > 2
            and "norm" not in block.options
            and get_backend(block.backend).is_adaptive(block.method)
        ):
            options = {"norm": _flow_norm}
        solution: tuple[torch.Tensor, ...] = block.solve(y0, times, options)
        return solution

    def integrate(
        self, h: torch.Tensor, times: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logdet)`` from ``x = h`` (``times``: override ``[0, T]``, e.g. for the
        snapshots of a flow; the outputs are then trajectories)."""
        whole = times is not None
        if times is None:
            times = torch.tensor([0.0, self._end_time()])
        times = times.to(dtype=h.dtype, device=h.device)
        flow = self.dynamics
        flow.divergence = self.divergence if self.training else self.eval_divergence
        flow.noise = self._draw_noise(h)
        flow.with_logdet = True
        n_reg = len(self.flow_regularizers)
        y0 = (h, h.new_zeros(h.shape[0]), *(h.new_zeros(h.shape[0]) for _ in range(n_reg)))
        sol = self._solve(y0, times)
        traj, logdet, *accumulated = sol
        regularizers = cast("list[AbstractRegularizer]", list(self.flow_regularizers))
        terms = {r.name: r.weight * acc[-1].mean() for r, acc in zip(regularizers, accumulated)}
        publish_regularization(terms)
        self.last_regularization_terms = terms
        self.last_regularization = torch.stack(list(terms.values())).sum() if terms else None
        return (traj, logdet) if whole else (traj[-1], logdet[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.integrate(x)

    def inverse(self, z: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` from ``z``: the flow integrated from ``T`` back to ``0`` (without the
        log-determinant, so one evaluation of ``func`` per stage). ``times``: output times
        from ``T`` down to ``0`` for the whole path."""
        whole = times is not None
        if times is None:
            times = torch.tensor([self.T, 0.0])
        times = times.to(dtype=z.dtype, device=z.device)
        self.dynamics.with_logdet = False
        try:
            (x,) = self._solve((z,), times)
        finally:
            self.dynamics.with_logdet = True
        self.last_regularization, self.last_regularization_terms = None, {}
        return x if whole else x[-1]

    @property
    def tolerances(self) -> tuple[float, float]:
        """``(rtol, atol)`` in force for the current mode."""
        return self.ode_block.tolerances

    def extra_repr(self) -> str:
        return (
            f"T={self.T}, divergence={self.divergence!r}, "
            f"eval_divergence={self.eval_divergence!r}, noise={self.noise!r}, "
            f"steer={self.steer}, " + self.ode_block.extra_repr().split(", t=")[0]
        )


def _block_setting(name: str) -> property:
    def get(self: CNF) -> Any:
        return getattr(self.ode_block, name)

    def set_(self: CNF, value: Any) -> None:
        setattr(self.ode_block, name, value)

    return property(get, set_, doc=f"The composed block's ``{name}``.")


for _name in ("method", "rtol", "atol", "eval_rtol", "eval_atol", "gradient", "adjoint",
              "options", "adjoint_options", "backend", "stats"):  # fmt: skip
    setattr(CNF, _name, _block_setting(_name))


# ------------------------------------------------------------------------------ other layers


class SequentialFlow(nn.Module):
    """Flow layers applied in order: ``forward(x) -> (z, logdet)`` sums their log-determinants;
    ``inverse(z)`` applies their inverses in reverse order."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for layer in self.layers:
            if not callable(getattr(layer, "inverse", None)):
                raise InvalidTypeError(
                    f"flow layers need forward(x) -> (z, logdet) and inverse(z); "
                    f"{type(layer).__name__} has no inverse"
                )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = cast(Any, layer).inverse(z)  # (checked on construction: every layer has one)
        return z


class LogitTransform(nn.Module):
    """``x ∈ (0, 1) ↦ logit(α + (1 - 2α) x)`` (RealNVP's and FFJORD's pre-processing of
    images, α = 1e-6), with its log-determinant."""

    def __init__(self, alpha: float = 1e-6) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise InvalidArgumentError(f"alpha must be in [0, 0.5), got {alpha!r}")
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        logdet = _sum(math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s))
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


class Squeeze(nn.Module):
    """``(C, H, W) -> (4C, H/2, W/2)``: each 2×2 patch becomes four channels (volume
    preserving: log-determinant 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise InvalidArgumentError(f"Squeeze needs an even height and width, got {h}×{w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b, c4, h, w = y.shape
        c = c4 // 4
        x = y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, 2 * h, 2 * w)


# ------------------------------------------------------------------------------ models


class FlowDensity(nn.Module):
    """A density model: flow layers onto a standard normal base.

    ``log_prob(x) = log N(z; 0, I) + logdet`` with ``(z, logdet) = flow(x)``;
    ``sample(n)`` maps base draws through ``flow.inverse``; ``forward(x)`` is ``log_prob``.
    """

    def __init__(self, flow: nn.Module, shape: Sequence[int]) -> None:
        super().__init__()
        self.flow = flow if isinstance(flow, SequentialFlow) else SequentialFlow([flow])
        self.shape = tuple(shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.flow(x)
        log_prob: torch.Tensor = standard_normal_log_prob(z) + logdet
        return log_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        z = torch.randn((n, *self.shape), generator=generator).to(p.device, p.dtype)
        return self.inverse(z)


class MultiscaleCNF(nn.Module):
    """An image flow after FFJORD's multiscale architecture: a logit transform, then per scale
    ``blocks`` CNFs on the current tensor; between scales a squeeze (``C, H, W → 4C, H/2,
    W/2``) after which half the channels are factored out to the base. For MNIST
    (``scales=3``): 1×28×28 → 2×14×14 → 4×7×7, with 2×14×14 and 4×7×7 factored out.

    Ours, not FFJORD's exact network: FFJORD squeezes inside each scale and its dynamics have
    more layers; the structure — continuous flows per scale, squeeze, factor-out — is the same.
    ``cnf_kwargs`` go to every :class:`CNF` (solver, divergence, regularizers, steer).
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        scales: int = 3,
        blocks: int = 2,
        hidden: Sequence[int] = (64, 64, 64),
        alpha: float = 1e-6,
        T: float = 1.0,
        **cnf_kwargs: Any,
    ) -> None:
        super().__init__()
        c, h, w = shape
        if h % 2 ** (scales - 1) or w % 2 ** (scales - 1):
            raise InvalidArgumentError(
                f"{scales} scales need height and width divisible by {2 ** (scales - 1)}, "
                f"got {h}×{w}"
            )
        self.shape = tuple(shape)
        self.logit = LogitTransform(alpha)
        self.squeeze = Squeeze()
        self.scales = nn.ModuleList()
        self.factored: list[tuple[int, int, int]] = []
        regs = tuple(cnf_kwargs.pop("regularizers", ()))
        for s in range(scales):
            self.scales.append(
                nn.ModuleList(
                    CNF(
                        ConcatConvNet(c, hidden),
                        T,
                        regularizers=[replicate(r) for r in regs],
                        **cnf_kwargs,
                    )
                    for _ in range(blocks)
                )
            )
            if s < scales - 1:
                c, h, w = 4 * c, h // 2, w // 2
                self.factored.append((c // 2, h, w))
                c = c // 2
        self.factored.append((c, h, w))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        h, logdet = self.logit(x)
        out = []
        for s, blocks in enumerate(self.scales):
            for cnf in cast(nn.ModuleList, blocks):
                h, ld = cnf(h)
                logdet = logdet + ld
            if s < len(self.scales) - 1:
                h, _ = self.squeeze(h)
                half = h.shape[1] // 2
                out.append(h[:, :half])
                h = h[:, half:]
        out.append(h)
        z = torch.cat([o.reshape(o.shape[0], -1) for o in out], 1)
        log_prob: torch.Tensor = standard_normal_log_prob(z) + logdet
        return log_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Images from base draws ``z`` of shape ``(n, D)``."""
        parts, start = [], 0
        for c, h, w in self.factored:
            size = c * h * w
            parts.append(z[:, start : start + size].reshape(-1, c, h, w))
            start += size
        x = parts[-1]
        for s in range(len(self.scales) - 1, -1, -1):
            if s < len(self.scales) - 1:
                x = self.squeeze.inverse(torch.cat([parts[s], x], 1))
            for cnf in reversed(cast(nn.ModuleList, self.scales[s])):
                x = cast(CNF, cnf).inverse(x)
        return self.logit.inverse(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        dim = math.prod(self.shape)
        return self.inverse(torch.randn((n, dim), generator=generator).to(p.device, p.dtype))
