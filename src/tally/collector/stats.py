"""A collector's counters for ``/metrics`` (tally.metrics).

Counted in plain Python on the hot path (a dictionary increment a request and
an answer, a list increment a durable write), and written to ``run/collectors/<slot>.json``
once a second by the worker, where the core reads them at each scrape. They
start from zero when the collector does: Prometheus takes a counter that falls
for a restart.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from tally.replace import replace_file

#: Upper bounds of the log-sync histogram, in seconds.
SYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: The endpoint of every request the collector hands to the core.
CORE = b"core"


class Stats:
    def __init__(self, run_dir: Path, slot: int) -> None:
        self.path = run_dir / "collectors" / f"{slot}.json"
        #: Requests by endpoint (a tracking path, /healthz, /m/trk, or CORE).
        self.requests: Counter[bytes] = Counter()
        #: The collector's own answers by status (the core's are relayed unread).
        self.responses: Counter[bytes] = Counter()
        self.sync_counts = [0] * (len(SYNC_BUCKETS) + 1)
        self.sync_sum = 0.0

    def synced(self, seconds: float) -> None:
        """One durable write took ``seconds`` (from the commit thread)."""
        self.sync_counts[bisect.bisect_left(SYNC_BUCKETS, seconds)] += 1
        self.sync_sum += seconds

    def publish(self, connections: int) -> None:
        """Write the counters for the core (a failure only skips this second)."""
        state = {
            "updated_ns": time.time_ns(),
            "pid": os.getpid(),
            "requests": {k.decode(): v for k, v in self.requests.items()},
            "responses": {k.decode("latin-1"): v for k, v in self.responses.items()},
            "sync": {
                "bounds": SYNC_BUCKETS,
                "counts": list(self.sync_counts),
                "sum": self.sync_sum,
            },
            "connections": connections,
        }
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(self.path, json.dumps(state).encode())
