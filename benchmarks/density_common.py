"""What the density benchmarks share: the task's own models, a training step, the exact test
NLL, and a table printer."""

from __future__ import annotations

import math

import torch
from torch import nn

from neuralode import regularization_loss, solve_stats
from neuralode.tasks import get_task, make_options
from neuralode.toy_densities import get_toy

TEST_SEED = 2_000_003  # the density task's test set


def build(dataset: str, **options) -> tuple[nn.Module, object]:
    """The model ``neuralode train density --dataset DATASET ...`` trains, and its task."""
    opts = make_options("density", dataset=dataset, **options)
    task = get_task("density")(opts)
    return task.build_model(), task


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> dict[str, float]:
    """One step of maximum likelihood (+ the model's regularization); the loss and NFE."""
    model.train()
    nll = -model(x).mean()
    reg = regularization_loss(model)
    total = nll if reg is None else nll + reg
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    stats = solve_stats(model)
    return {"nll": float(nll), "nfe_forward": stats.nfe_forward, "nfe_backward": stats.nfe_backward}


@torch.no_grad()
def test_nll(model: nn.Module, dataset: str, n: int = 20_000, batch: int = 5000) -> float:
    """The exact test NLL (nats) in evaluation mode on ``n`` fresh samples."""
    model.eval()
    x = get_toy(dataset).sample(n, torch.Generator().manual_seed(TEST_SEED))
    total = sum(float(-model(xb).sum()) for xb in x.split(batch))
    model.train()
    return total / n


def cosine(lr: float, fraction: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
