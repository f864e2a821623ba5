"""What every benchmark here shares: the machine line, thread setting, timing and memory.

Each script prints a header from :func:`header` (machine, torch, threads, load, and the
weights used) so a printed figure always says what produced it. Memory is read from
``/proc`` (Linux; MB = 2**20 bytes).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

RANDOM_WEIGHTS = "random weights (code speed and memory only, never a model's quality)"


def rss_mb() -> float:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM; ru_maxrss where /proc is
    missing, which after fork+exec can include the parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads (None: keep) and return the number in use."""
    import torch

    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def header(title: str, weights: str = RANDOM_WEIGHTS, device: str = "cpu") -> str:
    """One line naming the machine and conditions, to print above a benchmark's figures."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{title} | {platform.machine()} {os.cpu_count()} cpus, load {load:.1f} | "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} | "
        f"{weights}"
    )


def timed(
    fn: Callable[[], object],
    repeat: int = 3,
    warmup: int = 1,
    sync: Callable[[], object] | None = None,
) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; seconds per call.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock reading.
    Returns ``{"median_s", "min_s", "times_s"}``.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}
