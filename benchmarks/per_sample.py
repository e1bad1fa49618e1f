"""Per-sample vs joint step-size control on a mixed-stiffness batch (native engine).

Van der Pol oscillators with μ spread across the batch: in joint mode one step size (set by the
hardest sample) is used for all; in per-sample mode every sample has its own. Prints the steps
taken by the batch against the steps of the hardest sample solved alone, and the total NFE.

    python benchmarks/per_sample.py
"""

from __future__ import annotations

import torch
from torch import nn

import neuralode


class VanDerPol(nn.Module):
    def __init__(self, mu: torch.Tensor) -> None:
        super().__init__()
        self.mu = mu

    def forward(self, t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], dim=1)


def solve(mu: torch.Tensor, mode: str) -> neuralode.SolveStats:
    stats = neuralode.SolveStats()
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64).expand(len(mu), 2).clone()
    t = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)
    with torch.no_grad():
        neuralode.odeint(
            VanDerPol(mu),
            y0,
            t,
            rtol=1e-6,
            atol=1e-8,
            backend="native",
            options={"batch_mode": mode},
            stats=stats,
        )
    return stats


def main() -> None:
    mu = torch.tensor([0.1, 0.3, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0], dtype=torch.float64)
    alone = [solve(mu[i : i + 1], "joint") for i in range(len(mu))]
    steps_alone = [s.steps_accepted + s.steps_rejected for s in alone]
    hardest = max(steps_alone)
    print(f"Van der Pol, μ = {mu.tolist()}, t ∈ [0, 10], dopri5, rtol 1e-6, atol 1e-8")
    print("steps of each sample alone:", steps_alone)
    print(
        f"{'mode':<11} {'batch steps':>11} {'× hardest alone':>16} {'total NFE':>10} "
        f"{'NFE per sample':>15}"
    )
    for mode in ("joint", "per_sample"):
        s = solve(mu, mode)
        steps = s.steps_accepted + s.steps_rejected
        total = sum(s.nfe_per_sample) if s.nfe_per_sample else s.nfe_forward * len(mu)
        print(
            f"{mode:<11} {steps:>11} {steps / hardest:>16.2f} {total:>10} {total / len(mu):>15.1f}"
        )


if __name__ == "__main__":
    main()
