"""Data-parallel training under ``torchrun``: DDP (gloo on the CPU, nccl on GPUs), metrics
reduced across ranks, only rank 0 writes files."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["Distributed"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


class Distributed:
    """The process group this process belongs to (a single process when not under torchrun)."""

    def __init__(self, rank: int, world: int, device: torch.device, initialized: bool) -> None:
        self.rank = rank
        self.world = world
        self.device = device
        self.initialized = initialized

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, cfg) -> Distributed:
        world = _env_int("WORLD_SIZE", 1)
        device = cfg.resolved_device()
        if world <= 1:
            return cls(0, 1, device, False)
        import torch.distributed as dist

        if "RANK" not in os.environ:
            raise ValueError(
                f"WORLD_SIZE={world} is set but RANK is not: start data-parallel training with "
                "torchrun (e.g. torchrun --nproc-per-node 2 -m neuralode train ...), which sets "
                "both, or unset WORLD_SIZE to train in one process"
            )
        rank = _env_int("RANK", 0)
        local = _env_int("LOCAL_RANK", rank)
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside 0 … WORLD_SIZE-1 = {world - 1}")
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if cfg.batch_size % world:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is the global batch and must be divisible by "
                f"the number of processes ({world})"
            )
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d on %s (%s)", rank, world, device, backend)
        return cls(rank, world, device, True)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.initialized:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, values: Sequence[float]) -> list[Any]:
        """Sum numbers over the ranks (ints stay ints)."""
        if not self.initialized:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.device.type == "cuda":
            t = t.to(self.device)
        dist.all_reduce(t)
        return [
            round(x) if isinstance(v, int) else x for x, v in zip(t.tolist(), values, strict=True)
        ]

    def barrier(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.barrier()

    def load(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (e.g. a download) on rank 0 first, then on the others."""
        if self.initialized and not self.is_main:
            self.barrier()
            return fn()
        result = fn()
        if self.initialized:
            self.barrier()
        return result

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False
