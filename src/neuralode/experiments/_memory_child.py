"""Child process of :func:`neuralode.experiments.memory.measure_training_step`."""

from __future__ import annotations

import json
import sys
from typing import Any

from neuralode.experiments.memory import cpu_step_peak_mb


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    import neuralode
    from neuralode.tasks import get_task, make_options

    torch.manual_seed(0)
    device = torch.device(spec.get("device", "cpu"))
    batch = int(spec.get("batch", 128))
    task = str(spec.get("task", "mnist"))
    model: Any = get_task(task)(make_options(task, **spec["options"])).build_model().to(device)

    block_only = bool(spec.get("block_only", False))
    feats = {}
    if block_only:  # stem features computed beforehand: only the middle and head are measured
        with torch.no_grad():
            for n in (2, batch):
                feats[n] = model.stem(torch.randn(n, 1, 28, 28, device=device))

    def step(n: int) -> None:
        y = torch.randint(0, 10, (n,), device=device)
        if block_only:
            out, _ = model.ode.integrate(feats[n])
            F.cross_entropy(model.head(out), y).backward()
        else:
            x = torch.randn(n, 1, 28, 28, device=device)
            F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    step(2)  # warm-up: libraries and kernels loaded
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(batch)
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = cpu_step_peak_mb(lambda: step(batch))
    stats = neuralode.solve_stats(model)
    return {
        "peak_mb": round(peak_mb, 2),
        "nfe_forward": stats.nfe_forward,
        "nfe_backward": stats.nfe_backward,
    }


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_child(json.loads(sys.argv[1]))) + "\n")
