"""Data-parallel training across processes: ``torchrun --nproc_per_node N -m gptclf train``.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; each process trains a full
copy of the model on its slice of every batch and DDP averages the gradients (NCCL on
GPUs, one GPU per process, ``cuda:LOCAL_RANK``; gloo on CPUs).

Batches: the epoch's batch order is the one a single process would draw with
``batch_size × world_size`` (the same seeded shuffle and length grouping); each rank
takes its own ``batch_size`` slice of every such global batch. So ``--batch-size`` is
per process, and a run on N processes computes the same steps, up to float rounding,
as one process with ``--batch-size`` N times larger.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import GptclfError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: Sequence[int]) -> list[int]:
        """This rank's slice of a global batch (all slices have the same size)."""
        n = len(global_batch) // self.world_size
        return list(global_batch[self.rank * n: (self.rank + 1) * n])


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GptclfError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init_distributed(device_name: str) -> tuple[DistContext, torch.device | None]:
    """Join the process group torchrun set up; returns the context and this rank's device.

    With one process this does nothing and returns ``(DistContext(), None)`` (the caller
    picks the device as usual).
    """
    import torch.distributed as dist

    world = world_size_from_env()
    if world <= 1:
        return DistContext(), None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device_name.split(":")[0]
    if kind == "mps":
        raise GptclfError("multi-process training runs on CUDA GPUs (NCCL) or CPUs (gloo), not MPS")
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise GptclfError("--device cuda: no CUDA GPU is available", hint="use --device cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise GptclfError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s)",
                              hint="use --nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", local_rank)  # one GPU per process, whatever --device named
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, True), device


def shutdown(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(ctx: DistContext) -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_text(text: str, ctx: DistContext) -> str:
    """Rank 0's string on every rank (as bytes in tensors: no pickling)."""
    import torch.distributed as dist

    if ctx.world_size == 1:
        return text
    dev = _comm_device(ctx)
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=dev)
    n = torch.tensor([data.numel()], dtype=torch.long, device=dev)
    dist.broadcast(n, 0)
    buf = data if ctx.is_main else torch.empty(int(n.item()), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode("utf-8")


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's number on every rank, so decisions taken from it agree everywhere."""
    import torch.distributed as dist

    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(ctx))
    dist.broadcast(t, 0)
    return float(t.item())


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on one (e.g. one rank saw Ctrl-C)."""
    import torch.distributed as dist

    if ctx.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.world_size > 1:
        dist.barrier()


class FeedModule(nn.Module):
    """Lets DDP wrap a feeder call: the trunk cache runs only the model's tail, not ``forward``.

    DDP hooks the wrapped module's ``forward``; calling ``feed(model, idx)`` from inside
    it keeps DDP's gradient bookkeeping for both the cached tail and the full model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feed: Callable[[nn.Module, Sequence[int]], torch.Tensor], idx: Sequence[int]) -> torch.Tensor:
        return feed(self.model, idx)


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> Any:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        FeedModule(model), device_ids=[device.index] if device.type == "cuda" else None,
        # The model's buffers (the causal mask) are constants: no need to resend them every step.
        broadcast_buffers=False)


def no_sync(ddp: Any, skip: bool) -> Any:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    return ddp.no_sync() if ddp is not None and skip else contextlib.nullcontext()
