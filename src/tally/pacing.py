"""Ingest first: the processor waits while the collectors are near capacity.

DESIGN: "a slow report, a rebuild or a migration never slows the tracking
endpoint". The lowest scheduling priority is not enough for that. Measured here
(docs/benchmarks.md), the collectors spend a good part of each request waiting
(for the client, for the disk), and any work that fills those gaps costs them
throughput, even at nice 19 or ``SCHED_IDLE``: applying records beside a
saturating load took a fifth of the collectors' requests per second.

So the processor looks before each batch. Ingest is **saturating** when both
hold over the last look's window:

- the other processes of the machine keep all its CPUs but one busy (so the
  processor would compete with them for the CPU it runs on), and
- requests queue up at the collectors: their writes hold
  ``QUEUED_RECORDS`` records or more on average. A collector writes whatever
  arrived during its previous write; at a moderate rate that is a record or
  a few, and it grows quickly as the collector nears its capacity. (The CPU
  alone cannot tell: at a quarter of their capacity, with many small writes,
  the collectors and their clients keep this machine as busy as at full load.)

While ingest is saturating, the processor starts no batch until the oldest
record it has not applied is ``defer_seconds`` old; from then on it applies as
usual, at its low priority, whatever the load. A burst shorter than that gets
the whole machine and is applied after it; a longer one shares the machine from
then on (waiting adds at most ``defer_seconds`` to the lag; a load the
processor cannot keep up with beside the collectors makes it grow further,
waiting or not).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: How often a waiting processor looks again.
POLL_SECONDS = 0.25
#: Records per durable write (averaged over every collector) from which
#: requests count as queueing. Measured here with wrk and two collectors, the
#: processor competing: 1.4 at 9,600 requests/s, 5.1 at 26,000, 10.8 at 41,000,
#: 19.7 at 51,000 (docs/benchmarks.md).
QUEUED_RECORDS = 10.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: A window shorter than this has too few clock ticks to say anything.
_MIN_WINDOW = 0.1

#: Writes and records made durable so far, summed over the collectors.
Counts = Callable[[], tuple[int, int]]


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _other_cpu_seconds() -> float | None:
    """CPU seconds the machine has spent outside this process, from
    ``/proc/stat`` (``None`` where there is none)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    except (OSError, ValueError):
        return None
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / _TICKS - own.user - own.system


class Load:
    """What the rest of the machine and the collectors did over the last window."""

    def __init__(self, counts: Counts, cpus: int | None = None) -> None:
        self.cpus = cpus or machine_cpus()
        #: More CPUs than this busy elsewhere, and the processor would compete
        #: with them for the one it runs on.
        self.busy_above = max(self.cpus - 1, 0.5)
        self._counts = counts
        self._last = self._sample()
        self._measured = False
        #: CPUs other processes kept busy, on average, over the last window.
        self.others = 0.0
        #: Records per durable write over the last window (0 without writes).
        self.queued = 0.0

    def _sample(self) -> tuple[float, float | None, tuple[int, int]]:
        return time.monotonic(), _other_cpu_seconds(), self._counts()

    def look(self) -> None:
        """Measure the window since the last look (the first look waits for a
        window long enough to measure; a look too soon after the last keeps
        its figures)."""
        elapsed = time.monotonic() - self._last[0]
        if elapsed < _MIN_WINDOW:
            if self._measured:
                return
            time.sleep(_MIN_WINDOW - elapsed)
        now = self._sample()
        (t0, cpu0, (writes0, records0)), (t1, cpu1, (writes1, records1)) = self._last, now
        if cpu0 is None or cpu1 is None:
            self.others = 0.0
        else:
            self.others = max(cpu1 - cpu0, 0.0) / (t1 - t0)
        writes = writes1 - writes0
        # (A collector that restarted counts from zero again: no figure then.)
        self.queued = (records1 - records0) / writes if writes > 0 and records1 >= records0 else 0.0
        self._last, self._measured = now, True

    def saturated(self) -> bool:
        """Whether ingest needs the whole machine (see the module's text)."""
        self.look()
        return self.others > self.busy_above and self.queued >= QUEUED_RECORDS
