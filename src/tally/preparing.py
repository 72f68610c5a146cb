"""Preparing a catch-up's batches in worker processes (``tally rebuild``, and
the live processor while it is far behind: tally.processor).

Preparing a batch (tally.store.batch.prepare: SPEC §1 to §4's normalising and
the batch's Arrow table) is pure Python that holds the GIL, ~20 µs a record:
on two threads it caps a catch-up near 50,000 records/s, whatever DuckDB does.
It touches no store, so worker processes can do it; this process then only
stages and writes the batches, in log order.

What crosses the process boundary is small: a task names a slice of one
stream (the frames that begin between two positions: a segment, since every
segment begins on a frame boundary) and the API keys as the catalog had them
when the task was handed out; a worker reads that slice of the log itself
and returns, per batch, the prepared Arrow table, the within-batch duplicate
count, the revocations, the positions of the batch's records and the damage
it met. The writer applies the batches in each stream's order, and SPEC §4's
de-duplication across batches happens in the store, as on the live path.

At most one slice a worker is in flight and one more, besides the one being
written (with one slice fewer, the worker and the writer waited for each
other: docs/benchmarks.md, "Rebuild in worker processes"), so memory is
bounded by the segment size (64 MiB of log or a little more: a writer cuts a
segment after the write that fills it). A worker holds one batch of
``limit`` records as Python objects at a time, and the Arrow tables of its
slice (~300 bytes a record).
A worker that dies makes the catch-up raise (``BrokenProcessPool``); the batch
it held is never written, and the caller (``tally rebuild``) throws away the
store it was building; the live processor writes nothing of it either, and
goes on from the positions the store holds. Workers ignore Ctrl-C: it is this
process's. A catch-up that ends early (stopped, or an error) asks its workers
to end rather than waiting for the slices they hold: SIGTERM, on which a
worker ends its slice with :class:`WorkerEnded` at its next batch. It is not
killed there and then: a worker killed while it sends a slice's batches
would leave half a message in the pool's pipe, and the pool's thread that
reads it waiting for the rest for good (so did a rebuild stopped by Ctrl-C).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing
import os
import signal
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast, overload

import pyarrow as pa

from tally.beacon import Beacon, KeyLookup, Rejected
from tally.identity_graph import Edge
from tally.log.damage import KEEP_BYTES, Damage
from tally.log.reader import Entry, LogReader
from tally.log.record import Record
from tally.log.writer import list_segments
from tally.orphans import start_pool_worker
from tally.store.batch import Prepared, prepare
from tally.store.stage import REJECT, Stage

if TYPE_CHECKING:
    from tally.store.contract import Staging

#: How often a catch-up waiting for a worker's slice looks whether it is stopped.
STOP_POLL_SECONDS = 0.1

#: The API keys as the catalog holds them: key -> (product, revoked at, ns).
KeyRows = dict[str, tuple[str, int | None]]


class WorkerEnded(Exception):
    """A worker was asked to end (SIGTERM) before its slice was prepared."""


#: Set in a worker by SIGTERM (:func:`_asked_to_end`).
_ending = threading.Event()


def default_jobs() -> int:
    """Worker processes preparing a catch-up's batches: one a CPU but the
    writing process's own, at least one. A worker prepares a record in ~14 µs
    and the writer writes it in ~16 µs (docs/benchmarks.md, "Rebuild in
    worker processes"): on two CPUs a second worker was no faster (169-171 s
    against 175 s at 10M) and took 0.4 GiB more."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max((cpus or 1) - 1, 1)


def batches(
    entries: Iterable[Entry], limit: int, limit_bytes: int
) -> Iterator[tuple[list[Entry], int]]:
    """``entries`` in batches of at most ``limit`` records and ``limit_bytes``
    of the log (their frames; a batch ends with the record that reaches
    either), each with its bytes. No entry is read past a full batch before
    it is taken: a caller may stop there."""
    batch: list[Entry] = []
    size = 0
    for entry in entries:
        batch.append(entry)
        size += entry.next_position - entry.position
        if len(batch) >= limit or size >= limit_bytes:
            yield batch, size
            batch, size = [], 0
    if batch:
        yield batch, size


