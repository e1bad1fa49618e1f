"""Models of irregularly sampled series: the ODE-RNN and the latent ODE (Rubanova et al.,
2019), the neural CDE (Kidger et al., 2020), and the recurrent baselines users compare them
with, GRU-Δt and GRU-D (Che et al., 2018). All take an :class:`IrregularSeries`.

The ODE-RNN and the latent ODE solve with per-sample times (``odeint`` with ``t`` of shape
``(batch, n)``): every series is integrated between its own observation times with its own step
sizes, so they use direct gradients. The neural CDE integrates over the observation index (a
time shared by the batch, with the real times as a channel, as torchcde does), so it takes
every gradient method.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from ..blocks import NeuralODEBlock
from ..dynamics import ODEFunc
from ..errors import InvalidArgumentError
from ..solvers import METHODS
from .data import IrregularSeries
from .interpolation import LinearInterpolation, NaturalCubicSpline

__all__ = [
    "GRUD",
    "ODERNN",
    "GRUDeltaT",
    "GRUDeltaTForecaster",
    "LatentODE",
    "NeuralCDE",
    "ODERNNClassifier",
    "check_per_sample_solver",
    "per_sample_methods",
]

PER_SAMPLE = {"batch_mode": "per_sample"}


def _masked_mse(pred: torch.Tensor, target: IrregularSeries) -> torch.Tensor:
    """The mean squared error over the observed values of ``target``."""
    m = target.mask * target.valid().unsqueeze(-1)
    return (((pred - target.values) ** 2) * m).sum() / m.sum().clamp(min=1)


def per_sample_methods() -> list[str]:
    """The methods that solve every series at its own times (the per-sample lane): the native
    engine's explicit adaptive ones."""
    return sorted(n for n, m in METHODS.items() if m.adaptive and not m.implicit)


def check_per_sample_solver(method: Any, backend: Any, gradient: Any) -> None:
    """The ODE-RNN and the latent ODE solve every series at its own times: say which solvers
    they can use, and why, where the given one cannot."""
    why = "this model solves every series at its own times (per-sample times), which needs"
    if gradient not in (None, "direct"):
        raise InvalidArgumentError(
            f"{why} direct gradients, not gradient={gradient!r}; use gradient='direct', or the "
            "neural CDE, which takes every gradient method"
        )
    if backend not in (None, "native"):
        raise InvalidArgumentError(
            f"{why} the native engine, not backend={backend!r} (torchdiffeq solves a batch at "
            "shared times); use backend='native', or the neural CDE, which runs on every backend"
        )
    if method is not None and method not in per_sample_methods():
        kind = METHODS.find(method) if isinstance(method, str) else None
        reason = (
            "an implicit method's Newton iteration couples the batch"
            if kind is not None and kind.implicit
            else "it has no error estimate to give each series its own steps"
        )
        raise InvalidArgumentError(
            f"{why} an explicit adaptive method: {', '.join(per_sample_methods())}; not "
            f"{method!r} ({reason}). Use method='dopri5', or the neural CDE, which takes every "
            "method"
        )


def _per_sample_block(func: nn.Module, solver: dict[str, Any]) -> NeuralODEBlock:
    solver = dict(solver)
    gradient = solver.pop("gradient", "direct")
    check_per_sample_solver(solver.get("method"), solver.get("backend"), gradient)
    options = {**solver.pop("options", {}), **PER_SAMPLE}
    return NeuralODEBlock(func, options=options, **solver)


