"""DDP under ``torchrun``: NCCL on GPUs, gloo on the CPU; rank 0 logs and saves."""

from __future__ import annotations

import os

import attrs
import torch


@attrs.frozen
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local)


def device_for(info: DistInfo, requested: str) -> torch.device:
    """``cuda`` under DDP means this process's local GPU."""
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", info.local_rank)
    return dev


def wrapper(info: DistInfo, device: torch.device):
    """A function wrapping a model in DDP when distributed, else None."""
    if not info.enabled:
        return None

    def wrap(model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False)

    return wrap


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
