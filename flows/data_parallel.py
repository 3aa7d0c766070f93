"""Data-parallel bakes on one machine: the bake's own process is rank 0 and starts the others.

`torch.distributed` with gloo (CPU) or NCCL (CUDA). Rank 0 owns the job (claim, checkpoints,
metrics); the other ranks only compute their slice of each step (see `flows.trainer.Trainer`) and
stop when rank 0 says so. Across machines the same group would come up through a rendezvous
(`torchrun --nnodes ... --rdzv-endpoint ...`); see the README.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator


class Group:
    """Rank 0's side of the process group."""

    def __init__(self, world: int):
        self.world = world

    def go_on(self, more: bool) -> None:
        """Tell the other ranks whether another step follows (a no-op alone)."""
        if self.world > 1:
            share_flag(more)


def share_flag(value: bool = False) -> bool:
    """Rank 0's flag, on every rank."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if value else 0], device=_collective_device())
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _collective_device() -> str:
    """NCCL moves only CUDA tensors; gloo CPU ones."""
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def share_int(value: int = 0) -> int:
    import torch
    import torch.distributed as dist

    number = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.broadcast(number, src=0)
    return int(number.item())


def init_group(rank: int, world: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    from flows.engines.device import cuda_available, train_settings

    settings = train_settings(cuda=cuda_available(), rank=rank)
    if settings.device.startswith("cuda"):
        torch.cuda.set_device(settings.device)
    dist.init_process_group(settings.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


@contextmanager
def data_parallel(processes: int, follower: Callable[..., None], args: tuple[Any, ...]) -> Iterator[Group]:
    """Start `processes - 1` followers (`follower(rank, world, port, *args)`) and join the group as
    rank 0. On the way out the followers are told to stop and are waited for (killed if stuck)."""
    if processes <= 1:
        yield Group(1)
        return
    import torch.distributed as dist
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    followers = [context.Process(target=follower, args=(rank, processes, port, *args), daemon=True)
                 for rank in range(1, processes)]
    for process in followers:
        process.start()
    try:
        init_group(0, processes, port)
        group = Group(processes)
        try:
            yield group
        finally:
            group.go_on(False)
            dist.destroy_process_group()
    finally:
        for process in followers:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