def _solve(block: NeuralODEBlock, h: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The block's trajectory from ``h`` over ``times`` (every solve reports its evaluations to
    any open :func:`neuralode.record`, however many a forward pass makes)."""
    out, _ = block.integrate(h, times=times)
    return out


class ODERNN(nn.Module):
    """The ODE-RNN of Rubanova et al. (2019, Algorithm 1): between two observations the hidden
    state follows ``dh/dt = f(h)`` (an MLP), and at an observation a GRU cell updates it from
    ``[x ⊙ m, m]`` (values and mask of the observed channels). A point where no channel was
    observed leaves ``h`` unchanged.

    ``forward(series, reverse=False)`` returns ``(h_last, hs)``: the state after the last
    update and after every point, ``(batch, n, hidden)``. With ``reverse=True`` the series is
    read from its last observation back to its first (the latent ODE's encoder)."""

    def __init__(
        self, channels: int, hidden: int = 32, ode_hidden: int = 64, **solver: Any
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.func = ODEFunc(hidden, ode_hidden, depth=1, activation="tanh")
        self.block = _per_sample_block(self.func, solver)
        self.cell = nn.GRUCell(2 * channels, hidden)

    def forward(
        self, series: IrregularSeries, reverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        times, values, mask = series.times, series.values, series.mask
        batch, n = times.shape
        rows = torch.arange(batch, device=times.device)
        h = values.new_zeros(batch, self.hidden)
        observed = series.observed()
        order = range(n - 1, -1, -1) if reverse else range(n)
        t_prev = times[rows, series.lengths - 1] if reverse else times[:, 0]
        hs: list[torch.Tensor] = [h] * n  # (every entry is set below)
        for i in order:
            t_i = times[:, i]
            if bool((t_i != t_prev).any()):  # padding repeats a time: nothing to integrate
                h = _solve(self.block, h, torch.stack((t_prev, t_i), dim=1))[-1]
            update = self.cell(torch.cat((values[:, i] * mask[:, i], mask[:, i]), -1), h)
            h = torch.where(observed[:, i, None], update, h)
            hs[i] = h
            t_prev = t_i
        return h, torch.stack(hs, dim=1)


class ODERNNClassifier(nn.Module):
    """An :class:`ODERNN` read out by a linear layer after its last observation."""

    def __init__(self, channels: int, classes: int, hidden: int = 32, **solver: Any) -> None:
        super().__init__()
        self.rnn = ODERNN(channels, hidden, **solver)
        self.readout = nn.Linear(hidden, classes)

    def forward(self, series: IrregularSeries) -> torch.Tensor:
        h, _ = self.rnn(series)
        return self.readout(h)


class _LatentDynamics(nn.Module):
    """``dz/dt = f(z)``; with a Poisson process also ``dΛ/dt = λ(z)`` on an extra channel."""

    def __init__(self, latent: int, hidden: int, poisson: bool) -> None:
        super().__init__()
        self.latent, self.poisson = latent, poisson
        self.f = ODEFunc(latent, hidden, depth=2, activation="tanh")
        if poisson:  # (only then: data-parallel training refuses parameters a pass leaves unused)
            self.rate = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def intensity(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.rate(z)).squeeze(-1)

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        z = state[..., : self.latent]
        dz = self.f(t, z)
        if not self.poisson:
            return dz
        return torch.cat((dz, self.intensity(z).unsqueeze(-1)), -1)


class LatentODE(nn.Module):
    """The latent ODE of Chen et al. (2018) with the ODE-RNN encoder of Rubanova et al.
    (2019): an encoder read backwards in time gives ``q(z0 | x) = N(μ, σ²)``; ``z0`` at the
    series' first time follows ``dz/dt = f(z)`` to any times; a decoder maps ``z(t)`` to the
    mean of ``x(t)``, observed with Gaussian noise of standard deviation ``obs_std``.

    Args:
        channels: observed channels.
        latent: the size of ``z``.
        hidden: the size of the dynamics' and decoder's hidden layers.
        encoder: ``"odernn"`` (Rubanova) or ``"rnn"`` (Chen 2018: a GRU with time gaps).
        encoder_hidden: the encoder's state size.
        obs_std: the observation noise of the likelihood.
        poisson: also model the observation times as a Poisson process of intensity
            ``λ(z(t))`` (Rubanova §3.4), whose log-likelihood joins the objective.
        samples: the samples of ``z0`` per series in ``forward``: 1 gives the ELBO, more the
            IWAE bound.
        solver: the :class:`NeuralODEBlock` solver arguments (direct gradients).

    :meth:`loss` is the negative ELBO (``k = 1``) or IWAE bound (``k > 1`` samples) per
    observed value; :meth:`predict` decodes at given times from ``μ`` or from samples.
    """

    def __init__(
        self,
        channels: int,
        latent: int = 8,
        hidden: int = 32,
        encoder: str = "odernn",
        encoder_hidden: int = 32,
        obs_std: float = 0.1,
        poisson: bool = False,
        samples: int = 1,
        **solver: Any,
    ) -> None:
        super().__init__()
        self.samples = samples
        if encoder == "odernn":
            self.encoder: nn.Module = ODERNN(channels, encoder_hidden, **solver)
        elif encoder == "rnn":
            self.encoder = GRUDeltaT(channels, encoder_hidden)
        else:
            raise InvalidArgumentError(f"encoder must be 'odernn' or 'rnn', got {encoder!r}")
        if not obs_std > 0:
            raise InvalidArgumentError(f"obs_std must be positive, got {obs_std}")
        self.latent, self.obs_std, self.poisson = latent, obs_std, poisson
        self.to_posterior = nn.Linear(encoder_hidden, 2 * latent)
        self.func = _LatentDynamics(latent, hidden, poisson)
        self.block = _per_sample_block(self.func, solver)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, channels)
        )

    # -- pieces
    def posterior(self, series: IrregularSeries) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ)`` of ``q(z0 | series)``, each ``(batch, latent)``."""
        if isinstance(self.encoder, ODERNN):
            h, _ = self.encoder(series, reverse=True)
        else:
            h = cast(GRUDeltaT, self.encoder).encode(series, reverse=True)
        mu, raw = self.to_posterior(h).chunk(2, dim=-1)
        return mu, nn.functional.softplus(raw) + 1e-4

    def latent_path(
        self, z0: torch.Tensor, start: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``z`` at ``times`` ``(batch, m)`` from ``z0`` at ``start`` ``(batch,)``: shape
        ``(batch, m, latent)``, and with a Poisson process the integrated intensity from
        ``start`` to each time ``(batch, m)`` (else ``None``)."""
        state = z0
        if self.poisson:
            state = torch.cat((z0, z0.new_zeros(z0.shape[0], 1)), -1)
        # the start joins a series' times unless it is their first (a row has no repeats)
        ahead = (start < times[:, 0]).unsqueeze(1)
        row = torch.where(
            ahead, torch.cat((start.unsqueeze(1), times), 1), torch.cat((times, times[:, -1:]), 1)
        )
        out = _solve(self.block, state, row).transpose(0, 1)  # (batch, m + 1, state)
        index = torch.arange(times.shape[1], device=times.device) + ahead.long()
        path = out.gather(1, index.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        if self.poisson:
            return path[..., : self.latent], path[..., -1]
        return path, None

    @staticmethod
    def _start(inputs: IrregularSeries, times: torch.Tensor) -> torch.Tensor:
        return torch.minimum(inputs.times[:, 0], times[:, 0])

    def predict(
        self, inputs: IrregularSeries, times: torch.Tensor, samples: int = 0
    ) -> torch.Tensor:
        """The decoded mean at ``times`` ``(batch, m)`` given the observed ``inputs``: from
        ``z0 = μ`` (``samples = 0``, shape ``(batch, m, channels)``) or from ``samples``
        draws of ``q`` (shape ``(samples, batch, m, channels)``)."""
        mu, sigma = self.posterior(inputs)
        start = self._start(inputs, times)
        if samples == 0:
            return self.decoder(self.latent_path(mu, start, times)[0])
        z0 = mu + sigma * torch.randn(samples, *mu.shape, dtype=mu.dtype, device=mu.device)
        b = mu.shape[0]
        path, _ = self.latent_path(
            z0.reshape(samples * b, -1), start.repeat(samples), times.repeat(samples, 1)
        )
        return self.decoder(path).reshape(samples, b, *path.shape[1:-1], -1)

    def loss(
        self, inputs: IrregularSeries, target: IrregularSeries, k: int = 1
    ) -> dict[str, torch.Tensor]:
        """The negative ELBO (``k = 1``) or IWAE bound (``k`` importance samples) of
        ``target`` given ``inputs``, per observed value; with ``mse`` (of the decoded mean of
        the samples) and ``kl`` (per series) for reporting."""
        mu, sigma = self.posterior(inputs)
        b = mu.shape[0]
        start = self._start(inputs, target.times)
        eps = torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)
        z0 = mu + sigma * eps
        path, intensity_integral = self.latent_path(
            z0.reshape(k * b, -1), start.repeat(k), target.times.repeat(k, 1)
        )
        mean = self.decoder(path).reshape(k, b, *target.values.shape[1:])
        m = target.mask * target.valid().unsqueeze(-1)
        var = self.obs_std**2
        log_px = -0.5 * ((target.values - mean) ** 2 / var + math.log(2 * math.pi * var))
        log_px = (log_px * m).sum(dim=(2, 3))  # (k, batch)
        if self.poisson and intensity_integral is not None:
            z = path.reshape(k, b, *path.shape[1:])
            rate = self.func.intensity(z)  # (k, batch, m)
            seen = target.observed()
            last = (target.lengths - 1).repeat(k)
            total = intensity_integral.gather(1, last.unsqueeze(1)).reshape(k, b)
            log_px = log_px + (torch.log(rate) * seen).sum(-1) - total
        prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        q = torch.distributions.Normal(mu, sigma)
        kl = torch.distributions.kl_divergence(q, prior).sum(-1)  # (batch,)
        n_values = m.sum().clamp(min=1)
        if k == 1:
            bound = log_px[0] - kl
        else:  # log mean_k p(x|z_k) p(z_k) / q(z_k)
            log_w = log_px + prior.log_prob(z0).sum(-1) - q.log_prob(z0).sum(-1)
            bound = torch.logsumexp(log_w, 0) - math.log(k)
        mse = _masked_mse(mean.mean(0), target)
        return {"loss": -bound.sum() / n_values, "mse": mse, "kl": kl.mean()}

    def forward(
        self, inputs: IrregularSeries, target: IrregularSeries, k: int | None = None
    ) -> dict[str, torch.Tensor]:
        """:meth:`loss` with ``k`` samples (default: the model's ``samples``, 1 = ELBO)."""
        return self.loss(inputs, target, self.samples if k is None else k)


