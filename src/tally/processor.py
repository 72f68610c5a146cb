"""The processor (DESIGN §3): the single writer of the store.

It tails every log stream from the positions the store has applied, and applies
what it reads in batches; each batch is committed together with the positions it
reaches, so a crash neither loses nor doubles a record. It holds the store
through the write side of the store contract (tally.store.contract), not a
particular engine.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tally.beacon import KeyLookup
from tally.health import Health
from tally.log.damage import Damage, Quarantine
from tally.log.reader import Entry, LogReader
from tally.log.writer import write_applied
from tally.pacing import POLL_SECONDS, Load
from tally.preparing import (
    KeyRows,
    Pool,
    Slice,
    WorkerEnded,
    batches,
    default_jobs,
    lookup_for,
    plan,
    prepared_of,
    write_in_order,
)
from tally.settings import Settings
from tally.store.batch import ApplyStats, Prepared, StoreFailure, prepare
from tally.store.contract import Engine
from tally.views.rejects import replayable

log = logging.getLogger("tally.processor")

BATCH_RECORDS = 50_000
#: At most this much of the log a batch (its records' framed bytes), whatever
#: ``BATCH_RECORDS`` allows: a prepared batch's Python objects take ~5 times
#: its log bytes (measured: 8 MiB of tracking calls, 21,921 records, 42 MB),
#: and CPython keeps much of what its largest batches took. Far behind on
#: large records, the processor catches up in slices of this size.
BATCH_BYTES = 8 * 1024 * 1024
PROCESSOR_NICE = 19
GC_EVERY_SECONDS = 10.0
#: Python's switch interval while two threads share a catch-up (the default is
#: 5 ms): the writing thread takes the GIL back after each of its ~30 DuckDB
#: statements a batch, and waited up to this long each time for the preparing
#: thread to let go of it (measured: 35,000 -> 42,000 records/s).
SWITCH_INTERVAL = 0.0005
#: After the store fails, the processor retries after this long, doubling up to
#: ``RETRY_MAX_SECONDS``: it resumes within that long of the cause going away.
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 2.0
#: How often the processor tells the collectors how it is (``run/processor.json``).
HEALTH_EVERY_SECONDS = 1.0
#: Inside `tally serve`, this many segments behind (``--segment-mib`` each, of
#: the log not applied, summed over the streams; with 64 MiB ~950,000 tracking
#: calls of ~210 bytes) and not waiting for ingest, the processor prepares its
#: batches in worker processes (tally.preparing; --catch-up-jobs), as
#: `tally rebuild` does ...
POOL_FROM_SEGMENTS = 3
#: ... until less than this (or one segment, if smaller) is left past the
#: slices handed out; the workers are then shut down and the last batches are
#: read on the thread path (each record's latency as before).
POOL_UNTIL_BYTES = 2 * BATCH_BYTES
#: After the workers failed (one killed, out of memory), the thread path
#: alone for this long.
POOL_PAUSE_SECONDS = 60.0


class CatalogKeys:
    """API keys as the processor sees them, re-read before every batch so that
    a key added or revoked with the CLI takes effect at once (SPEC §11: a
    revocation applies to records received after it)."""

    def __init__(self, catalog_path: Path) -> None:
        self._path = catalog_path
        self._keys: KeyRows = {}

    def rows(self) -> KeyRows:
        """The keys as the catalog holds them now (as last read, if it is gone)."""
        if self._path.exists():
            db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=10)
            try:
                rows = db.execute("SELECT key, product, revoked_ns FROM api_keys").fetchall()
            finally:
                db.close()
            self._keys = {key: (product, revoked) for key, product, revoked in rows}
        return self._keys

    def refresh(self) -> KeyLookup:
        return lookup_for(self.rows())


@dataclass(frozen=True)
class Failure:
    """Why the processor is not applying records, and since when."""

    message: str
    since_ns: int
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since_ns / 1e9))
        return {"message": self.message, "since": since, "attempts": self.attempts}


@dataclass
class Progress:
    """What the processor has done since it started (for status and tests)."""

    batches: int = 0
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    last_batch_seconds: float = 0.0
    #: Of a catch-up in processes: seconds writing, and waiting for batches.
    writing_seconds: float = 0.0
    waiting_seconds: float = 0.0

    def add(self, stats: ApplyStats, seconds: float) -> None:
        self.batches += 1
        self.records += stats.records
        self.applied += stats.applied
        self.duplicates += stats.duplicates
        self.rejected.update(stats.rejected)
        self.last_batch_seconds = seconds


class Processor:
    def __init__(
        self, settings: Settings, store: Engine, *, keys: Callable[[], KeyLookup] | None = None
    ) -> None:
        """``keys`` gives the API keys before every batch; by default, the catalog's."""
        self.settings = settings
        self.store = store
        self.quarantine = Quarantine(settings.data_dir, "processor")
        self.reader = LogReader(settings.log_dir, self.quarantine.keep)
        #: The catalog's keys, unless the caller gives its own (then no worker
        #: process can prepare batches: see catch_up_in_processes).
        self.catalog_keys: CatalogKeys | None = None
        if keys is None:
            self.catalog_keys = CatalogKeys(settings.catalog_path)
            self.keys: Callable[[], KeyLookup] = self.catalog_keys.refresh
        else:
            self.keys = keys
        self.progress = Progress()
        self.lock = threading.Lock()  # held while a batch is applied (replay takes it too)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nice = False  # inside `tally serve`: the processor's threads yield to ingest
        self._load: Load | None = None  # inside `tally serve`: see _defer_to_ingest
        #: Whether the processor is waiting for ingest to leave it a CPU (tally.pacing).
        self.waiting_for_ingest = False
        #: Worker processes preparing batches while far behind (0: none).
        self.jobs = default_jobs() if settings.catch_up_jobs is None else settings.catch_up_jobs
        self._pool_failed_at = -POOL_PAUSE_SECONDS
        #: Set while the processor cannot apply (the store fails, or a bug).
        self.error: Failure | None = None
        self._applied_hint: dict[str, int] = {}
        self._health = Health(settings)

    def read_batch(
        self, limit: int = BATCH_RECORDS, positions: dict[str, int] | None = None
    ) -> list[Entry]:
        """The next records of every stream after ``positions`` (by default the
        applied ones)."""
        return self._read(limit, positions)[0]

    def _read(
        self, limit: int, positions: dict[str, int] | None = None, room: int = BATCH_BYTES
    ) -> tuple[list[Entry], dict[str, int]]:
        """The next records, and per stream the position past damage that ends
        its part (the reader skipped it; it is quarantined and must not be read
        again)."""
        if positions is None:
            positions = self.store.positions()
        streams = self.reader.streams()
        if not streams:
            return [], {}
        batch: list[Entry] = []
        reach: dict[str, int] = {}
        last = {stream: positions.get(stream, 0) for stream in streams}
        # Each stream gets an equal share; what idle streams leave goes to
        # those with more (an import's stream beside quiet collectors).
        pending = streams
        while pending and len(batch) < limit and room > 0:
            share = max((limit - len(batch)) // len(pending), 1), max(room // len(pending), 1)
            more = []
            for stream in pending:
                records, size = self._read_stream(stream, last, share, batch, reach)
                room -= size
                if records >= share[0] or size >= share[1]:
                    more.append(stream)
            pending = more
        return batch, reach

    def _read_stream(
        self,
        stream: str,
        last: dict[str, int],
        share: tuple[int, int],
        batch: list[Entry],
        reach: dict[str, int],
    ) -> tuple[int, int]:
        """Records of ``stream`` after ``last[stream]`` into ``batch``, up to
        ``share`` (records, bytes); how many records and bytes it took."""
        damaged_to = 0

        def told(damage: Damage, data: bytes) -> None:
            nonlocal damaged_to
            self.quarantine.keep(damage, data)
            damaged_to = max(damaged_to, damage.end)

        entries = self.reader.read(stream, last[stream], told)
        taken, size = next(batches(entries, *share), ([], 0))
        if taken:
            batch.extend(taken)
            last[stream] = taken[-1].next_position
        n = len(taken)
        if damaged_to > last[stream]:
            reach[stream] = max(reach.get(stream, 0), damaged_to)
        return n, size

    def _prepare(self, batch: list[Entry], reach: dict[str, int] | None = None) -> Prepared:
        prepared = prepare(batch, self.keys(), blocked=self.settings.blocked_identities)
        prepared.reach = reach or {}
        return prepared

    def _write(self, prepared: Prepared) -> int:
        """Write a prepared batch (the caller holds the lock); how many records it held."""
        started = time.perf_counter()
        stats = self.store.write(prepared, cap=self.settings.max_identities_per_person)
        self.progress.add(stats, time.perf_counter() - started)
        return len(prepared.entries)

    def step(self, limit: int = BATCH_RECORDS) -> int:
        """Apply one batch; how many records it held."""
        with self.lock, gc_paused():
            batch, reach = self._read(limit)
            if not batch and not reach:
                return 0
            return self._write(self._prepare(batch, reach))

    def replay(self, product: str | None, reason: str | None = None) -> dict[str, Any]:
        """Re-apply the rejects of ``product`` (and those with unknown keys)."""
        with self.lock:
            with self.store.reading() as con:  # the lock holds the writer still
                positions = replayable(con, product, reason)
            entries = []
            for stream, position in positions:
                entry = next(iter(self.reader.read(stream, position)), None)
                if entry is not None and entry.position == position:
                    entries.append(entry)
            if not entries:
                return {"replayed": 0, "applied": 0, "duplicates": 0, "rejected": {}}
            stats = self.store.replay(
                entries,
                self.keys(),
                blocked=self.settings.blocked_identities,
                cap=self.settings.max_identities_per_person,
            )
        return {
            "replayed": len(entries),
            "applied": stats.applied,
            "duplicates": stats.duplicates,
            "rejected": {str(k): v for k, v in sorted(stats.rejected.items())},
        }

    def catch_up(
        self,
        on_batch: Callable[[int], None] | None = None,
        *,
        stop: threading.Event | None = None,
        pause: Callable[[dict[str, int]], bool] | None = None,
        limit: int = BATCH_RECORDS,
        limit_bytes: int = BATCH_BYTES,
    ) -> int:
        """Apply until nothing is left, or ``stop`` is set, or ``pause`` says so;
        the number of records applied. ``pause`` is asked before each further
        batch is read, with the positions it would start from; either ends the
        catch-up after the batch in hand. A batch holds at most ``limit``
        records and ``limit_bytes`` of the log.

        Two batches are in hand at once: while one is written, a second thread
        reads and prepares the next (DuckDB releases the GIL while it writes), so
        catching up uses two cores. Positions are still committed with the batch
        that reaches them, so stopping or crashing anywhere loses nothing.
        """
        with self.lock:
            positions = self.store.positions()
        batch, reach = self._read(limit, positions, limit_bytes)
        if not batch and not reach:
            return 0
        first: tuple[list[Entry], dict[str, int]] | None = (batch, reach)

        def source() -> Prepared | None:
            nonlocal first, positions
            if first is None:
                if (stop is not None and stop.is_set()) or (pause is not None and pause(positions)):
                    return None
                batch, reach = self._read(limit, positions, limit_bytes)
                if not batch and not reach:
                    return None
            else:
                (batch, reach), first = first, None
            positions = dict(positions)
            for entry in batch:
                positions[entry.stream] = max(positions.get(entry.stream, 0), entry.next_position)
            for stream, position in reach.items():
                positions[stream] = max(positions.get(stream, 0), position)
            return self._prepare(batch, reach)

        return self._stage_and_write(source, on_batch)

    def catch_up_in_processes(
        self,
        on_batch: Callable[[int], None] | None = None,
        *,
        jobs: int,
        stop: threading.Event | None = None,
        pause: Callable[[dict[str, int]], bool] | None = None,
        until: int = 0,
        limit: int = BATCH_RECORDS,
        limit_bytes: int = BATCH_BYTES,
    ) -> int:
        """Apply the log, as :meth:`catch_up` does, with the batches prepared
        by ``jobs`` worker processes (tally.preparing) while this one stages
        and writes them in order. Each stream is cut at its segments; a batch
        holds at most ``limit`` records and ``limit_bytes`` of the log. The
        keys are the catalog's, read again for each slice handed out; with
        keys of the caller's own, this is :meth:`catch_up`.

        Slices are handed out until less than ``until`` bytes of the log are
        left past them (the log is planned again as it grows), or ``stop`` is
        set, or ``pause`` says so (asked before each slice is handed out,
        with the positions after the batch in hand, as :meth:`catch_up`
        asks it: not those of the slices handed out, which reach the log's
        durable end); the slices handed out are written,
        unless ``stop`` is set: then none after the batch in hand, and the
        workers are ended. A worker that dies raises ``BrokenProcessPool``
        (``WorkerEnded`` if it was sent SIGTERM);
        nothing after the last batch written is applied."""
        if self.catalog_keys is None or jobs < 1:
            return self.catch_up(
                on_batch, stop=stop, pause=pause, limit=limit, limit_bytes=limit_bytes
            )
        catalog = self.catalog_keys
        with self.lock:
            positions = self.store.positions()
        staged = dict(positions)  # after the batch in hand

        def halt() -> bool:
            return (stop is not None and stop.is_set()) or (pause is not None and pause(staged))

        slices = self._slices(positions, until, halt)
        first = next(slices, None)
        if first is None:
            return 0
        blocked = self.settings.blocked_identities
        nice = PROCESSOR_NICE if self._nice else os.getpriority(os.PRIO_PROCESS, 0)
        pool = Pool(self.settings.log_dir, jobs, blocked, limit, limit_bytes, nice)
        parts = pool.parts(itertools.chain([first], slices), catalog.rows, stop)

        def source() -> Prepared | None:
            if stop is not None and stop.is_set():
                return None
            part = next(parts, None)
            if part is None:
                return None
            if part.records:
                staged[part.stream] = max(staged.get(part.stream, 0), part.next_positions[-1])
            staged[part.stream] = max(staged.get(part.stream, 0), part.reach)
            for damage, data in part.damage:
                self.quarantine.keep(damage, data)
            return prepared_of(part, self.reader, blocked)

        try:
            return self._stage_and_write(source, on_batch)
        finally:
            parts.close()  # the workers stop, whatever happened

    def _slices(
        self, positions: dict[str, int], until: int, halt: Callable[[], bool]
    ) -> Iterator[Slice]:
        """The log after ``positions`` in slices (tally.preparing.plan), planned
        again as it grows until less than ``until`` bytes are left past them,
        or ``halt`` says so."""
        planned = dict(positions)
        while True:
            slices = plan(self.reader, planned)
            if not slices:
                return
            for piece in slices:
                if halt():
                    return
                yield piece
                planned[piece.stream] = piece.end
            if self._behind(planned) < max(until, 1):
                return

    def _behind(self, positions: dict[str, int]) -> int:
        """Bytes of the durable log after ``positions``."""
        return sum(
            max(self.reader.durable(stream) - positions.get(stream, 0), 0)
            for stream in self.reader.streams()
        )

    def _stage_and_write(
        self, source: Callable[[], Prepared | None], on_batch: Callable[[int], None] | None
    ) -> int:
        """Write the batches ``source`` makes (on a thread of its own: the
        preparing side stages them on a lane of its own; DuckDB: a connection
        is used by one thread at a time, replay uses the store's) until it
        makes none; the number of records written."""
        total = 0

        def write(prepared: Prepared) -> None:
            nonlocal total
            with self.lock:
                total += self._write(prepared)
            if on_batch is not None:
                on_batch(len(prepared.entries))
            paused.collect_now_and_then()

        staging = self.store.staging()
        try:
            with gc_paused() as paused, _switching_often():
                writing, waiting = write_in_order(source, staging, write, self._prepare_thread)
            self.progress.writing_seconds += writing
            self.progress.waiting_seconds += waiting
        finally:
            staging.close()
        return total

    def _prepare_thread(self) -> None:
        if self._nice:  # the preparing thread yields to ingest like the processor's own
            _lower_priority()

    # -- as a thread inside `tally serve` ------------------------------------------------

    def start(self) -> None:
        # DuckDB's own worker threads would run the batch's SQL at normal
        # priority, beside the collectors: with one thread it all runs in the
        # processor's thread, which yields to them (see _run).
        self.store.limit_threads(1)
        # Answers stay well within the server's memory (spilling to disk beyond,
        # within bounds too: --query-memory, --query-spill).
        self.store.limit_memory(self.settings.query_memory, self.settings.query_spill)
        self._nice = True
        self._load = Load(self.reader.write_counts)
        # Before any collector opens its stream: none may write below these.
        self.publish_applied()
        self._thread = threading.Thread(target=self._run, name="tally-processor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        # Ingest comes first: a collector answering a tracking call must not
        # wait for a batch being applied. The processor runs at the lowest
        # priority (Linux: nice applies per thread), and while ingest saturates
        # the machine it does not start a batch until it is `defer_seconds`
        # behind (tally.pacing): a burst is applied after it.
        _lower_priority()
        idle = 0.0
        retry = RETRY_FIRST_SECONDS
        untidy = True
        cold = True
        while not self._stop.is_set():
            self._health.tell(self)
            try:
                if cold:  # before the first batch, which would wait for it
                    with self.lock:
                        self.store.warm()
                    cold = False
                if self._defer_to_ingest():
                    self._stop.wait(POLL_SECONDS)
                    continue
                applied = self._catch_up_live()
                if applied:
                    self.publish_applied()
                    untidy = True
                elif untidy:
                    # Caught up: the upkeep the store put off while records
                    # came (a fold of `moved`: store/schema.py), once.
                    self.store.tidy()
                    untidy = False
            except Exception as exc:
                # The store failed (a full disk, an I/O error: StoreFailure) or
                # a bug: nothing of the batch was applied and no position moved.
                # Say so in status and /healthz, and retry until it works.
                self._failed(exc)
                self._stop.wait(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                continue
            if self.error is not None:
                log.warning("the processor applies records again (it had failed since %s)",
                            self.error.to_json()["since"])  # fmt: skip
                self.error = None
            retry = RETRY_FIRST_SECONDS
            if applied:
                idle = 0.0
            else:  # poll the log; back off a little while it is quiet
                idle = min(idle + 0.005, 0.05)
                self._stop.wait(idle)
        self._health.tell(self, force=True)
        self._health.close()

    def _catch_up_live(self) -> int:
        """Apply what the log holds: far behind (``POOL_FROM_SEGMENTS``), with
        worker processes preparing the batches until it is nearly caught up,
        then (or else) on the thread path. Either way each batch is written
        with the positions it reaches, the catalog's keys read after its
        records, under ``--query-memory``; the workers exist only while far
        behind (a caught-up server holds none)."""

        def told(_: int) -> None:
            self._health.tell(self)

        applied = 0
        with self.lock:
            positions = self.store.positions()
        if self._far_behind(positions):
            behind = self._behind(positions)
            log.info("the processor is %d MiB behind: %d worker processes prepare its batches",
                     behind >> 20, self.jobs)  # fmt: skip
            try:
                applied = self.catch_up_in_processes(
                    told,
                    jobs=self.jobs,
                    stop=self._stop,
                    pause=self._defer_to_ingest,
                    until=min(POOL_UNTIL_BYTES, self.settings.segment_mib * 1024 * 1024),
                )
            except (BrokenProcessPool, WorkerEnded):
                # Nothing of the worker's batch was written: the thread
                # path goes on from the positions the store holds. (A
                # worker that another program sent SIGTERM ends its slice.)
                log.warning("a process preparing the processor's batches ended abruptly "
                            "(killed, or out of memory?); the processor goes on without "
                            "them for %.0f s", POOL_PAUSE_SECONDS)  # fmt: skip
                self._pool_failed_at = time.monotonic()
            if self._stop.is_set():
                return applied

        def pause(positions: dict[str, int]) -> bool:
            # Far behind again (ingest outran the threads): back to the workers.
            return self._defer_to_ingest(positions) or self._far_behind(positions)

        return applied + self.catch_up(told, stop=self._stop, pause=pause)

    def _far_behind(self, positions: dict[str, int]) -> bool:
        """Whether to prepare batches in worker processes from ``positions``."""
        if (
            self.jobs < 1
            or self.catalog_keys is None
            or time.monotonic() - self._pool_failed_at < POOL_PAUSE_SECONDS
        ):
            return False
        segment = self.settings.segment_mib * 1024 * 1024
        return self._behind(positions) >= POOL_FROM_SEGMENTS * segment

    def _failed(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, StoreFailure) else f"{type(exc).__name__}: {exc}"
        # The store's machinery failing outside a write is no bug either: its
        # memory limit, shared with reports (--query-memory), can be met while
        # a batch is staged or positions are read.
        if self.error is None:
            if isinstance(exc, StoreFailure) or self.store.is_failure(exc):
                log.error("the store cannot take records (%s); nothing is lost: the processor "
                          "retries until it can", message)  # fmt: skip
            else:  # a bug: say so loudly, with its traceback
                log.exception("the processor failed; retrying")
            self.error = Failure(message, time.time_ns())
        else:
            self.error = Failure(message, self.error.since_ns, self.error.attempts + 1)
        self.store.recover()

    def publish_applied(self) -> None:
        """Tell the collectors where the store is (``log/APPLIED``): a writer
        never writes below it, even where the log's own files were damaged."""
        with self.lock:
            positions = self.store.positions()
        if positions != self._applied_hint:
            with contextlib.suppress(OSError):  # a hint: the next batch retries
                write_applied(self.settings.log_dir, positions)
                self._applied_hint = positions

    def _defer_to_ingest(self, positions: dict[str, int] | None = None) -> bool:
        """Whether to wait before the next batch: while ingest is saturating the
        machine, until the oldest record not applied is ``defer_seconds`` old
        (tally.pacing)."""
        limit = self.settings.defer_seconds
        waiting = False
        if limit > 0 and self._load is not None and self._load.saturated():
            oldest = self.oldest_unapplied_ns(positions)
            waiting = oldest is not None and time.time_ns() - oldest < limit * 1e9
        self.waiting_for_ingest = waiting
        return waiting

    def oldest_unapplied_ns(self, positions: dict[str, int] | None = None) -> int | None:
        """The receive time of the oldest record not applied yet (of the first
        after ``positions`` in each stream), or ``None`` when none is left."""
        if positions is None:
            with self.lock:
                positions = self.store.positions()
        times = [
            t
            for stream in self.reader.streams()
            if (t := self.reader.first_received(stream, positions.get(stream, 0))) is not None
        ]
        return min(times, default=None)


def _lower_priority() -> None:
    """Run the calling thread at ``PROCESSOR_NICE`` (Linux: nice applies per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROCESSOR_NICE)


class _GcPause:
    def __init__(self) -> None:
        self.enabled = gc.isenabled()
        self.since = time.monotonic()

    def collect_now_and_then(self) -> None:
        """While batches follow each other, a full collection every
        ``GC_EVERY_SECONDS``: other threads' cycles are not left for long."""
        if self.enabled and time.monotonic() - self.since >= GC_EVERY_SECONDS:
            gc.collect()
            self.since = time.monotonic()


@contextlib.contextmanager
def _switching_often() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@contextlib.contextmanager
def gc_paused() -> Iterator[_GcPause]:
    """Python's cyclic garbage collector off while batches are applied.

    A batch makes about ten container objects per record, which trigger
    collections that scan the whole batch again and again: measured, 20% of
    the processor's time. Nothing a batch makes is cyclic; what other threads
    make meanwhile is collected when the pause ends (or every
    ``GC_EVERY_SECONDS`` of a long one).
    """
    pause = _GcPause()
    gc.disable()
    try:
        yield pause
    finally:
        if pause.enabled:
            gc.enable()
