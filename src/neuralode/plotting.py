"""Plots (matplotlib is imported only when a plot is made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["plot_phase_portrait", "plot_spiral_fit", "plot_training_curves", "pyplot"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from .training.files import atomic_write

    def write(fh):
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")

    atomic_write(path, write)
    pyplot().close(fig)
    return path


def plot_spiral_fit(data: Any, learned: torch.Tensor, path: Path) -> Path:
    """True vs learned spiral: both coordinates against time, and the phase plane."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    t = data.t.numpy()
    for k, name in enumerate(("x", "y")):
        ax1.plot(t, data.y[:, k].numpy(), color=f"C{k}", label=f"true {name}")
        ax1.plot(t, learned[:, k].numpy(), "--", color=f"C{k}", label=f"learned {name}")
    ax1.axvline(float(data.t[data.split - 1]), color="grey", lw=0.8, ls=":", label="held out →")
    ax1.set_xlabel("t")
    ax1.set_title("trajectories")
    ax1.legend(fontsize=8)
    ax2.plot(
        data.observed[:, 0].numpy(),
        data.observed[:, 1].numpy(),
        ".",
        ms=2,
        color="grey",
        label="observations",
    )
    ax2.plot(data.y[:, 0].numpy(), data.y[:, 1].numpy(), color="C0", label="true")
    ax2.plot(learned[:, 0].numpy(), learned[:, 1].numpy(), "--", color="C3", label="learned")
    ax2.set_title("phase plane")
    ax2.set_aspect("equal")
    ax2.legend(fontsize=8)
    return _save(fig, path)


@torch.no_grad()
def plot_phase_portrait(func: Any, data: Any, learned: torch.Tensor, path: Path) -> Path:
    """The learned vector field as a stream plot, with the true and learned trajectories."""
    plt = pyplot()
    lim = float(data.y.abs().max()) * 1.1
    n = 25
    xs = torch.linspace(-lim, lim, n)
    X, Y = torch.meshgrid(xs, xs, indexing="xy")
    grid = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    param = next(func.parameters(), None)
    if param is not None:
        grid = grid.to(param)
    V = func(torch.tensor(0.0), grid).float().cpu()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    speed = V.norm(dim=1).reshape(n, n).numpy()
    ax.streamplot(
        X.numpy(),
        Y.numpy(),
        V[:, 0].reshape(n, n).numpy(),
        V[:, 1].reshape(n, n).numpy(),
        color=speed,
        cmap="viridis",
        density=1.2,
    )
    ax.plot(data.y[:, 0].numpy(), data.y[:, 1].numpy(), color="C0", lw=1.5, label="true")
    ax.plot(learned[:, 0].numpy(), learned[:, 1].numpy(), "--", color="C3", lw=1.5, label="learned")
    ax.set_title("learned phase portrait")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(rows: list[dict[str, Any]], path: Path, metric: str) -> Path:
    """Loss, the task's metric, and NFE forward/backward per epoch, from ``metrics.csv`` rows."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))

    def curve(ax, key: str, label: str, style: str = "o-") -> None:
        values = [r.get(key) for r in rows]
        if any(isinstance(v, (int, float)) for v in values):
            ax.plot(epochs, [v if isinstance(v, (int, float)) else float("nan") for v in values],
                    style, label=label)  # fmt: skip

    for key in ("train_loss", "val_loss", "test_loss"):
        curve(axes[0], key, key.replace("_", " "))
    axes[0].set_title("loss")
    if all(r.get("train_loss", 0) > 0 for r in rows):
        axes[0].set_yscale("log")
    for split in ("train", "val", "test"):
        curve(axes[1], f"{split}_{metric}", f"{split} {metric}")
    axes[1].set_title(metric)
    curve(axes[2], "nfe_forward", "NFE forward (training)")
    curve(axes[2], "nfe_backward", "NFE backward (training)")
    curve(axes[2], "test_nfe_forward", "NFE forward (test, eval tolerances)", "s--")
    axes[2].set_title("function evaluations per batch")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
