"""Device, precision and thread choices, the autocast context that goes with them, and
the memory a new allocation can still get (to refuse what cannot fit before allocating it)."""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from charlm.errors import CharlmError, OptionError


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", "cuda: no CUDA device is available here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise OptionError("device", f"must be auto, cpu or cuda (got {name!r})")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively, else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise OptionError("precision", "bf16: this GPU has no bf16 support; use fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_cores() -> int:
    """Logical CPUs of the machine (not just those this process may use)."""
    return os.cpu_count() or 1


def default_threads(processes_here: int = 1) -> int:
    """The cores this process may use, shared evenly among the processes on this machine.

    torchrun sets OMP_NUM_THREADS=1 for every process it starts, which leaves a CPU run on
    one core per process; charlm decides for itself instead."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = cpu_cores()
    return max(1, available // max(processes_here, 1))


def set_threads(threads: Optional[int], processes_here: int = 1) -> int:
    """Set torch's intra-op threads (None: default_threads) and return the count.

    torch accepts any count, and OpenMP then crashes (a segmentation fault, no message) when
    it cannot start that many threads: --threads 100000 did so here. More threads than the
    machine has cores never helps, so anything above that is refused.
    """
    if threads is None:
        threads = default_threads(processes_here)
    cores = cpu_cores()
    if threads < 1:
        raise OptionError("threads", f"must be at least 1 (got {threads})")
    if threads > cores:
        raise OptionError(
            "threads",
            f"{threads} is more than the {cores} CPU core(s) of this machine; "
            f"use --threads {cores} or fewer, or leave it out for one per core",
        )
    torch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------------------------------
# Memory: refuse a model or batch that cannot fit before allocating it, rather than meet
# an allocator traceback or the kernel's OOM killer half way into a run.


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None  # cgroup v2 writes "max" for no limit


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_page_cache(stat_file: str, key: str) -> int:
    """The page cache counted in a cgroup's usage: the kernel gives it back under pressure."""
    try:
        with open(stat_file) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room() -> Optional[int]:
    """What a container's memory limit still allows (cgroup v2, else v1), if it sets one."""
    for limit_file, usage_file, stat_file, cache_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "file"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_cache"),
    ):  # fmt: skip
        limit = _read_int(limit_file)
        if limit is None or limit >= 1 << 60:  # v1 says "no limit" with a huge number
            continue
        usage = (_read_int(usage_file) or 0) - _cgroup_page_cache(stat_file, cache_key)
        return max(limit - max(usage, 0), 0)
    return None


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes a new allocation can still get on device (None when it cannot be told)."""
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    candidates = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    return min(candidates) if candidates else None


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1024:,.1f} KiB"


def require_memory(needed: int, device: torch.device, what: str, fix: str) -> None:
    """Raise CharlmError when an estimated need clearly exceeds the memory device has free."""
    free = available_memory(device)
    if free is not None and needed > free:
        where = "GPU memory free" if device.type == "cuda" else "memory available"
        raise CharlmError(f"{what} needs about {_size(needed)} but this machine has {_size(free)} {where}; {fix}")
