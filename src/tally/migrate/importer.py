"""Writing an import's records to its log stream, resumably.

:func:`run_import` takes the source's items with the position after each,
frames them (:mod:`tally.migrate.records`) and appends them to the import's
stream in chunks; each chunk is durable before the checkpoint moves past it
and before progress is told. Every record of a chunk has the chunk's receive
time, so the total order of SPEC §11 follows the source's order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from tally.catalog import Catalog
from tally.errors import Conflict, NotFound, Unavailable
from tally.log.writer import SegmentWriter, StreamLocked
from tally.migrate.checkpoint import COMPLETE, ImportState, write_state
from tally.migrate.records import Bad, Row, frame
from tally.migrate.sources import Position

#: Records a chunk: one write, one sync, one checkpoint.
CHUNK_RECORDS = 20_000
CHUNK_BYTES = 4 * 1024 * 1024
#: How often the read-ahead's threads look whether they are to stop.
POLL_SECONDS = 0.1

Items = Iterable[tuple[Row | Bad | None, Position]]


class Framed(NamedTuple):
    """A chunk of framed records, and the source's position after it."""

    data: bytes
    records: int
    rejected: dict[str, int]  # lines that are not records, by reason
    position: Position


def product_key(catalog: Catalog, product: str) -> str:
    """The API key imported records are written with: the product's first active one."""
    found = catalog.product(product)  # NotFound names it
    for key in found.keys:
        if key.revoked_ns is None:
            return key.key
    raise NotFound(f"product {product!r} has no active API key: add one with `tally keys add`",
                   code="no_active_key")  # fmt: skip


def check_resumable(state: ImportState | None, fresh: ImportState) -> ImportState:
    """The state to go on from: ``fresh`` for a new import, else the saved one
    if it is the same import (a name names one source)."""
    if state is None:
        return fresh
    if (state.format, state.source, state.product) != (fresh.format, fresh.source, fresh.product):
        raise Conflict(f"the import {state.name!r} is of {state.format} {state.source} into "
                       f"{state.product}: give this one another --name",
                       code="import_exists", field="name")  # fmt: skip
    return state


def run_import(
    log_dir: Path,
    state: ImportState,
    key: str,
    items: Items,
    on_progress: Callable[[ImportState], object] = lambda _: None,
    *,
    complete: bool = True,
    chunk_records: int = CHUNK_RECORDS,
    stop: Callable[[], bool] = lambda: False,
) -> ImportState:
    """Append ``items`` to the import's stream from ``state``; the state at the
    end (complete once every item is durable, if ``complete``). ``stop`` is
    asked after each chunk: true, the import ends there, to be resumed."""
    chunks = frame_items(items, key, state.position, chunk_records)
    return write_chunks(log_dir, state, chunks, on_progress, complete=complete, stop=stop)


def frame_items(
    items: Items, key: str, start: Position, chunk_records: int = CHUNK_RECORDS
) -> Iterator[Framed]:
    """The items framed in chunks (one receive time a chunk), in one process."""
    chunk: list[bytes] = []
    size = 0
    recv_ns = next_time(0)
    rejected: dict[str, int] = {}
    reached = start
    for item, position in items:
        reached = position
        if item is None:
            continue
        data = frame(item, key, recv_ns)
        chunk.append(data)
        size += len(data)
        if isinstance(item, Bad):
            rejected[item.reason] = rejected.get(item.reason, 0) + 1
        if len(chunk) >= chunk_records or size >= CHUNK_BYTES:
            yield Framed(b"".join(chunk), len(chunk), rejected, position)
            chunk, size, rejected = [], 0, {}
            recv_ns = next_time(recv_ns)
    yield Framed(b"".join(chunk), len(chunk), rejected, reached)


def write_chunks(
    log_dir: Path,
    state: ImportState,
    chunks: Iterable[Framed],
    on_progress: Callable[[ImportState], object] = lambda _: None,
    *,
    complete: bool = True,
    stop: Callable[[], bool] = lambda: False,
) -> ImportState:
    """Append framed chunks to the import's stream, each durable before the
    checkpoint moves past it and progress is told."""
    try:
        writer = SegmentWriter(log_dir / state.stream)
    except StreamLocked as exc:
        raise Unavailable(f"the import {state.name!r} is running in another process",
                          code="import_running") from exc  # fmt: skip
    try:
        for chunk in chunks:
            if chunk.records:
                state.log_position = writer.write_durable(chunk.data, chunk.records)
                state.records += chunk.records
                for reason, n in chunk.rejected.items():
                    state.rejected[reason] = state.rejected.get(reason, 0) + n
            state.position = chunk.position
            write_state(log_dir, state)
            on_progress(state)
            if stop():
                return state
        if complete and not stop():  # chunks may have ended because a stop was asked
            state.state = COMPLETE
            write_state(log_dir, state)
        return state
    finally:
        writer.close()


class ReadAhead:
    """Chunks made in a thread of their own, at most ``depth`` ahead of the
    one being written: the log's writes and syncs, and the checkpoint's,
    release the GIL, so making the next chunks goes on meanwhile. Nothing
    changes in what is written nor in its order; :meth:`close` (or leaving a
    ``with``) stops the thread after the chunk it is making. Iterating ends
    early, without an error, once ``stop`` is true while waiting for a chunk:
    a stop asked for (Ctrl-C) need not wait for the source."""

    def __init__(
        self, chunks: Iterable[Framed], depth: int = 2, stop: Callable[[], bool] = lambda: False
    ) -> None:
        self._queue: queue.Queue[tuple[Framed | None, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._asked = stop
        self._thread = threading.Thread(target=self._make, args=(chunks,), daemon=True,
                                        name="import-chunks")  # fmt: skip
        self._thread.start()

    def __iter__(self) -> Iterator[Framed]:
        while True:
            try:
                chunk, error = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._asked():
                    return
                continue
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _make(self, chunks: Iterable[Framed]) -> None:
        made = iter(chunks)
        try:
            for chunk in made:
                if not self._put(chunk, None):
                    return
            self._put(None, None)
        except BaseException as exc:
            self._put(None, exc)
        finally:
            close = getattr(made, "close", None)
            if close is not None:
                close()

    def _put(self, chunk: Framed | None, error: BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((chunk, error), timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False


def next_time(previous: int) -> int:
    """A receive time after ``previous``: chunks keep the source's order even
    if the clock steps back."""
    return max(time.time_ns(), previous + 1)