def lookup_for(rows: KeyRows) -> KeyLookup:
    """The key look-up for a catalog's rows (SPEC §11: a revocation applies to
    records received at or after it)."""
    from tally.beacon import UNKNOWN_KEY, KeyStatus

    valid = {key: KeyStatus(product) for key, (product, _) in rows.items()}
    revoked = {key: KeyStatus(product, revoked=True) for key, (product, _) in rows.items()}

    def lookup(key: str, recv_ns: int) -> KeyStatus:
        found = rows.get(key)
        if found is None:
            return UNKNOWN_KEY
        revoked_ns = found[1]
        if revoked_ns is not None and recv_ns >= revoked_ns:
            return revoked[key]
        return valid[key]

    return lookup


@dataclass(frozen=True)
class Slice:
    """The records of ``stream`` whose frames begin at or after ``start`` and
    before ``end``."""

    stream: str
    start: int
    end: int


def plan(reader: LogReader, positions: dict[str, int]) -> list[Slice]:
    """The durable log after ``positions`` in slices of one segment at most,
    the streams taking turns (as the live processor gives each an equal share)."""
    per_stream: list[list[Slice]] = []
    for stream in reader.streams():
        start, end = positions.get(stream, 0), reader.durable(stream)
        cuts = [base for base in list_segments(reader.log_dir / stream) if start < base < end]
        bounds = [start, *cuts, end]
        per_stream.append([Slice(stream, a, b) for a, b in itertools.pairwise(bounds) if a < b])
    turns: list[Slice] = []
    for index in range(max((len(s) for s in per_stream), default=0)):
        turns.extend(s[index] for s in per_stream if index < len(s))
    return turns


@dataclass
class Part:
    """One batch of a slice, prepared by a worker (what crosses back)."""

    stream: str
    positions: array[int]  # of each record, in log order
    next_positions: array[int]
    table: pa.Table | None  # Stage.freeze(); None when nothing applies
    duplicates: int  # within the batch (SPEC §4)
    revocations: list[tuple[str, Edge]]
    keys: KeyRows  # as the worker had them
    #: Past damage that ends the batch's part of its stream (Prepared.reach).
    reach: int = 0
    damage: list[tuple[Damage, bytes]] = field(default_factory=list)
    failed: bool = False  # prepare met a bug: the writer prepares it again itself

    @property
    def records(self) -> int:
        return len(self.positions)


#: (log directory, slice, API keys, blocked identities, batch records, batch bytes)
_Task = tuple[Path, Slice, KeyRows, frozenset[str], int, int]

#: A worker's key look-up, kept while the catalog's rows stay the same.
_lookups: dict[str, tuple[KeyRows, KeyLookup]] = {}


def _prepare_slice(task: _Task) -> list[Part]:
    """A worker's task: read one slice of the log and prepare its batches."""
    log_dir, piece, rows, blocked, limit, limit_bytes = task
    cached = _lookups.get("keys")
    if cached is None or cached[0] != rows:
        cached = _lookups["keys"] = (rows, lookup_for(rows))
    keys = cached[1]
    parts: list[Part] = []
    met: list[tuple[Damage, bytes]] = []

    def told(damage: Damage, data: bytes) -> None:
        if damage.start < piece.end:  # beyond it, the next slice's to tell
            met.append((damage, data[:KEEP_BYTES]))

    def cut(batch: list[Entry]) -> None:
        nonlocal met
        after = batch[-1].next_position if batch else piece.start
        reach = max((d.end for d, _ in met), default=0)
        parts.append(_prepared_part(piece.stream, batch, rows, keys, blocked, after, reach, met))
        met = []

    entries = LogReader(log_dir).read(piece.stream, piece.start, told)
    within = itertools.takewhile(lambda entry: entry.position < piece.end, entries)
    for batch, _ in batches(within, limit, limit_bytes):
        if _ending.is_set():  # looked at a batch, not a record: off the hot path
            raise WorkerEnded(f"asked to end within {piece.stream} at {piece.start}")
        cut(batch)
    if met:
        cut([])
    gc.collect()
    return parts


