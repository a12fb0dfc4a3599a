"""torch.distributed helpers for ``torchrun``: read the launcher's environment,
start and stop the process group, and the few collectives training needs.

Every helper is a no-op (or the identity) when the run is not distributed,
so the training code calls them unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "from_environment", "init_process_group", "shutdown", "barrier",
           "all_reduce_mean", "all_gather_objects"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``enabled``: launched by torchrun
    (RANK, WORLD_SIZE and LOCAL_RANK set)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0


def from_environment() -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); a plain run gets rank 0 of 1."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        missing = [n for n in names if n not in os.environ]
        if len(missing) < len(names):
            raise RuntimeError(f"torch.distributed environment is incomplete: {missing} not set; "
                               f"start multi-process runs with torchrun")
        return DistEnv()
    rank, world, local = (int(os.environ[n]) for n in names)
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local, enabled=True)


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float) -> None:
    """Join the job's process group: NCCL when this rank trains on a GPU, gloo on the CPU.

    Collectives that wait longer than ``timeout_s`` seconds (a dead or stuck
    rank) fail instead of hanging forever.
    """
    if not env.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Leave the process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank gets here."""
    if _active():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ranks (a new tensor; NaN on any rank gives NaN everywhere)."""
    out = values.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
