"""Health, as ``/healthz`` tells it (docs/operations.md).

Three answers, from what each process knows:

- ``unavailable`` (503): this collector cannot make a record durable (its last
  log write failed and the cause is still there: the disk still full, or for
  10 s after another error): tracking calls get 503.
- ``degraded`` (200): tracking works, but something needs an operator: the
  last log write failed (and may work again), little disk left (at or below
  ``--backlog-mib``), or the processor failing, behind (its oldest unapplied
  record older than ``behind_seconds``), or silent.
- ``ok`` (200).

The collectors answer ``/healthz`` themselves, so that it works while the core
is busy; the processor tells them how it is through ``run/processor.json``,
rewritten every second or so (not synced: it describes the running server).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tally.permissions import FILE_MODE
from tally.settings import Settings

if TYPE_CHECKING:
    from tally.processor import Processor

PROCESSOR_FILE = "processor.json"
#: How often the processor rewrites its file, and after how long without a
#: word the collectors call it silent.
TELL_EVERY_SECONDS = 1.0
SILENT_SECONDS = 30.0
OK, DEGRADED, UNAVAILABLE = "ok", "degraded", "unavailable"


def behind_seconds(settings: Settings) -> float:
    """How far behind the processor may be before health says so: a burst
    that the processor waits out (``--defer-seconds``) is not a problem."""
    return max(60.0, 2 * settings.defer_seconds)


#: ``run/processor.json`` is this long, padded with spaces, and rewritten in
#: place: a disk with no byte free must not silence the processor (a new file
#: could not be written there, the blocks of this one are already allocated).
_FILE_BYTES = 4096


class Health:
    """The processor's side: writes ``run/processor.json``."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.run_dir / PROCESSOR_FILE
        self._told = 0.0
        self._fd: int | None = None

    def tell(self, processor: Processor, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._told < TELL_EVERY_SECONDS:
            return
        self._told = now
        oldest = None
        with contextlib.suppress(Exception):  # a failing store must not stop the telling
            oldest = processor.oldest_unapplied_ns()
        state = {
            "updated_ns": time.time_ns(),
            "error": processor.error.to_json() if processor.error else None,
            "lag_seconds": round(max(time.time_ns() - oldest, 0) / 1e9, 3) if oldest else 0.0,
            "waiting_for_ingest": processor.waiting_for_ingest,
        }
        data = json.dumps(state).encode()[:_FILE_BYTES].ljust(_FILE_BYTES)
        with contextlib.suppress(OSError):
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            os.pwrite(self._fd, data, 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_processor(run_dir: Path) -> dict[str, Any] | None:
    for _ in range(3):  # a read may meet a rewrite half done: read again
        try:
            found = json.loads((run_dir / PROCESSOR_FILE).read_bytes())
        except OSError:
            return None
        except ValueError:
            continue
        return found if isinstance(found, dict) else None
    return None


def verdict(
    settings: Settings, *, can_write: bool, write_error: str | None, disk_low: bool
) -> dict[str, Any]:
    """What ``/healthz`` answers for a collector in this state."""
    if not can_write:
        return {"status": UNAVAILABLE, "reasons": [f"cannot write the log: {write_error}"]}
    reasons = []
    if write_error is not None:  # it may work again: traffic will tell
        reasons.append(f"the last log write failed: {write_error}")
    if disk_low:
        reasons.append(f"disk almost full: {settings.backlog_mib} MiB or less free for the log")
    processor = read_processor(settings.run_dir)
    if processor is None or time.time_ns() - processor.get("updated_ns", 0) > SILENT_SECONDS * 1e9:
        reasons.append("the processor has not reported for 30 s")
    else:
        if processor.get("error"):
            error = processor["error"]
            reasons.append(f"the processor cannot apply records since {error['since']}: "
                           f"{error['message']}")  # fmt: skip
        lag = float(processor.get("lag_seconds", 0.0))
        if lag > behind_seconds(settings):
            reasons.append(f"the processor is {lag:.0f} s behind")
    return {"status": DEGRADED if reasons else OK, "reasons": reasons}
