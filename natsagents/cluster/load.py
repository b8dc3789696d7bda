"""Load sampling: this process's cpu, memory and network load as fractions of what the
node offers, for its membership record (placement scores nodes by them)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .placement import Resources
from .settings import UNLIMITED_CPU, UNLIMITED_MEMORY

__all__ = ["LoadSampler", "rss_bytes", "total_memory"]

_EVERY = 0.2  # seconds between samples
_BUSY_RATE = 100_000.0  # messages per second that make a busy node (network 1.0)


class LoadSampler:
    """Samples the process's load, at most every 0.2 s.

    Args:
        capacity: what the node offers (unlimited cpu: the machine's cores; unlimited
            memory: the machine's memory).
        message_counts: messages received and sent so far on the connection.
    """

    def __init__(self, capacity: Resources, message_counts: Callable[[], tuple[int, int]]) -> None:
        self._capacity = capacity
        self._message_counts = message_counts
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._net_mark = (time.monotonic(), 0)
        self._load: dict[str, float] = {"cpu": 0.0, "memory": 0.0, "network": 0.0}

    def sample(self) -> dict[str, float]:
        """``{"cpu", "memory", "network"}``, each within ``[0, 1]`` (the last sample when
        the previous one is recent)."""
        now = time.monotonic()
        then, cpu_then = self._cpu_mark
        cpu_now = time.process_time()
        if now - then >= _EVERY:
            capacity = self._capacity
            cores = capacity.cpu if capacity.cpu < UNLIMITED_CPU else float(os.cpu_count() or 1)
            self._load["cpu"] = min(1.0, max(0.0, (cpu_now - cpu_then) / (now - then) / max(cores, 0.01)))
            self._cpu_mark = (now, cpu_now)
            net_then, msgs_then = self._net_mark
            received, sent = self._message_counts()
            rate = (received + sent - msgs_then) / max(now - net_then, 1e-3)
            self._load["network"] = min(1.0, rate / _BUSY_RATE)
            self._net_mark = (now, received + sent)
            limit = capacity.memory if capacity.memory < UNLIMITED_MEMORY else total_memory()
            self._load["memory"] = min(1.0, rss_bytes() / limit) if limit else 0.0
        return dict(self._load)


def rss_bytes() -> int:
    """This process's resident memory in bytes (its peak where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def total_memory() -> int:
    """The machine's memory in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0
