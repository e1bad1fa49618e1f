"""Data-parallel training under ``torchrun``: DDP (gloo on the CPU, nccl on GPUs), metrics
reduced across ranks, only rank 0 writes files."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..tasks.base import TrainOptions

__all__ = ["Distributed", "GlobalBatchNorm"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(
            f"environment variable {name}={value!r} must be an integer"
        ) from None


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
    def from_environment(cls, cfg: TrainOptions) -> Distributed:
        world = _env_int("WORLD_SIZE", 1)
        device = cfg.resolved_device()
        if world <= 1:
            return cls(0, 1, device, False)
        import torch.distributed as dist

        if "RANK" not in os.environ:
            raise InvalidArgumentError(
                f"WORLD_SIZE={world} is set but RANK is not: start data-parallel training with "
                "torchrun (e.g. torchrun --nproc-per-node 2 -m neuralode train ...), which sets "
                "both, or unset WORLD_SIZE to train in one process"
            )
        rank = _env_int("RANK", 0)
        local = _env_int("LOCAL_RANK", rank)
        if not 0 <= rank < world:
            raise InvalidArgumentError(f"RANK={rank} is outside 0 … WORLD_SIZE-1 = {world - 1}")
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if cfg.batch_size % world:
            raise InvalidArgumentError(
                f"--batch-size {cfg.batch_size} is the global batch and must be divisible by "
                f"the number of processes ({world})"
            )
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d on %s (%s)", rank, world, device, backend)
        return cls(rank, world, device, True)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DDP. Its batch-norm layers normalise over the global batch (and so
        keep identical running statistics on every rank), as one process would: PyTorch's
        ``SyncBatchNorm`` on GPUs, :class:`GlobalBatchNorm` on the CPU, where ``SyncBatchNorm``
        does not run. The layers are converted in place; parameter names do not change."""
        if not self.initialized:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            import torch.distributed as dist

            # a group of its own: DDP's gradient all-reduces run asynchronously on the default
            # group, and sharing it would let the two interleave differently on each rank
            GlobalBatchNorm.convert(model, dist.new_group(backend="gloo"))
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

    def sum_dicts(self, values: dict[str, Any]) -> dict[str, Any]:
        """Sum dictionaries of numbers (or lists of numbers) over the ranks, key by key; a key
        one rank lacks counts as zero there (a rank may have seen no batch)."""
        if not self.initialized:
            return dict(values)
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, dict(values))
        out: dict[str, Any] = {}
        for part in gathered:
            for key, value in part.items():
                if key not in out:
                    out[key] = value
                elif isinstance(value, list):
                    out[key] = [a + b for a, b in zip(out[key], value, strict=True)]
                else:
                    out[key] = out[key] + value
        return out

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


class _AllReduceSum(torch.autograd.Function):
    """The sum over the ranks of ``group``, differentiable: the gradient of a sum over ranks is
    the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the batch of every rank together, differentiable through the
    all-reduce of its statistics: training on N ranks normalises exactly as one process does
    with the global batch. Used for CPU data-parallel training (``SyncBatchNorm`` is GPU-only).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise InvalidArgumentError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        group = getattr(self, "process_group", None)

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            return _AllReduceSum.apply(t, group)  # type: ignore[no-untyped-call]  # (torch's)

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce(x.new_tensor(float(x.numel() // x.shape[1])))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.reshape(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count  # biased, for normalising
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        tracked, running_mean, running_var = (
            self.num_batches_tracked,
            self.running_mean,
            self.running_var,
        )  # (buffers that exist where track_running_stats is set)
        if tracked is not None and running_mean is not None and running_var is not None:
            with torch.no_grad():
                tracked.add_(1)
                m = 1.0 / float(tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        return out

    @classmethod
    def convert(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Turn every ``BatchNorm*d`` in ``module`` into this class, in place (its parameters and
        buffers stay the same objects), reducing over ``process_group`` (default: the default
        group; give it a group of its own under DDP)."""
        for child in module.modules():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, (cls, nn.SyncBatchNorm)
            ):
                child.__class__ = cls
            if isinstance(child, cls):
                child.process_group = process_group
        return module
