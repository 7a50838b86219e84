"""Process-group setup from the environment `torchrun` provides (RANK, WORLD_SIZE, ...).

One process without torchrun is world size 1 and needs no process group, so the same code
path trains on a laptop, on `torchrun --nproc-per-node N`, or in a Kubernetes TrainJob.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Average scalar tensors over ranks (one collective for the whole dict)."""
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.stack([values[k].detach().float().to(self.device) for k in keys])
        if self.distributed:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return dict(zip(keys, stacked.tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (agree on stopping together)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available (set device=cpu or auto)")
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size == 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before init, so NCCL binds each rank to its own GPU
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