class GRUDeltaT(nn.Module):
    """A GRU whose input at each observation is ``[x ⊙ m, m, Δt]``: the values, the mask and
    the time since the previous observation (the usual RNN baseline for irregular series).

    ``forward(series)`` gives ``classes`` logits after the last observation; without
    ``classes`` it is an encoder (:meth:`encode`)."""

    def __init__(self, channels: int, hidden: int = 32, classes: int | None = None) -> None:
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.cell = nn.GRUCell(2 * channels + 1, hidden)
        self.readout = nn.Linear(hidden, classes) if classes else None

    def encode(self, series: IrregularSeries, reverse: bool = False) -> torch.Tensor:
        times, values, mask = series.times, series.values, series.mask
        batch, n = times.shape
        rows = torch.arange(batch, device=times.device)
        h = values.new_zeros(batch, self.hidden)
        observed = series.observed()
        t_prev = times[rows, series.lengths - 1] if reverse else times[:, 0]
        for i in range(n - 1, -1, -1) if reverse else range(n):
            gap = (times[:, i] - t_prev).abs().unsqueeze(-1)
            x = torch.cat((values[:, i] * mask[:, i], mask[:, i], gap), -1)
            h = torch.where(observed[:, i, None], self.cell(x, h), h)
            t_prev = torch.where(observed[:, i], times[:, i], t_prev)
        return h

    def forward(self, series: IrregularSeries) -> torch.Tensor:
        if self.readout is None:
            raise InvalidArgumentError("this GRU-Δt has no classifier head: give it classes")
        return self.readout(self.encode(series))


