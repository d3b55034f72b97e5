"""Process-group setup for single-process and ``torchrun`` training, and the few collectives the loop needs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; when they are
present we join a process group (NCCL on CUDA, gloo on CPU), otherwise we run as the only process. Every
helper below is a no-op (or the identity) without a process group, so the loop has one code path.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "shutdown_distributed", "all_reduce_sum", "all_gather_objects",
           "barrier", "broadcast_object", "pick_device", "cpu_threads", "set_cpu_threads"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``requested`` ("auto", "cpu", "cuda" or "cuda:N") as the device this process uses."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {requested!r} is not a device this package runs on; use auto, cpu, cuda or "
                         "cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cpu_threads(requested: int | None = None, processes: int = 1) -> int:
    """The CPU threads one process uses: ``requested``, else ``OMP_NUM_THREADS``, else the idle cores.

    Idle cores: the cores this process may use, divided among ``processes`` local processes, minus the cores that
    other work keeps busy right now (``_busy_cores``), at least 1. torch's default (every core) oversubscribes a
    busy machine: with one other CPU-bound process on 2 cores the demo ran 15x slower than with one thread.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be a positive integer, got {requested}")
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores // max(1, processes), cores - round(_busy_cores())))


def _busy_cores(window_s: float = 0.1) -> float:
    """Cores kept busy by other processes now: the machine's non-idle share over ``window_s`` times its cores,
    from /proc/stat, less what this process used meanwhile (its idle-spinning OpenMP threads, say); elsewhere
    the 1-minute load average. Unlike the load average, a job that just ended (a pip install, a test run) does
    not count for the next minute."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]           # all time, idle + iowait (jiffies)
    try:
        total0, idle0 = snapshot()
        own0, wall0 = time.process_time(), time.monotonic()
        time.sleep(window_s)
        total1, idle1 = snapshot()
        own1, wall1 = time.process_time(), time.monotonic()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    if total1 <= total0 or wall1 <= wall0:
        return 0.0
    machine = (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)
    return max(0.0, machine - (own1 - own0) / (wall1 - wall0))


def set_cpu_threads(requested: int | None, device: torch.device, processes: int = 1) -> int | None:
    """Set torch's intra-op threads by :func:`cpu_threads` for CPU work; returns the count (None: untouched).

    On a GPU the CPU threads matter little and torch's default stays, unless ``requested`` is given.
    """
    if device.type != "cpu" and requested is None:
        return None
    n = cpu_threads(requested, processes)
    torch.set_num_threads(n)
    return n


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if launched by it; pick this process's device.

    ``device``: "auto" (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), "cpu", "cuda" or "cuda:N".
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv(0, 1, 0, pick_device(device, 0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, world_size, local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks in place (identity in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (in-memory exchange between our own ranks only)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
