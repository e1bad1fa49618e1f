"""``neuralode study tolerance`` and ``neuralode study depth``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..plotting import pyplot, save_figure
from ..tasks import resolve_device
from .runner import BUDGETS, Experiment, train_configuration

__all__ = ["DEPTHS", "TOLERANCES", "run_depth_study", "run_tolerance_study"]

TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEPTHS = (2, 4, 8, 16, 32)


def _device(device: str | None) -> str:
    return str(resolve_device(device))


def run_tolerance_study(
    out_dir: str,
    budget: str = "smoke",
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool = False,
    tolerances: Sequence[float] = TOLERANCES,
    command: Sequence[str] | None = None,
) -> Experiment:
    """Train the Neural ODE classifier with rtol = atol = each tolerance (same seed, same
    budget); record accuracy, NFE forward and backward, training time."""
    b = BUDGETS[budget]
    exp = Experiment(
        out_dir,
        "Tolerance study: accuracy against cost",
        command,
        {"budget": b.name, "device": _device(device)},
    )
    for tol in tolerances:
        key = f"tol-{tol:g}"
        config, train_it = train_configuration(
            exp, key, b, data_dir, progress, model="ode", rtol=tol, atol=tol,
            device=_device(device),
        )  # fmt: skip

        def one(
            tol: float = tol, train_it: Callable[[], dict[str, Any]] = train_it
        ) -> dict[str, Any]:
            s = train_it()
            return {
                "rtol": tol,
                "atol": tol,
                "test_accuracy": s["test_accuracy"],
                "nfe_forward": s["nfe_forward"],
                "nfe_backward": s["nfe_backward"],
                "train_seconds": s["train_seconds"],
            }

        exp.run(key, one, config)
    rows = sorted(exp.rows, key=lambda r: -r["rtol"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    acc = [r["test_accuracy"] for r in rows]
    for ax, key, label in (
        (axes[0], "nfe_forward", "NFE per forward pass"),
        (axes[1], "train_seconds", "training time (s)"),
    ):
        xs = [r[key] for r in rows]
        ax.plot(xs, acc, "o")  # points labelled by tolerance; no order to join them in
        for r, x, a in zip(rows, xs, acc):
            ax.annotate(
                f"{r['rtol']:g}", (x, a), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
    axes[2].plot([r["rtol"] for r in rows], [r["nfe_forward"] for r in rows], "o-")
    axes[2].set_xscale("log")
    axes[2].invert_xaxis()
    axes[2].set_xlabel("rtol = atol")
    axes[2].set_ylabel("NFE per forward pass")
    fig.suptitle("accuracy vs NFE, accuracy vs training time, NFE vs tolerance")
    fig.tight_layout()
    save_figure(fig, exp.out / "tolerance.png")
    exp.report(
        [
            ("rtol", "rtol"),
            ("atol", "atol"),
            ("test_accuracy", "test accuracy"),
            ("nfe_forward", "NFE fwd"),
            ("nfe_backward", "NFE bwd"),
            ("train_seconds", "training s"),
        ],
        ["tolerance.png"],
        f"Budget **{b.name}**: {b.description}, batch {b.batch_size}, seed 0, dopri5.",
        sort_key=lambda r: -r["rtol"],
    )
    return exp


def run_depth_study(
    out_dir: str,
    budget: str = "smoke",
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool = False,
    depths: Sequence[int] = DEPTHS,
    command: Sequence[str] | None = None,
) -> Experiment:
    """ResNets of several depths against the Neural ODE (its effective depth: NFE)."""
    b = BUDGETS[budget]
    exp = Experiment(
        out_dir,
        "Depth study: ResNets against the Neural ODE",
        command,
        {"budget": b.name, "device": _device(device)},
    )
    for depth in depths:
        key = f"resnet-{depth}"
        config, train_it = train_configuration(
            exp, key, b, data_dir, progress, model="resnet", num_blocks=depth,
            device=_device(device),
        )  # fmt: skip

        def one(
            depth: int = depth, train_it: Callable[[], dict[str, Any]] = train_it
        ) -> dict[str, Any]:
            s = train_it()
            return {
                "model": "resnet",
                "depth": depth,
                "parameters": s["parameters"],
                "test_accuracy": s["test_accuracy"],
                "train_seconds": s["train_seconds"],
            }

        exp.run(key, one, config)

    config, train_ode = train_configuration(
        exp, "ode", b, data_dir, progress, model="ode", device=_device(device)
    )

    def ode() -> dict[str, Any]:
        s = train_ode()
        return {
            "model": "ode",
            "depth": s["nfe_forward"],
            "parameters": s["parameters"],
            "test_accuracy": s["test_accuracy"],
            "train_seconds": s["train_seconds"],
            "nfe_forward": s["nfe_forward"],
            "nfe_backward": s["nfe_backward"],
        }

    ode_row = exp.run("ode", ode, config)
    res = sorted((r for r in exp.rows if r["model"] == "resnet"), key=lambda r: r["depth"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["depth"] for r in res], [r["test_accuracy"] for r in res], "o-", label="ResNet")
    ax.axhline(
        ode_row["test_accuracy"],
        color="C3",
        ls="--",
        label=f"Neural ODE (NFE {ode_row['nfe_forward']:g})",
    )
    ax.plot([ode_row["depth"]], [ode_row["test_accuracy"]], "*", color="C3", ms=12)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth (residual blocks; for the Neural ODE: NFE per forward pass)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    ax.set_title("accuracy against depth")
    save_figure(fig, exp.out / "depth.png")
    exp.report(
        [
            ("model", "model"),
            ("depth", "depth / NFE"),
            ("parameters", "parameters"),
            ("test_accuracy", "test accuracy"),
            ("train_seconds", "training s"),
        ],
        ["depth.png"],
        f"Budget **{b.name}**: {b.description}, batch {b.batch_size}, seed 0. The Neural "
        "ODE's effective depth is its number of function evaluations per forward pass.",
    )
    return exp
