"""The machine a profile is measured on: which CPUs this process may use, how busy they are,
how much memory a process peaked at, and the description written into a profile's sidecar.

Linux `/proc` is read where present; elsewhere the functions fall back to what the standard
library knows (and contention is unknown). torch is imported only by `cuda_devices` and
`describe_machine`, which the parent process calls, never the worker before it pins itself.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Iterable


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (respects taskset / cgroup cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    `/proc/self/status` VmHWM is the high-water mark of the current address space only.
    `getrusage().ru_maxrss` is used where /proc is missing; on Linux it can carry over the
    *parent's* peak when the child was started with vfork (which subprocess does), so it
    is only the fallback.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS


def cpu_times(cpu_ids: Iterable[int]) -> tuple[float, float] | None:
    """(busy, total) seconds the given CPUs have spent since boot, from /proc/stat; None elsewhere."""
    wanted = {f"cpu{i}" for i in cpu_ids}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = total = 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                parts = line.split()
                if parts and parts[0] in wanted:
                    values = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
                    total += sum(values)
                    busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError):
        return None
    return busy / tick, total / tick


def contention(before: tuple[float, float] | None, after: tuple[float, float] | None, own_cpu: float,
               n_cpus: int, wall: float) -> float | None:
    """Share of the pinned CPUs' time that *other* processes used during a measurement (0 = clean).

    The measured process is pinned to those CPUs, so all their busy time beyond its own CPU
    time belongs to someone else. Clock ticks are 10 ms: short runs read a little noisy.
    """
    if before is None or after is None or wall <= 0:
        return None
    others = (after[0] - before[0]) - own_cpu
    return float(min(1.0, max(0.0, others / (n_cpus * wall))))


def idle_share(cpu_ids: Iterable[int], seconds: float = 0.5) -> float:
    """Fraction of the given CPUs' time that was idle over a short sample (1.0 if unknown)."""
    ids = list(cpu_ids)
    a = cpu_times(ids)
    time.sleep(seconds)
    b = cpu_times(ids)
    if a is None or b is None or b[1] <= a[1]:
        return 1.0
    return 1.0 - (b[0] - a[0]) / (b[1] - a[1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def cuda_devices() -> list[str]:
    """Names of the CUDA devices torch can use ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def describe_machine() -> dict[str, Any]:
    """The machine, as a profile's sidecar records it (a resumed run must be on the same CPU model)."""
    import torch

    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(usable_cpus()),
        "mem_total_mb": _mem_total_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_devices": cuda_devices(),
    }
