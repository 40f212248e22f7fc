"""torchrun's environment -> process group; rank-0 helpers; reductions."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_groups_made = 0  # process groups this process has joined through setup()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); single process otherwise."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        store, rank, world_size = next(dist.rendezvous("env://"))
        # torchrun keeps one key-value store across restarts: give every attempt its own key space,
        # or a restarted worker can read its peers' addresses from the attempt that died.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        # Likewise every group this process makes (two seglab.train calls in one script): every
        # rank makes the same groups in the same order, so the count agrees across ranks.
        global _groups_made
        _groups_made += 1
        store = dist.PrefixStore(f"seglab/attempt{attempt}/group{_groups_made}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    return info


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is True on any rank (the flag itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return bool(all_reduce_sum(torch.tensor(float(flag), device=device)).item() > 0)


def broadcast_object(value, src: int = 0):
    """Send a picklable value from `src` to every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(value) -> list:
    """Every rank's picklable `value`, in rank order ([value] in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
