"""A zoo of ODE problems with exact solutions, shared by the tests."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn


@dataclasses.dataclass
class Problem:
    name: str
    func: nn.Module
    y0: torch.Tensor
    exact: Callable[[torch.Tensor, float], torch.Tensor]  # (times, t0) -> y(times)


class Linear(nn.Module):
    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, y):
        return y @ self.A.T


def linear_system() -> Problem:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5 - 0.3 * torch.eye(
        3, dtype=torch.float64
    )
    y0 = torch.randn(2, 3, generator=g, dtype=torch.float64)

    def exact(ts, t0):
        return torch.stack([y0 @ torch.linalg.matrix_exp(A * (s - t0)).T for s in ts])

    return Problem("linear", Linear(A.clone()), y0, exact)


class Decay(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, t, y):
        return -self.k * y


def exponential_decay() -> Problem:
    k = 1.3
    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return Problem(
        "decay",
        Decay(k),
        y0,
        lambda ts, t0: torch.stack([y0 * math.exp(-k * (s - t0)) for s in ts]),
    )


class Oscillator(nn.Module):
    def __init__(self, omega: float) -> None:
        super().__init__()
        self.omega = omega

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, -(self.omega**2) * x], dim=-1)


def harmonic_oscillator() -> Problem:
    w = 2.0
    y0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)

    def exact(ts, t0):
        out = []
        for s in ts:
            tau = float(s) - t0
            c, sn = math.cos(w * tau), math.sin(w * tau)
            x = y0[:, 0] * c + y0[:, 1] / w * sn
            v = -y0[:, 0] * w * sn + y0[:, 1] * c
            out.append(torch.stack([x, v], dim=-1))
        return torch.stack(out)

    return Problem("oscillator", Oscillator(w), y0, exact)


PROBLEMS = {p.__name__: p for p in (linear_system, exponential_decay, harmonic_oscillator)}
