"""Ingest first: the processor waits while the rest of the machine is busy.

DESIGN: "a slow report, a rebuild or a migration never slows the tracking
endpoint". The lowest scheduling priority is not enough for that. Measured here
(docs/benchmarks.md), the collectors spend a good part of each request waiting
(for the client, for the disk), and any work that fills those gaps costs them
throughput, even at nice 19 or ``SCHED_IDLE``: applying records beside a
saturating load took a fifth of the collectors' requests per second.

So the processor looks before each batch: while the other processes of the
machine keep all its CPUs but one busy, it does not start one, until the oldest
record it has not applied is ``defer_seconds`` old. From then on it applies as
usual, at its low priority, whatever the load. A burst shorter than that gets
the whole machine and is applied after it; a longer one shares the machine with
the processor, so reports are never more than that far behind for want of a
turn.
"""

from __future__ import annotations

import os
import time

#: How often a waiting processor looks again.
POLL_SECONDS = 0.25
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: A window shorter than this has too few clock ticks to say anything.
_MIN_WINDOW = 0.1


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CpuLoad:
    """CPU time the machine spends outside this process, from ``/proc/stat``
    (where there is none, the machine never counts as busy)."""

    def __init__(self, cpus: int | None = None) -> None:
        self.cpus = cpus or machine_cpus()
        #: More CPUs than this busy elsewhere, and the processor would compete
        #: with them for the one it runs on.
        self.busy_above = max(self.cpus - 1, 0.5)
        self._last = self._sample()
        self._others: float | None = None  # none measured yet

    @staticmethod
    def _sample() -> tuple[float, float] | None:
        """(wall clock, CPU seconds used so far by other processes)."""
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        except (OSError, ValueError):
            return None
        own = os.times()
        busy = (user + nice + system + irq + softirq + steal) / _TICKS
        return time.monotonic(), busy - own.user - own.system

    def others(self) -> float:
        """CPUs that other processes kept busy, on average, since the last look
        (a look too soon after the last repeats its answer; the first look waits
        for a window long enough to measure)."""
        now = self._sample()
        if now is None or self._last is None:
            return 0.0
        elapsed = now[0] - self._last[0]
        if elapsed < _MIN_WINDOW and self._others is None:
            time.sleep(_MIN_WINDOW - elapsed)
            now = self._sample()
            if now is None:
                return 0.0
            elapsed = now[0] - self._last[0]
        if elapsed >= _MIN_WINDOW or self._others is None:
            self._others = max(now[1] - self._last[1], 0.0) / elapsed
            self._last = now
        return self._others

    def busy(self) -> bool:
        return self.others() > self.busy_above
