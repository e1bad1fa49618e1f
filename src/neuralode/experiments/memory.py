"""Peak memory of one training step, measured in a fresh process.

On a GPU: ``torch.cuda.max_memory_allocated``. On the CPU: the kernel's high-water mark of the
process's resident set (``VmHWM``), reset just before the step (``/proc/self/clear_refs``), minus
the resident set at that moment — a real measurement of what the step needed, not an estimate.
The allocator's free memory is handed back to the kernel first (glibc's ``malloc_trim``): memory
freed earlier but still resident (the warm-up's, the inputs') would otherwise serve the step
without showing in its peak. Where that is unavailable, the growth of ``ru_maxrss`` over a
warmed-up baseline.

    python -m neuralode.experiments._memory_child '{"options": {"gradient": "adjoint"}}'
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..training.allocator import release_free_memory

__all__ = ["MEASUREMENT", "cpu_step_peak_mb", "measure_training_step"]

MEASUREMENT = "resident peak, free memory released first"
"""How :func:`cpu_step_peak_mb` measures (an experiment's settings record it: results measured
before the allocator's free memory was released first read low, and are not mixed with these)."""


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_step_peak_mb(step: Callable[[], Any]) -> float:
    """Peak resident memory that ``step()`` added to the process, in MB."""
    # memory freed before the step (a warm-up's, the inputs' preparation) must not serve it
    # unseen from pages already resident (without glibc the reading may be low)
    gc.collect()
    release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        before = _status_kb("VmRSS")
        step()
        peak = _status_kb("VmHWM")
        if before is not None and peak is not None:
            return max(peak - before, 0) / 1024
    except OSError:
        pass
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, 0) / 1024


def measure_training_step(spec: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Run the measurement of ``spec`` in a new Python process and return its result."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuralode.experiments._memory_child",
            json.dumps({**spec, "device": device}),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement failed: {out.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])
