"""Training across processes started by torchrun: the process group and the few collectives charlm needs.

torchrun starts one process per device and tells each its RANK, LOCAL_RANK, WORLD_SIZE and
LOCAL_WORLD_SIZE through the environment (and, across machines, where to meet). `start`
joins the process group: NCCL when the processes train on CUDA (process LOCAL_RANK on GPU
LOCAL_RANK), gloo on the CPU. DistributedDataParallel (set up by the trainer) averages the
gradients; the functions here carry everything else:

  * `sum_` adds a tensor over all processes in place (the step's loss, validation NLL).
  * `agree` adds a handful of host numbers over a gloo group on the CPU, so that every
    process takes the same decision (stop now, checkpoint now) without waiting for a GPU.
  * `broadcast` sends rank 0's Python object to everyone (a configuration, a checkpoint read
    from disk): only rank 0 ever touches the run directory.
  * `gather` collects one object from every process on all of them (per-process RNG states).

A process not started by torchrun (or started with one process) gets `SINGLE`, a World of
size 1 whose collectives return their input unchanged, so callers need no special case.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from charlm.errors import CharlmError
from charlm.models.state import LaneShare

# how long a process waits for the others at a collective before giving up (corpus
# preparation on rank 0 happens while the others wait, so this is generous)
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1
    backend: Optional[str] = None
    control: Any = None  # the gloo group for host numbers (the default group when that is gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CharlmError(
            f"the environment variable {name}={value!r} is not a number; start charlm with torchrun"
        ) from None


def launched_world() -> tuple[int, int, int, int]:
    """(rank, local rank, world size, local world size) from torchrun's environment; (0, 0, 1, 1) without it."""
    size = _env_int("WORLD_SIZE")
    if size is None or size <= 1:
        return 0, 0, 1, 1
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or local_rank is None:
        raise CharlmError("WORLD_SIZE is set but RANK or LOCAL_RANK is not; start distributed training with torchrun")
    local_size = _env_int("LOCAL_WORLD_SIZE") or size
    return rank, local_rank, size, local_size


def start() -> World:
    """Join torchrun's process group (a no-op for a single process).

    The group is joined before the run's device is known (a resumed run reads it from rank
    0's run directory), so where CUDA is present it gets both backends, "cpu:gloo,cuda:nccl",
    and each collective goes to the one for its tensors' device."""
    rank, local_rank, size, local_size = launched_world()
    if size == 1:
        return SINGLE
    if not dist.is_available():
        raise CharlmError("this torch build has no torch.distributed; install a build that does, or run one process")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else dist.group.WORLD
    return World(rank, local_rank, size, local_size, backend, control)


def process_device(world: World, device: torch.device) -> torch.device:
    """This process's device: under torchrun on CUDA, GPU LOCAL_RANK (one process per GPU)."""
    if not world.distributed or device.type != "cuda":
        return device
    gpus = torch.cuda.device_count()
    if world.local_rank >= gpus:
        raise CharlmError(
            f"torchrun started {world.local_size} processes on this machine but it has {gpus} GPU(s); "
            f"use --nproc_per_node={gpus} or fewer (one process per GPU)"
        )
    torch.cuda.set_device(world.local_rank)  # before the first NCCL collective, which binds to it
    return torch.device("cuda", world.local_rank)


def stop(world: World) -> None:
    """Leave the process group once every process is done with it."""
    if world.distributed and dist.is_initialized():
        gc.collect()  # a DistributedDataParallel left for the interpreter's exit aborts the process
        dist.barrier(group=world.control)
        dist.destroy_process_group()


def is_lost_peer(exc: BaseException) -> bool:
    """An error from a collective whose other side went away (a process that died or was killed)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text for mark in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer")
    )


def sum_(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """Add `tensor` over all processes, in place, on its own device (no host sync on CUDA)."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agree(world: World, values: list[float]) -> list[float]:
    """The element-wise sum of `values` over all processes, computed on the CPU."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=world.control)
    return tensor.tolist()


def broadcast(world: World, value: Any = None) -> Any:
    """Rank 0's `value` on every process (others pass anything). Tensors must be on the CPU."""
    if not world.distributed:
        return value
    box = [value if world.is_main else None]
    dist.broadcast_object_list(box, src=0, group=world.control)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every process's `value`, in rank order, on every process."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value, group=world.control)
    return values


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier(group=world.control)


def check_lane_share(batch_size: int, processes: int) -> None:
    """The global batch must share out evenly: every process runs the same (b, T) step."""
    if batch_size % processes:
        raise CharlmError(
            f"--batch-size {batch_size} does not divide evenly among the {processes} processes torchrun "
            f"started; give a multiple of {processes} (it is the global batch, shared out among them)"
        )


def lane_share(world: World) -> LaneShare:
    """This process's share of any lanes: contiguous, in rank order, as even as possible."""
    return LaneShare(world.rank, world.size)


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank `rank`'s own random draws (dropout): rank 0 keeps `seed` itself."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))
