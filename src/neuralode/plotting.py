"""Plots (matplotlib is imported only when a plot is made)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "plot_density",
    "plot_flow_strip",
    "plot_image_samples",
    "plot_phase_portrait",
    "plot_series_reconstruction",
    "plot_spiral_fit",
    "plot_training_curves",
    "pyplot",
    "save_figure",
    "save_flow_gif",
]


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend (pictures go to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure as a PNG file atomically and close it."""
    from .files import atomic_write

    def write(fh: IO[bytes]) -> None:
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_training_curves(rows: list[dict[str, Any]], path: Path, metric: str) -> Path:
    """Loss, the task's metric, and NFE forward/backward per epoch, from ``metrics.csv`` rows."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))

    def curve(ax: Any, key: str, label: str, style: str = "o-") -> None:
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
    return save_figure(fig, path)


def _hist2d(ax: Any, pts: torch.Tensor, lim: float, title: str) -> None:
    ax.hist2d(pts[:, 0].numpy(), pts[:, 1].numpy(), bins=120, range=[[-lim, lim], [-lim, lim]],
              cmap="inferno")  # fmt: skip
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def plot_density(model: Any, data: Any, path: Path, device: Any, n: int = 20_000) -> Path:
    """A 2-D flow beside its data: data samples, the model's density on a grid, and samples
    drawn from the model."""
    plt = pyplot()
    lim = data.dist.bound
    m = 150
    xs = torch.linspace(-lim, lim, m)
    X, Y = torch.meshgrid(xs, xs, indexing="xy")
    grid = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    logp = torch.cat([model.log_prob(g.to(device)).cpu() for g in grid.split(4096)])
    samples = model.sample(n, torch.Generator().manual_seed(0)).cpu()
    truth = data.dist.sample(n, torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    _hist2d(axes[0], truth, lim, "data")
    axes[1].imshow(logp.exp().reshape(m, m).numpy(), origin="lower", cmap="inferno",
                   extent=(-lim, lim, -lim, lim))  # fmt: skip
    axes[1].set_title("model density")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    _hist2d(axes[2], samples, lim, "model samples")
    fig.tight_layout()
    return save_figure(fig, path)


def _scatter_frame(ax: Any, pts: torch.Tensor, lim: float, title: str) -> None:
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1, alpha=0.5, color="C0")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _path_limit(path: torch.Tensor) -> float:
    return float(path.abs().quantile(0.995)) * 1.1


def plot_flow_strip(path_xy: torch.Tensor, path: Path, snapshots: int = 6) -> Path:
    """A strip of snapshots of base samples carried to data by the flow: ``path_xy`` is
    ``(frames, n, 2)`` from the base to the data."""
    plt = pyplot()
    frames = path_xy.shape[0]
    idx = [round(i * (frames - 1) / (snapshots - 1)) for i in range(snapshots)]
    lim = _path_limit(path_xy)
    fig, axes = plt.subplots(1, snapshots, figsize=(2.2 * snapshots, 2.4))
    for k, (ax, i) in enumerate(zip(axes, idx)):
        title = "base" if k == 0 else "data" if k == snapshots - 1 else f"{i / (frames - 1):.0%}"
        _scatter_frame(ax, path_xy[i], lim, title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_flow_gif(path_xy: torch.Tensor, path: Path, ms_per_frame: int = 120) -> Path:
    """The same path as an animated GIF (written atomically)."""
    import io

    from PIL import Image

    from .files import atomic_write

    plt = pyplot()
    lim = _path_limit(path_xy)
    images = []
    frames = path_xy.shape[0]
    for i in range(frames):
        fig, ax = plt.subplots(figsize=(3, 3))
        _scatter_frame(ax, path_xy[i], lim, f"base → data: {i / (frames - 1):.0%}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        buf.seek(0)
        images.append(Image.open(buf).convert("P"))
    images += [images[-1]] * 8  # rest on the data

    def write(fh: IO[bytes]) -> None:
        images[0].save(fh, format="GIF", save_all=True, append_images=images[1:],
                       duration=ms_per_frame, loop=0)  # fmt: skip

    atomic_write(path, write)
    return path


def plot_image_samples(images: torch.Tensor, path: Path, columns: int = 8) -> Path:
    """A grid of images ``(n, 1, H, W)`` with values in [0, 1]."""
    plt = pyplot()
    n = images.shape[0]
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    fig.tight_layout(pad=0.1)
    return save_figure(fig, path)


def plot_series_reconstruction(
    inputs: Any,
    full: Any,
    grid: torch.Tensor,
    mean: torch.Tensor,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
    cut: torch.Tensor,
    path: Path,
) -> Path:
    """A few series: the points the model saw, the ones it did not (dropped, and the future it
    extrapolates), its continuous reconstruction and, where given, a 90% band; one panel per
    series and channel (at most two channels)."""
    plt = pyplot()
    rows, channels = len(inputs), min(2, full.values.shape[-1])
    fig, axes = plt.subplots(rows, channels, figsize=(5 * channels, 2.2 * rows), squeeze=False)
    for b in range(rows):
        k, kin = int(full.lengths[b]), int(inputs.lengths[b])
        for c in range(channels):
            ax = axes[b][c]
            if low is not None and high is not None:
                ax.fill_between(grid[b], low[b, :, c], high[b, :, c], alpha=0.25, label="90% band")
            ax.plot(grid[b], mean[b, :, c], lw=1.5, label="model")
            ax.scatter(full.times[b, :k], full.values[b, :k, c], s=8, c="grey", label="held out")
            ax.scatter(inputs.times[b, :kin], inputs.values[b, :kin, c], s=12, c="k", label="seen")
            ax.axvline(float(cut[b]), ls="--", c="k", lw=0.8)
            ax.set_ylabel(f"series {b}, x{c}")
    axes[0][0].legend(fontsize=7, loc="upper right")
    axes[-1][0].set_xlabel("time (dashed: end of the observed part)")
    fig.tight_layout()
    return save_figure(fig, path)
