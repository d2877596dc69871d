"""Distributed training under ``torchrun``: the process's rank, its device, collective helpers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from statmech_nn.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """Rank and world size from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, dist: Dist) -> torch.device:
    """``auto`` -> cuda if available else cpu; cuda under torchrun -> this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name} was asked for, but torch sees no CUDA device; pass --device "
                "cpu (or auto)"
            )
        if dist.enabled:
            return torch.device("cuda", dist.local_rank)
    return torch.device(name)


@contextlib.contextmanager
def process_group(dist: Dist, device_name: str | None) -> Iterator[None]:
    """The default process group while training (nccl on GPUs, gloo on CPU), then destroyed."""
    if dist.enabled and not torch.distributed.is_initialized():
        on_gpu = torch.cuda.is_available() and device_name != "cpu"
        torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
    try:
        yield
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def broadcast(value: Any, dist: Dist) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (nothing to do when not distributed)."""
    if dist.enabled:
        torch.distributed.all_reduce(tensor)
    return tensor


def barrier(dist: Dist) -> None:
    """Wait for every rank."""
    if dist.enabled:
        torch.distributed.barrier()