def _prepared_part(
    stream: str,
    batch: list[Entry],
    rows: KeyRows,
    keys: KeyLookup,
    blocked: frozenset[str],
    after: int,
    reach: int,
    met: list[tuple[Damage, bytes]],
) -> Part:
    prepared = prepare(batch, keys, blocked=blocked)
    return Part(
        stream,
        array("q", [e.position for e in batch]),
        array("q", [e.next_position for e in batch]),
        prepared.stage.freeze() if prepared.error is None and len(prepared.stage) else None,
        prepared.stage.duplicates,
        prepared.revocations,
        rows,
        reach if reach > after else 0,
        met,
        failed=prepared.error is not None,
    )


def _asked_to_end(signum: int, frame: FrameType | None) -> None:
    _ending.set()


def _start_worker(nice: int, parent: int) -> None:
    start_pool_worker(parent)
    signal.signal(signal.SIGTERM, _asked_to_end)
    # At the writing process's priority: at nice 10 other programs took the
    # CPU ahead of the workers (docs/benchmarks.md, "Rebuild in worker processes").
    # A worker inherits the nice of the thread that started it; the live
    # processor's (nice 19 in `tally serve`) is said again here all the same.
    with contextlib.suppress(OSError):
        if nice > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    # A batch makes about ten container objects a record, none of them in a
    # cycle: the collector would scan them again and again (tally.processor's
    # gc_paused). A worker collects after each slice instead.
    gc.disable()


# -- the writing side ---------------------------------------------------------------------------

#: The stand-in of a reject for Store._remember_identities (which looks at beacons only).
_A_REJECT = Rejected("internal_error", "", 0, None, (), 0, b"")  # type: ignore[arg-type]


class PreparedStage(Stage):
    """A batch's :class:`Stage` made again from the table a worker built: what
    the store's write reads of it (the table, the within-batch duplicates, the
    identities of the kept beacons, and :meth:`drop`)."""

    def __init__(self, table: pa.Table, duplicates: int) -> None:
        super().__init__()
        self._frozen = table
        self.duplicates = duplicates
        columns = [table.column(name).to_pylist() for name in ("kind", "product", "identity")]
        self.parsed = [
            _A_REJECT
            if kind == REJECT
            else Beacon(kind, product, identity, None, None, None, (), 0, 0, 0, (), ())
            for kind, product, identity in zip(*columns, strict=True)
        ]
        self.keep = [True] * len(self.parsed)

    def drop(self, keys: set[tuple[str, int]]) -> None:
        if keys:
            streams = self._frozen.column("stream").to_pylist()  # type: ignore[union-attr]
            positions = self._frozen.column("position").to_pylist()  # type: ignore[union-attr]
            for index, at in enumerate(zip(streams, positions, strict=True)):
                if at in keys:
                    self.keep[index] = False


class _Mark:
    """Where a record lies, for the store's positions; its record is read from
    the log only if the store asks (a batch applied record by record)."""

    __slots__ = ("_reader", "next_position", "position", "stream")

    def __init__(self, reader: LogReader, stream: str, position: int, next_position: int) -> None:
        self._reader, self.stream = reader, stream
        self.position, self.next_position = position, next_position

    @property
    def record(self) -> Record:
        return _entry_at(self._reader, self.stream, self.position).record


def _entry_at(reader: LogReader, stream: str, position: int) -> Entry:
    entry = next(iter(reader.read(stream, position)), None)
    if entry is None or entry.position != position:
        raise RuntimeError(f"the log of {stream} holds no record at {position} any more")
    return entry


class _Marks(Sequence[Entry]):
    """A part's records as the store's write sees them (Prepared.entries)."""

    def __init__(self, reader: LogReader, part: Part) -> None:
        self._reader, self._part = reader, part

    def __len__(self) -> int:
        return self._part.records

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...
    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        part = self._part
        return cast(
            Entry,
            _Mark(self._reader, part.stream, part.positions[index], part.next_positions[index]),
        )

    def __iter__(self) -> Iterator[Entry]:
        reader, stream = self._reader, self._part.stream
        for position, after in zip(self._part.positions, self._part.next_positions, strict=True):
            yield cast(Entry, _Mark(reader, stream, position, after))