class GRUDeltaTForecaster(nn.Module):
    """The GRU-Δt baseline for interpolation and extrapolation, the recurrent twin of the latent
    ODE: a :class:`GRUDeltaT` reads the observed points, then a second GRU cell steps from the
    start through the target times with only the time gaps as input, ``[0, 0, Δt]``, and a
    linear layer reads the values out. Trained on the mean squared error.

    ``forward(inputs, target)`` returns ``{"loss", "mse"}``; :meth:`predict` the values."""

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = GRUDeltaT(channels, hidden)
        self.decoder = nn.GRUCell(1, hidden)
        self.to_values = nn.Linear(hidden, channels)

    def predict(self, inputs: IrregularSeries, times: torch.Tensor) -> torch.Tensor:
        h = self.encoder.encode(inputs)
        t_prev = torch.minimum(inputs.times[:, 0], times[:, 0])
        out = []
        for j in range(times.shape[1]):
            h = self.decoder((times[:, j] - t_prev).unsqueeze(-1), h)
            out.append(self.to_values(h))
            t_prev = times[:, j]
        return torch.stack(out, 1)

    def forward(self, inputs: IrregularSeries, target: IrregularSeries) -> dict[str, torch.Tensor]:
        mse = _masked_mse(self.predict(inputs, target.times), target)
        return {"loss": mse, "mse": mse}


