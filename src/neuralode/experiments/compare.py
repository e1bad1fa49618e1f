"""``neuralode compare``: the Neural ODE classifier against the ResNet of the same stem and head."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..tasks import get_task, make_options, resolve_device
from .memory import MEASUREMENT, measure_training_step
from .runner import BUDGETS, Experiment, train_configuration

__all__ = ["run_compare"]

logger = logging.getLogger(__name__)

MODELS: dict[str, dict[str, Any]] = {
    "ode": {"model": "ode"},
    "resnet": {"model": "resnet", "num_blocks": 6},
}


def _forward_ms(
    options: dict[str, Any], device: torch.device, repeats: int, batch: int = 128
) -> float:
    torch.manual_seed(0)
    model = get_task("mnist")(make_options("mnist", **options)).build_model().to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_compare(
    out_dir: str,
    budget: str = "smoke",
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> Experiment:
    """``neuralode compare``: the MNIST Neural ODE and its ResNet twin (same stem and head)
    trained on the same batches under ``budget``, into the experiment folder ``out_dir``
    (parameters, accuracy, time and memory of each, a table and pictures)."""
    b = BUDGETS[budget]
    dev = resolve_device(device)
    exp = Experiment(
        out_dir,
        "Neural ODE vs ResNet (same stem and head)",
        command,
        {"budget": b.name, "device": str(dev), "memory": MEASUREMENT},
    )
    repeats = 5 if budget == "smoke" else 30
    for name, kw in MODELS.items():
        config, train_it = train_configuration(
            exp, name, b, data_dir, progress, device=str(dev), **kw
        )

        def measure(
            name: str = name,
            kw: dict[str, Any] = kw,
            train_it: Callable[[], dict[str, Any]] = train_it,
        ) -> dict[str, Any]:
            s = train_it()
            mem = measure_training_step({"options": kw}, str(dev))
            return {
                "model": name,
                "parameters": s["parameters"],
                "forward_ms": round(_forward_ms(kw, dev, repeats), 3),
                "train_step_peak_mb": mem["peak_mb"],
                "nfe_forward": s["nfe_forward"],
                "nfe_backward": s["nfe_backward"],
                "test_accuracy": s["test_accuracy"],
                "train_seconds": s["train_seconds"],
            }

        exp.run(name, measure, config)
    # dynamics at their default initialisation (not near zero), so longer integration takes
    # more steps, as trained dynamics do
    lengths = [1.0, 4.0, 16.0] if budget == "smoke" else [1.0, 4.0, 16.0, 64.0]
    for t1 in lengths:
        for gradient in ("direct", "adjoint"):
            key = f"memory-{gradient}-T{t1:g}"
            spec = {
                "options": {"model": "ode", "gradient": gradient, "t1": t1},
                "block_only": True,
                "batch": 1024,
            }

            def mem_row(
                gradient: str = gradient, t1: float = t1, spec: dict[str, Any] = spec
            ) -> dict[str, Any]:
                m = measure_training_step(spec, str(dev))
                return {
                    "model": f"ode ({gradient})",
                    "t1": t1,
                    "train_step_peak_mb": m["peak_mb"],
                    "nfe_forward": m["nfe_forward"],
                    "nfe_backward": m["nfe_backward"],
                }

            exp.run(key, mem_row, {**spec, "device": str(dev)})
    plots = _plots(exp)
    notes = (
        f"Budget **{b.name}**: {b.description}, batch {b.batch_size}; device {dev}. "
        "Forward time: median of repeated no-grad forward passes of the same batch of 128. "
        "Peak memory: one training step of batch 128 in a fresh process (CUDA "
        "max-allocated on a GPU, the peak resident set the step added on the CPU). The "
        "memory-* rows measure the ODE block and head only (stem features computed "
        "beforehand), batch 1024, dynamics at their default initialisation, integration time T."
    )
    exp.report(
        [
            ("key", "configuration"),
            ("parameters", "parameters"),
            ("forward_ms", "forward ms"),
            ("train_step_peak_mb", "train-step peak MB"),
            ("nfe_forward", "NFE fwd"),
            ("nfe_backward", "NFE bwd"),
            ("test_accuracy", "test accuracy"),
            ("t1", "T"),
        ],
        plots,
        notes,
    )
    return exp


def _plots(exp: Experiment) -> list[str]:
    from ..plotting import pyplot

    plt = pyplot()
    rows = {r["key"]: r for r in exp.rows}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    names = [n for n in ("ode", "resnet") if n in rows]
    for ax, (key, label) in zip(
        axes,
        [
            ("parameters", "parameters"),
            ("forward_ms", "forward time (ms)"),
            ("train_step_peak_mb", "training-step peak memory (MB)"),
            ("test_accuracy", "test accuracy"),
        ],
    ):
        values = [rows[n][key] for n in names]
        bars = ax.bar(names, values, color=["C0", "C1"][: len(names)])
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=8)
        if key == "test_accuracy":  # differences of a fraction of a percent: zoom in
            ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.02))
        ax.set_title(label, fontsize=10)
    fig.suptitle("Neural ODE vs ResNet twin")
    fig.tight_layout()
    _save(fig, exp, "comparison.png")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for gradient, color in (("direct", "C3"), ("adjoint", "C2")):
        pts = sorted(
            (r["t1"], r["train_step_peak_mb"])
            for r in exp.rows
            if r.get("model") == f"ode ({gradient})"
        )
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=gradient)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("integration time T")
    ax.set_ylabel("training-step peak memory (MB)")
    ax.set_title("adjoint vs direct backpropagation")
    ax.legend()
    _save(fig, exp, "memory_vs_time.png")
    return ["comparison.png", "memory_vs_time.png"]


def _save(fig: Any, exp: Experiment, name: str) -> None:
    from ..plotting import save_figure as save_png

    save_png(fig, exp.out / name)