def prepared_of(part: Part, reader: LogReader, blocked: frozenset[str]) -> Prepared:
    """The :class:`Prepared` the store writes for a worker's part (the keys
    the worker had, should the store apply it record by record)."""
    keys = lookup_for(part.keys)
    if part.failed:  # prepared again here, where Store.write applies it record by record
        entries = [_entry_at(reader, part.stream, p) for p in part.positions]
        prepared = prepare(entries, keys, blocked=blocked)
    else:
        stage = Stage() if part.table is None else PreparedStage(part.table, part.duplicates)
        prepared = Prepared(_Marks(reader, part), keys, blocked, stage, part.revocations)
    prepared.reach = {part.stream: part.reach} if part.reach else {}
    return prepared


@dataclass
class Pool:
    """Worker processes preparing the slices of a log, in order."""

    log_dir: Path
    jobs: int
    blocked: frozenset[str]
    limit: int
    limit_bytes: int
    #: The workers' priority (at least the starting thread's, which they inherit).
    nice: int = 0

    def parts(
        self,
        slices: Iterable[Slice],
        rows: Callable[[], KeyRows],
        stop: threading.Event | None = None,
    ) -> Generator[Part, None, None]:
        """Every slice's parts in order; ``rows`` gives the keys for each slice
        as it is handed out (the catalog, read again each time: after the
        slice's records were durable, as the live path reads the keys after
        the records of a batch). ``slices`` is taken one at a time, as
        workers become free. Once ``stop`` is set the parts end (without
        waiting for a worker's slice); closed early, the workers are
        terminated."""
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        executor = ProcessPoolExecutor(
            self.jobs,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self.nice, os.getpid()),
        )
        pending: deque[Future[list[Part]]] = deque()
        todo = iter(slices)
        try:
            while True:
                while len(pending) <= self.jobs and (piece := next(todo, None)) is not None:
                    task = (self.log_dir, piece, rows(), self.blocked, self.limit, self.limit_bytes)
                    pending.append(executor.submit(_prepare_slice, task))
                if not pending:
                    return
                while True:
                    try:
                        done = pending[0].result(timeout=STOP_POLL_SECONDS)
                        break
                    except TimeoutError:
                        if stop is not None and stop.is_set():
                            return
                pending.popleft()
                yield from done
        finally:
            for future in pending:
                future.cancel()
            if pending:  # ended early: what the workers hold will not be written
                _ask_to_end(executor)
            executor.shutdown(wait=True, cancel_futures=True)


def _ask_to_end(executor: ProcessPoolExecutor) -> None:
    """Ask the executor's workers to end their slices at their next batch
    (SIGTERM: :func:`_asked_to_end`); they only read the log."""
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.terminate()


def write_in_order(
    source: Callable[[], Prepared | None],
    staging: Staging,
    write: Callable[[Prepared], Any],
    initializer: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Write the batches ``source`` gives, in order, until it gives ``None``;
    the next is made and staged on a thread of its own (started with
    ``initializer``) while one is written (DuckDB releases the GIL as it
    writes). The seconds spent writing, and waiting for the next batch staged."""

    def next_staged() -> Prepared | None:
        prepared = source()
        if prepared is None:
            return None
        staging.stage(prepared)
        return prepared

    ahead: Future[Prepared | None] | None = None
    writing = waiting = 0.0
    with ThreadPoolExecutor(1, thread_name_prefix="tally-stage", initializer=initializer) as stager:
        try:
            ahead = stager.submit(next_staged)
            while True:
                started = time.perf_counter()
                prepared = ahead.result()
                waited = time.perf_counter()
                waiting += waited - started
                if prepared is None:
                    break
                ahead = stager.submit(next_staged)
                write(prepared)
                writing += time.perf_counter() - waited
            ahead = None
        finally:
            if ahead is not None:  # staged, never to be written: free its table
                with contextlib.suppress(Exception):
                    if (left := ahead.result()) is not None:
                        staging.unstage(left)
    return writing, waiting
