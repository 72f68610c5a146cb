"""Group commit: many requests share one ``fdatasync`` (DESIGN §1).

Frames submitted during one turn of the event loop are joined and written by a
single commit thread; while that write is in flight, new frames gather for the
next one. Each request is answered only when the write that covers it has
returned, so a 200 always means "on disk" (SPEC §1), and latency stays at about
two syncs even under load.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tally.log.writer import SegmentWriter

log = logging.getLogger("tally.collector")

#: Called once per submitted frame, in submission order, with ``True`` when the
#: frame is durable and ``False`` when it could not be made so.
Acknowledge = Callable[[bool], None]


class GroupCommit:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, writer: SegmentWriter, *, max_pending_bytes: int
    ) -> None:
        self._loop = loop
        self._writer = writer
        self._max_pending = max_pending_bytes
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tally-commit")
        self._frames: list[bytes] = []
        self._acks: list[Acknowledge] = []
        self._pending_bytes = 0  # gathered + in flight: bounded, so memory is too
        self._scheduled = False
        self._in_flight = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.records = 0
        self.last_error: OSError | None = None

    def submit(self, frame: bytes, ack: Acknowledge) -> bool:
        """Queue a frame; ``False`` (answer 503) when the backlog is full."""
        size = len(frame)
        if self._pending_bytes + size > self._max_pending:
            return False
        self._frames.append(frame)
        self._acks.append(ack)
        self._pending_bytes += size
        if not (self._scheduled or self._in_flight):
            self._scheduled = True
            self._idle.clear()
            self._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._scheduled = False
        if not self._frames:
            self._idle.set()
            return
        data = b"".join(self._frames)
        acks = self._acks
        self._frames, self._acks = [], []
        self._in_flight = True
        future = self._loop.run_in_executor(self._executor, self._writer.write_durable, data)
        future.add_done_callback(lambda f: self._done(f, acks, len(data)))

    def _done(self, future: asyncio.Future[int], acks: list[Acknowledge], size: int) -> None:
        self._in_flight = False
        self._pending_bytes -= size
        error = future.exception()
        if error is None:
            self.last_error = None
            self.records += len(acks)
        else:
            log.error("log write of %d records failed, answering 503: %s", len(acks), error)
            self.last_error = error if isinstance(error, OSError) else OSError(str(error))
        ok = error is None
        for ack in acks:
            ack(ok)
        if self._frames:
            self._flush()
        else:
            self._idle.set()

    def healthy(self) -> bool:
        """Whether a write can be expected to succeed (for ``/healthz``)."""
        free = shutil.disk_usage(self._writer.stream_dir).free
        if free <= self._max_pending:
            return False
        # A full disk that has room again will take the next write; any other
        # write error (EIO, a removed directory) keeps the process unhealthy
        # until a write succeeds.
        return self.last_error is None or self.last_error.errno == errno.ENOSPC

    async def drain(self) -> None:
        """Wait until everything submitted is durable (or failed)."""
        await self._idle.wait()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._writer.close()
