"""Faults a real run meets, injected through the training loop's callbacks (tests only: no
production code path reads them).

    python tests/faults.py kill=17 -- train mnist ...   # SIGKILL after 17 training batches
    python tests/faults.py nan=15 -- train mnist ...    # a NaN weight after 15 batches
"""

import os
import signal
import sys

import torch

from neuralode.training import BatchEnd, Callback


class KillAfter(Callback):
    """Kill the process (SIGKILL: no cleanup at all) after ``n`` training batches of the run."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_batch_end(self, batch: BatchEnd) -> None:
        if batch.global_step >= self.n:
            os.kill(os.getpid(), signal.SIGKILL)


class NaNAfter(Callback):
    """Turn a weight into NaN after ``n`` training batches: the run must stop with a diagnosis."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_batch_end(self, batch: BatchEnd) -> None:
        if batch.global_step == self.n:
            with torch.no_grad():
                next(batch.model.parameters()).view(-1)[0] = float("nan")


FAULTS = {"kill": KillAfter, "nan": NaNAfter}


if __name__ == "__main__":
    kind, _, count = sys.argv[1].partition("=")
    if sys.argv[2] != "--":
        sys.exit("usage: faults.py kill=N|nan=N -- COMMAND ...")
    from neuralode.cli import main

    sys.exit(main(sys.argv[3:], callbacks=[FAULTS[kind](int(count))]))