class GRUD(nn.Module):
    """GRU-D (Che et al., 2018): a missing value decays from the channel's last observation
    towards its mean, ``x̂ = m x + (1 − m)(γ x_last + (1 − γ) x̄)`` with
    ``γ = exp(−max(0, w δ + b))`` per channel, and the hidden state decays by
    ``exp(−max(0, W δ + b))`` before each update; ``δ`` is the time since the channel was
    last observed. The GRU cell reads ``[x̂, m]``.

    ``means``: the channels' means over the training data (zero after standardising)."""

    def __init__(
        self, channels: int, hidden: int = 32, classes: int = 2, means: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_decay = nn.Parameter(torch.zeros(channels))
        self.input_decay_bias = nn.Parameter(torch.zeros(channels))
        self.hidden_decay = nn.Linear(channels, hidden)
        self.cell = nn.GRUCell(2 * channels, hidden)
        self.readout = nn.Linear(hidden, classes)
        self.register_buffer("means", torch.zeros(channels) if means is None else means.clone())

    def _steps(
        self, series: IrregularSeries
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(i, x̂_i, m_i, δ_i)`` for every point ``i``."""
        times, values = series.times, series.values
        mask = series.mask * series.valid().unsqueeze(-1)
        batch, n, c = values.shape
        means = cast(torch.Tensor, self.means).to(values.dtype)
        last = means.expand(batch, c)
        delta = values.new_zeros(batch, c)
        for i in range(n):
            if i > 0:
                gap = (times[:, i] - times[:, i - 1]).unsqueeze(-1)
                delta = gap + (1 - mask[:, i - 1]) * delta
            gamma_x = torch.exp(-torch.relu(self.input_decay * delta + self.input_decay_bias))
            m = mask[:, i]
            x_hat = m * values[:, i] + (1 - m) * (gamma_x * last + (1 - gamma_x) * means)
            yield i, x_hat, m, delta
            last = torch.where(m > 0, values[:, i], last)

    def imputed(self, series: IrregularSeries) -> torch.Tensor:
        """The decayed inputs ``x̂``, ``(batch, n, channels)``."""
        return torch.stack([x_hat for _, x_hat, _, _ in self._steps(series)], 1)

    def forward(self, series: IrregularSeries) -> torch.Tensor:
        h = series.values.new_zeros(len(series), self.hidden)
        observed = series.observed()
        for i, x_hat, m, delta in self._steps(series):
            h_dec = torch.exp(-torch.relu(self.hidden_decay(delta))) * h
            h = torch.where(observed[:, i, None], self.cell(torch.cat((x_hat, m), -1), h_dec), h)
        return self.readout(h)


class _ControlledField(nn.Module):
    """``dz/ds = g(z) dX/ds`` for the path ``X`` set before each solve; ``g`` maps the hidden
    state to a ``(hidden, path channels)`` matrix (an MLP ending in tanh, as Kidger et al.)."""

    def __init__(self, hidden: int, path_channels: int, width: int) -> None:
        super().__init__()
        self.hidden, self.path_channels = hidden, path_channels
        self.g = nn.Sequential(
            nn.Linear(hidden, width), nn.Softplus(), nn.Linear(width, hidden * path_channels),
            nn.Tanh(),
        )  # fmt: skip
        self.path: Any = None

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g = self.g(z).view(z.shape[0], self.hidden, self.path_channels)
        return (g @ self.path.derivative(s).unsqueeze(-1)).squeeze(-1)


OBSERVED_CHANNELS = ("counts", "none", "fraction")
"""The choices of :class:`NeuralCDE`'s ``observed`` channels."""


class NeuralCDE(nn.Module):
    """The neural CDE of Kidger et al. (2020): ``z(s) = z0 + ∫ g(z) dX``, with ``X`` an
    interpolation of the observations and ``z0`` a linear map of ``X`` at the start; a linear
    readout of ``z`` at each series' end classifies it.

    The path's channels are the time since the series' start, the values (an unobserved value
    is the channel's last observation) and, by ``observed``, channels of where values were
    observed:

    * ``"counts"`` — each channel's cumulative count of observations (Kidger et al.'s
      observational intensity for missing values);
    * ``"none"`` — no such channels: where whole points are missing (every channel of a point
      observed or none, as when points are dropped) the counts equal the index and carry
      nothing, and they only add parameters to ``z0`` and the field;
    * ``"fraction"`` — each channel's count divided by the points so far (this model's layout
      before ``observed`` existed, kept for its runs).

    The path's parameter is the observation index ``0 … n − 1`` (as torchcde's default), so
    every series ends at its own length and its state stays unchanged afterwards; the ends of
    a batch's series, where the path's derivative drops to zero, are given to adaptive solvers
    as ``jump_t`` (stepping over them cost about twice the evaluations).

    ``interpolation``: ``"cubic"`` (the natural cubic spline, the paper's) or ``"linear"``
    (its knots are then ``jump_t`` too)."""

    def __init__(
        self,
        channels: int,
        classes: int,
        hidden: int = 32,
        width: int = 64,
        interpolation: str = "cubic",
        observed: str = "counts",
        **solver: Any,
    ) -> None:
        super().__init__()
        paths: dict[str, type[NaturalCubicSpline] | type[LinearInterpolation]] = {
            "cubic": NaturalCubicSpline,
            "linear": LinearInterpolation,
        }
        if interpolation not in paths:
            raise InvalidArgumentError(
                f"interpolation must be 'cubic' or 'linear', got {interpolation!r}"
            )
        if observed not in OBSERVED_CHANNELS:
            raise InvalidArgumentError(
                f"observed must be one of {', '.join(map(repr, OBSERVED_CHANNELS))}, got "
                f"{observed!r}"
            )
        self.path_class = paths[interpolation]
        self.interpolation = interpolation
        self.observed = observed
        path_channels = 1 + (channels if observed == "none" else 2 * channels)
        self.initial = nn.Linear(path_channels, hidden)
        self.field = _ControlledField(hidden, path_channels, width)
        self.block = NeuralODEBlock(self.field, **solver)
        self._options = dict(self.block.options)
        self.readout = nn.Linear(hidden, classes)

    def path(self, series: IrregularSeries) -> NaturalCubicSpline | LinearInterpolation:
        """The interpolated path of ``series`` over the observation index."""
        n = series.times.shape[1]
        index = torch.arange(n, dtype=series.values.dtype, device=series.values.device)
        elapsed = series.times - series.times[:, :1]
        channels = [elapsed.unsqueeze(-1), series.filled()]
        if self.observed != "none":
            counts = (series.mask * series.valid().unsqueeze(-1)).cumsum(dim=1)
            if self.observed == "fraction":  # the fraction of points observed so far
                counts = counts / (index + 1).view(1, n, 1)
            channels.append(counts)
        return self.path_class(index, torch.cat(channels, -1), series.lengths.clamp(min=2))

    def forward(self, series: IrregularSeries) -> torch.Tensor:
        if series.times.shape[1] < 2:
            raise InvalidArgumentError("a neural CDE needs series of at least 2 points")
        path = self.path(series)
        self.field.path = path
        n = series.times.shape[1]
        times = torch.tensor([0.0, n - 1.0], dtype=series.values.dtype)
        if self.block.method not in ("rk4", "euler", "midpoint"):  # adaptive: kinks as jump_t
            if self.interpolation == "linear":
                kinks = torch.arange(1.0, n - 1.0)
            else:  # the series' ends
                kinks = torch.unique(series.lengths.clamp(min=2).cpu() - 1.0)
                kinks = kinks[(kinks > 0) & (kinks < n - 1)]
            self.block.options = {**self._options, "jump_t": kinks} if len(kinks) else self._options
        z0 = self.initial(path.evaluate(0.0))
        # (the path stays set: the adjoint and checkpointed gradients evaluate the field again
        # during backward, which must follow this forward pass before the next one)
        z = _solve(self.block, z0, times.to(z0.device))[-1]
        return self.readout(z)
