"""Peak-memory probes: ``max_memory_allocated`` on CUDA, peak RSS (VmHWM) on CPU."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["reset_peak_memory", "peak_memory", "available_bytes"]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM (peak RSS)
            f.write("5")


def peak_memory(device: torch.device) -> float | None:
    """Peak memory in MiB since the last reset: ``max_memory_allocated`` on CUDA, peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_bytes(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device``: free CUDA memory, or the host's ``MemAvailable`` for
    the CPU; ``None`` when unknown (callers then skip their memory check)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None
