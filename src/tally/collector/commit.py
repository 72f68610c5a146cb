"""Group commit: many requests share one ``fdatasync`` (DESIGN §1).

Frames submitted during one turn of the event loop are joined and queued for a
dedicated commit thread. The thread writes whatever has queued up as soon as the
previous write returns, in one synchronous write (``O_DSYNC``, see
:mod:`tally.log.writer`), and hands the result back to the loop with one call.
Each request is answered only when the write that covers it is durable, so a 200
always means "on disk" (SPEC §1).

A dedicated thread rather than ``run_in_executor``: measured here, handing each
batch through an executor future cost ~25% of the collector's throughput. The
thread takes the GIL as seldom as it can, since the event loop holds it most of
the time and every hand-back is a wait: batches come through a
``queue.SimpleQueue`` (its ``get`` waits in C, without the GIL; a
``threading.Condition`` took it several times a batch), and the write is one
system call (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable

from tally.collector.stats import Stats
from tally.log.writer import SegmentWriter

log = logging.getLogger("tally.collector")

#: Called once per submitted frame, in submission order, with ``True`` when the
#: frame is durable and ``False`` when it could not be made so.
Acknowledge = Callable[[bool], None]

_Batch = tuple[bytes, list[Acknowledge]]
#: After a write failed for a full disk, this much free space makes the log
#: writable again (a batch, and the zeros ahead of it: tally.log.writer).
ROOM_AFTER_ENOSPC = 8 * 1024 * 1024
#: After a write failed otherwise (EIO, say), the collector says it cannot write
#: for this long, then lets traffic test it again (a load balancer that took it
#: out would otherwise never send the write that shows it works again).
UNAVAILABLE_AFTER_FAILURE_SECONDS = 10.0


class GroupCommit:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: SegmentWriter,
        *,
        max_pending_bytes: int,
        stats: Stats | None = None,
    ) -> None:
        self._loop = loop
        self._writer = writer
        self._stats = stats
        self._max_pending = max_pending_bytes
        self._frames: list[bytes] = []
        self._acks: list[Acknowledge] = []
        self._pending_bytes = 0  # gathered + queued + in flight: bounded, so memory is too
        self._scheduled = False
        self._outstanding = 0  # batches handed to the thread and not yet answered
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()  # None: stop
        self._idle = asyncio.Event()
        self._idle.set()
        self.records = 0
        self.last_error: OSError | None = None
        self._failed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="tally-commit", daemon=True)
        self._thread.start()

    def submit(self, frame: bytes, ack: Acknowledge) -> bool:
        """Queue a frame; ``False`` (answer 503) when the backlog is full."""
        size = len(frame)
        if self._pending_bytes + size > self._max_pending:
            return False
        self._frames.append(frame)
        self._acks.append(ack)
        self._pending_bytes += size
        if not self._scheduled:
            self._scheduled = True
            self._idle.clear()
            self._loop.call_soon(self._hand_over)
        return True

    def _hand_over(self) -> None:
        """End of a loop turn: what it gathered goes to the commit thread."""
        self._scheduled = False
        if not self._frames:
            if not self._outstanding:
                self._idle.set()
            return
        batch = (b"".join(self._frames), self._acks)
        self._frames, self._acks = [], []
        self._outstanding += 1
        self._queue.put(batch)

    def _run(self) -> None:
        write = self._writer.write_durable
        take, take_waiting = self._queue.get, self._queue.get_nowait
        closing = False
        while not closing:
            first = take()
            if first is None:
                return
            batches = [first]
            while True:  # whatever else queued up during the last write
                try:
                    more = take_waiting()
                except queue.Empty:
                    break
                if more is None:
                    closing = True  # after this last write
                    break
                batches.append(more)
            data = first[0] if len(batches) == 1 else b"".join(d for d, _ in batches)
            error: BaseException | None = None
            started = time.perf_counter()
            try:
                write(data, sum(len(acks) for _, acks in batches))
            except BaseException as exc:  # answered 503 on the loop
                error = exc
            if self._stats is not None:
                self._stats.synced(time.perf_counter() - started)
            self._loop.call_soon_threadsafe(self._done, batches, len(data), error)
            if error is None:
                self._writer.preallocate_ahead()  # while the answers go out

    def _done(self, batches: list[_Batch], size: int, error: BaseException | None) -> None:
        self._outstanding -= len(batches)
        self._pending_bytes -= size
        count = sum(len(acks) for _, acks in batches)
        if error is None:
            self.last_error = None
            self.records += count
        else:
            log.error("log write of %d records failed, answering 503: %s", count, error)
            self.last_error = error if isinstance(error, OSError) else OSError(str(error))
            self._failed_at = time.monotonic()
        ok = error is None
        for _, acks in batches:
            for ack in acks:
                ack(ok)
        if not (self._outstanding or self._frames or self._scheduled):
            self._idle.set()

    def can_write(self) -> bool:
        """Whether a write can be expected to succeed (for ``/healthz``): until
        a write fails, and after a failure once its cause is gone."""
        error = self.last_error
        if error is None:
            return True
        # A full disk that has room again takes the next write. A stream that
        # could not even cut a failed write back refuses writes until the
        # collector restarts; any other error is tried again after a while.
        if self._writer.broken:
            return False
        if error.errno == errno.ENOSPC:
            return self._free() > ROOM_AFTER_ENOSPC
        return time.monotonic() - self._failed_at > UNAVAILABLE_AFTER_FAILURE_SECONDS

    def disk_low(self) -> bool:
        """Whether the disk has no more room than the backlog may take."""
        return self._free() <= self._max_pending

    def _free(self) -> int:
        try:
            return shutil.disk_usage(self._writer.stream_dir).free
        except OSError:
            return 0

    async def drain(self) -> None:
        """Wait until everything submitted is durable (or failed)."""
        await self._idle.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
