"""Interleaved timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved(runs: dict, repeats: int, warmup: int = 3) -> dict[object, list[float]]:
    """Seconds of every run, timed once per round, the order rotated by one every round, so that
    every run takes every place in the order equally often and a noisy neighbour lands on every
    run alike (with the order reversed every other round instead, the runs at the ends would
    follow themselves at every other round's turn, warm, and one in the middle never);
    ``warmup`` rounds first, not kept."""
    keys = list(runs)
    times: dict[object, list[float]] = {k: [] for k in keys}
    for r in range(repeats + warmup):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            fn: Callable[[], object] = runs[key]
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[key].append(time.perf_counter() - t0)
    return times
