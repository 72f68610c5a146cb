"""Applying batches of log records to the store, exactly once.

A batch is applied in one transaction together with the log positions it
reaches, so a crash at any instant leaves the store as it was before the batch
or after it (DESIGN §3). Within the batch, records are normalised
(:mod:`tally.beacon`), de-duplicated against the whole history (SPEC §4: the
earlier record in the total order is the one kept, whichever was read first),
written, and the identity graph is re-derived where aliases changed.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from tally import identity_graph
from tally.beacon import DEFAULT_BLOCKED, Beacon, KeyLookup
from tally.errors import QueryTooLarge, Unavailable
from tally.identity_graph import Edge, Order
from tally.log.reader import Entry
from tally.store.batch import ApplyStats, Prepared, Progress, StoreFailure, prepare
from tally.store.graph import rederive
from tally.store.rows import HASH, INT, NUMBER, TEXT, Rows, insert, orders, registered, reject_rows
from tally.store.schema import (
    COMPACT_ROWS,
    DDL,
    DROP_INDEXES,
    EVENTS_SORT,
    FOLD_ROWS,
    FOLD_SHARE,
    IDENTITY_HASH,
    INDEXES,
    MIGRATE_1_TO_2,
    MIGRATE_3_TO_4,
    MIGRATE_4_TO_5,
    RETIRED_INDEXES,
    SCHEMA_VERSION,
    SORTED_COMMENT,
)
from tally.store.stage import REJECT, Stage

if TYPE_CHECKING:
    from tally.reports.sql import Dialect

log = logging.getLogger("tally.store")

DEFAULT_CAP = 1000
PROPERTY_DROPPED = "property_dropped"
INTERNAL_ERROR = "internal_error"
_KNOWN_CACHE = 2_000_000  # identities remembered as stored (about 200 MB at most)
#: Person numbers kept in memory by the writer (Store._numbers; about 230 MB
#: at most): up to this many persons, every number is, and a batch's new
#: persons are known without reading ``persons``.
_NUMBERS_CACHE = 2_000_000
#: A batch's rows joined to their identity's person, as the graph has it now.
_PERSON_JOIN = " LEFT JOIN identities i ON i.product = k.product AND i.ih = k.ih"
#: A batch's rows joined to their identity's person and its number (``_who``, Store._spread).
_WHO_JOIN = " JOIN _who w ON w.product = k.product AND w.ih = k.ih"
#: An in-memory database beside the store for batches on their way in.
STAGING = "tally_staging"
#: The WAL's size at which DuckDB checkpoints the store at a commit (its own
#: default is 16 MB, which a few of the processor's batches pass). Every
#: checkpoint writes out the whole of each ART index the store keeps, the
#: primary keys' too (DuckDB issue #24848), so the more often, the more the
#: store's size costs each record (docs/store.md, "Cost as the history
#: grows"). Commits are as durable either way (the WAL is synced); a server
#: killed leaves at most this much WAL to replay when the store is next opened,
#: a few seconds (docs/benchmarks.md, "Session 15").
CHECKPOINT_WAL = "256MB"
#: The same while a whole store is written (Store.bulk): a rebuild's store is
#: thrown away if it fails, and checkpointed once at its end.
BULK_CHECKPOINT_WAL = "2GB"


#: Errors of the store's machinery, not of a record: a full disk, an I/O error,
#: memory, a commit that could not be written, a database DuckDB invalidated.
#: A batch that meets one is not applied and its positions do not move; the
#: processor retries it (DESIGN §2: a failing store never makes a reject).
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    MemoryError,
    duckdb.IOException,
    duckdb.OutOfMemoryException,
    duckdb.InternalException,
    duckdb.FatalException,
    duckdb.TransactionException,
    duckdb.ConnectionException,
    duckdb.PermissionException,
)


#: The words of the operating system's errors that only the machinery causes:
#: DuckDB reports some of them inside errors of other kinds.
_INFRASTRUCTURE_WORDS = tuple(
    os.strerror(code)
    for code in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.ENOMEM,
        errno.EACCES,
        errno.EPERM,
    )
)


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` is the store failing, not a record (INFRASTRUCTURE_ERRORS)."""
    if isinstance(exc, INFRASTRUCTURE_ERRORS):
        return True
    return isinstance(exc, duckdb.Error) and any(w in str(exc) for w in _INFRASTRUCTURE_WORDS)


def _size(limit: int) -> str:
    """A limit in bytes as the operator likely wrote it (1GB)."""
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("GiB", 1024**3), ("MiB", 1024**2)):
        if limit % size == 0:
            return f"{limit // size}{unit}"
    return f"{limit:,} bytes"


class DuckDBStaging:
    """Batches staged on one cursor of the store (contract.Staging), for the
    thread that prepares them."""

    def __init__(self, store: Store, con: duckdb.DuckDBPyConnection) -> None:
        self._store, self._con = store, con

    def stage(self, prepared: Prepared) -> None:
        self._store.stage(prepared, self._con)

    def unstage(self, prepared: Prepared) -> None:
        self._store.unstage(prepared, self._con)

    def close(self) -> None:
        self._con.close()


def open_duckdb(path: Path, *, read_only: bool = False, progress: Progress | None = None) -> Store:
    """The DuckDB engine at ``path`` (contract.Opener): DuckDB's errors as
    :class:`Unavailable` (``store_unavailable``)."""
    try:
        return Store(path, read_only=read_only, progress=progress)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, duckdb.IOException) and "lock" in first:  # held by another process
            raise Unavailable(
                f"cannot open the store {path}: {exc}", code="store_unavailable"
            ) from exc
        # Damaged: the log holds everything the store knew.
        raise Unavailable(
            f"cannot open the store {path}: {first}; if it is damaged, move it "
            "aside and run `tally rebuild` (the log holds every record)",
            code="store_unavailable",
        ) from exc


def as_duckdb(store_or_cursor: object, what: str) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection behind an engine or a cursor of the contract, for
    the few readers that need DuckDB itself (docs/store.md, "What a second
    engine provides": exports read Arrow batches, a snapshot copies the
    database); another engine is told that ``what`` needs DuckDB."""
    if isinstance(store_or_cursor, Store):
        return store_or_cursor.con
    if isinstance(store_or_cursor, duckdb.DuckDBPyConnection):
        return store_or_cursor
    raise Unavailable(f"{what} needs the DuckDB store (docs/store.md)", code="store_unsupported")


class Store:
    """The DuckDB engine: both sides of the store contract (tally.store.contract)."""

    def __init__(
        self, path: Path | str, *, read_only: bool = False, progress: Progress | None = None
    ) -> None:
        self.path = path
        #: Unsorted events at the end of ``events`` that make a sorted block
        #: (schema.py); a test may lower it to see blocks made.
        self.compact_rows = COMPACT_ROWS
        #: Rows of ``moved`` at which a batch folds them into the stored
        #: persons, at the least (schema.py); a test may lower it to see folds made.
        self.fold_rows = FOLD_ROWS
        #: Events per row of ``moved`` above which it is folded (schema.py).
        self.fold_share = FOLD_SHARE
        self.con = duckdb.connect(str(path), read_only=read_only)
        self._known: set[tuple[str | None, str | None]] = set()
        #: Person hash -> its number (schema.py, ``persons``), as given: every
        #: number while ``_all_numbered``, else those met lately (_numbers).
        self._numbered: dict[int, int] = {}
        self._all_numbered = False
        #: The next number to give; None when not known (read with the numbers).
        self._next_number: int | None = None
        #: How many rows ``events`` has, kept by the writes of this store
        #: (``_unsorted``) rather than counted before each batch; None when
        #: not known (a new connection, a transaction rolled back).
        self._events: int | None = None
        self._staged = itertools.count()
        self.threads = os.cpu_count() or 1  # DuckDB's threads outside reports
        #: DuckDB's memory and spill limits in bytes; its defaults unless set (limit_memory).
        self.memory_limit = 0
        self.spill_limit = 0
        self._connecting = threading.Lock()  # cursor() waits while recover() reconnects
        self._threads_lock = threading.Lock()
        self._reports = 0
        if not read_only:
            self._set_up_writing()
            self.con.execute(DDL)
            self.con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                [str(SCHEMA_VERSION)],
            )
            if (found := self.schema_version()) > SCHEMA_VERSION:
                self.con.close()
                raise Unavailable(
                    f"the store {path} is of schema {found}, from a newer "
                    f"Tally; this one reads up to {SCHEMA_VERSION}: run the newer Tally",
                    code="store_too_new",
                )
            if self.schema_version() == 1:
                self._migrate_1_to_2()
            # The retired indexes go first: the conversion then moves no index entry.
            self.con.execute(RETIRED_INDEXES)
            if self.schema_version() == 2:
                self._migrate_2_to_3_layout(progress)
            if self.schema_version() == 3:
                self._migrate_3_to_4_persons()
            if self.schema_version() == 4:
                self._migrate_4_to_5_numbers()
            self.con.execute(INDEXES)
        elif (found := self.schema_version()) != SCHEMA_VERSION:
            self.con.close()
            what = (
                "from a newer Tally; run the newer Tally"
                if found > SCHEMA_VERSION
                else "start `tally serve` once to upgrade it"
            )
            raise Unavailable(
                f"the store {path} is of schema {found}, this Tally reads {SCHEMA_VERSION}: {what}"
            )

    def schema_version(self) -> int:
        row = self.con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return int(row[0]) if row else SCHEMA_VERSION

    def _migrate_1_to_2(self) -> None:
        """Adds the identity hashes (schema.py) to a store of schema 1."""
        log.info("upgrading the store to schema 2 (identity hashes)")
        self.con.execute("BEGIN")
        for statement in MIGRATE_1_TO_2:
            self.con.execute(statement)
        self.con.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
        self.con.execute("COMMIT")

    def _migrate_2_to_3_layout(self, progress: Progress | None) -> None:
        """Rewrites the events of a store of schema 2 (in arrival order) as
        sorted blocks (schema.py), in one transaction: a conversion that cannot
        finish (a full disk, memory) leaves the store as it was, of schema 2,
        and says why. Progress goes to the log, and to ``progress`` (a bar)."""
        ((rows,),) = self.con.execute("SELECT count(*) FROM events").fetchall()
        log.info("converting the store to schema 3: %s events into sorted blocks", f"{rows:,}")
        started = time.monotonic()

        def told(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)
            rate = done / max(time.monotonic() - started, 1e-3)
            log.info(
                "converted %s of %s events (%d%%), %s/s, about %d s left",
                f"{done:,}", f"{total:,}", 100 * done // total, f"{rate:,.0f}",
                (total - done) / rate,
            )  # fmt: skip

        if progress is not None and rows:
            progress(0, rows)  # the bar from the start
        self._convert(
            3,
            lambda: self._sort_events(None, told),
            "(events in sorted blocks)",
            "the conversion needs about as much free disk as the events take (it writes "
            "them again before dropping the old rows): make room and start again",
        )

    def _convert(self, version: int, work: Callable[[], None], what: str, room: str) -> None:
        """``work`` and the new schema ``version`` in one transaction. A
        conversion that cannot finish (a full disk, memory), or the
        operator's Ctrl-C, changes nothing; a failure is said as
        ``store_conversion_failed``, with ``what`` the conversion does and
        ``room`` what it needs."""
        try:
            self.con.execute("BEGIN")
            work()
            self.con.execute(
                "UPDATE meta SET value = ? WHERE name = 'schema_version'", [str(version)]
            )
            self.con.execute("COMMIT")
        except BaseException as exc:  # an error, or the operator's Ctrl-C: nothing changes
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            self.con.close()
            if not isinstance(exc, duckdb.Error):
                raise
            raise Unavailable(
                f"the store {self.path} could not be converted to schema {version} {what}: "
                f"{str(exc).splitlines()[0]}. It is unchanged, still of schema "
                f"{version - 1}; {room}",
                code="store_conversion_failed",
            ) from exc

    def _migrate_3_to_4_persons(self) -> None:
        """Stores the person of every event and property value (schema.py) in
        a store of schema 3, in one transaction: a conversion that cannot
        finish leaves the store as it was, of schema 3, and says why."""
        self._convert_rows(4, MIGRATE_3_TO_4, "the person", "(the person on each event)")

    def _migrate_4_to_5_numbers(self) -> None:
        """Numbers every person of a store of schema 4 and stores the number
        beside each ``ph`` (schema.py), in one transaction: a conversion that
        cannot finish leaves the store as it was, of schema 4, and says why."""
        self._convert_rows(5, MIGRATE_4_TO_5, "the person number", "(a number for each person)")

    def _convert_rows(self, version: int, statements: list[str], column: str, what: str) -> None:
        """``statements``, which write ``column`` of every event and property
        value, as the conversion to ``version`` (:meth:`_convert`); the log
        says when it starts and how long it took (no progress: one statement
        a table)."""
        ((events, values),) = self.con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM property_values)"
        ).fetchall()
        log.info("converting the store to schema %d: %s of %s events and %s property values",
                 version, column, f"{events:,}", f"{values:,}")  # fmt: skip
        started = time.monotonic()

        def fill() -> None:
            for statement in statements:
                self.con.execute(statement)

        self._convert(
            version,
            fill,
            what,
            "make room on its disk (it writes a column of each event and property value) "
            "and start again",
        )
        log.info("converted the store to schema %d in %.1f s", version, time.monotonic() - started)

    def close(self) -> None:
        self.con.close()

    @property
    def dialect(self) -> Dialect:
        """DuckDB's spelling of what the reports need (contract.Reader). It
        lives with the reports (tally.reports.sql), above the store: imported
        when asked, so that the store imports nothing of them."""
        from tally.reports.sql import DIALECT

        return DIALECT

    def is_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` is DuckDB's machinery failing (:func:`is_infrastructure`)."""
        return is_infrastructure(exc)

    def limit_threads(self, threads: int) -> None:
        """DuckDB's threads outside reports (:meth:`all_threads` lends every core)."""
        self.threads = threads
        self.con.execute(f"SET threads = {int(threads)}")

    def checkpoint(self) -> None:
        """The WAL written into the database file."""
        self.con.execute("CHECKPOINT")

    def staging(self) -> DuckDBStaging:
        """A cursor of its own for the processor's preparing thread, to
        :meth:`stage` batches on (contract.Staging)."""
        return DuckDBStaging(self, self.cursor())

    def _set_up_writing(self) -> None:
        """What a connection that writes needs: the checkpoint threshold
        (:data:`CHECKPOINT_WAL`) and the staging database beside the store."""
        self.con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_WAL}'")
        self.con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {STAGING}")

    def recover(self) -> None:
        """After a failed write: reconnect if DuckDB has invalidated the
        database (it does after some I/O errors; a new connection reads it
        back from its file and WAL). Errors are left for the next write."""
        try:
            self.con.execute("SELECT 1").fetchall()
            return
        except duckdb.Error:
            log.warning("the store's connection is unusable after a failure: reconnecting")
        with self._connecting:
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            try:
                self.con = duckdb.connect(str(self.path))
                self._set_up_writing()
                self.con.execute(f"SET threads = {self.threads}")
                if self.memory_limit:
                    self.limit_memory(self.memory_limit, self.spill_limit)
            except duckdb.Error as exc:
                log.warning("cannot reconnect to the store yet: %s", exc)
        self._known.clear()
        self._events = None
        self._next_number = None

    def limit_memory(self, memory: int, spill: int) -> None:
        """At most ``memory`` bytes of DuckDB's buffer pool, and ``spill`` bytes
        spilled to its temporary directory (``store.duckdb.tmp``) past it.

        Both are settings of the whole database, shared by the processor and
        every reader: DuckDB (2.0) bounds no connection or query on its own
        (its ``operator_memory_limit`` only hints when some operators spill).
        Without the spill limit DuckDB would fill 90% of the free disk, the
        log's disk too.

        What a query frees goes back to the system within seconds: DuckDB's
        allocator purges freed pages from background threads. Without them it
        purges only while it allocates, and the pages of the widest series the
        limits allow (84,006 days) stayed with the server (20 to 50 MiB) until the
        next large query (issue 14; ``bench/hostile.py --only metrics-widest``)."""
        self.memory_limit, self.spill_limit = memory, spill
        self.con.execute(f"SET memory_limit = '{memory}B'")
        self.con.execute(f"SET max_temp_directory_size = '{spill}B'")
        self.con.execute("SET allocator_background_threads = true")

    @contextlib.contextmanager
    def all_threads(self) -> Iterator[None]:
        """Every core for DuckDB while a report runs.

        The processor keeps DuckDB on one thread so that its batches never
        compete with the collectors (see Processor.start); a report is
        interactive and short, so it gets them all (``threads`` is a setting of
        the whole database, not of a connection), and the setting returns to one
        thread when the last running report ends.
        """
        with self._threads_lock:
            self._reports += 1
            if self._reports == 1:
                self._set_threads(os.cpu_count() or 1)
        try:
            yield
        finally:
            with self._threads_lock:
                self._reports -= 1
                if self._reports == 0:
                    self._set_threads(self.threads)

    def _set_threads(self, n: int) -> None:
        # Its own cursor: the processor's thread may be using self.con right now.
        with self.con.cursor() as cursor:
            cursor.execute(f"SET threads = {n}")

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Without the person page's indexes while a whole store is written
        (``tally rebuild``): building an ART index once at the end costs far less
        than keeping it up to date batch by batch.

        And checkpointed only once :data:`BULK_CHECKPOINT_WAL` of WAL has
        gathered: each checkpoint writes out the whole of every ART index left
        (the primary keys'), so its cost grows with the store. The caller
        checkpoints at the end."""
        self.con.execute(DROP_INDEXES)
        self.con.execute(f"SET checkpoint_threshold = '{BULK_CHECKPOINT_WAL}'")
        yield  # (should it fail, the next open builds them: Store.__init__ runs INDEXES)
        self.con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_WAL}'")
        self.con.execute(INDEXES)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for another thread (DuckDB: one cursor per thread)."""
        with self._connecting:  # never from a connection recover() is replacing
            return self.con.cursor()

    @contextlib.contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for a reader (the API's threads). A failing store (see
        ``INFRASTRUCTURE_ERRORS``; a query begun before :meth:`recover`
        reconnected) is a :class:`StoreFailure`, answered 503, not a bug; a
        query that needs more memory than :meth:`limit_memory` allows is a
        :class:`QueryTooLarge`, the query's own fault rather than the store's."""
        try:
            cursor = self.cursor()
        except duckdb.Error as exc:
            raise StoreFailure(f"the store is failing, try again shortly: {exc}") from exc
        try:
            yield cursor
        except duckdb.OutOfMemoryException as exc:
            raise QueryTooLarge(self._too_large(str(exc))) from exc
        except Exception as exc:
            if is_infrastructure(exc):
                raise StoreFailure(f"the store is failing, try again shortly: {exc}") from exc
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.close()

    def _too_large(self, error: str) -> str:
        # DuckDB names max_temp_directory_size when the spill, not memory, ran out.
        if not self.memory_limit:  # not `tally serve`: DuckDB's own limits
            limit = "more memory than DuckDB"
        elif "max_temp_directory_size" in error:
            limit = f"more disk to spill to than --query-spill ({_size(self.spill_limit)})"
        else:
            limit = f"more memory than --query-memory ({_size(self.memory_limit)})"
        return (
            f"the query needed {limit} allows, a limit shared with every other query "
            "and the processor: narrow its range or its conditions, try again when fewer "
            "reports run, or raise the limit"
        )

    def positions(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT stream, position FROM positions").fetchall())

    # -- applying ---------------------------------------------------------------------

    def apply(
        self,
        entries: Sequence[Entry],
        keys: KeyLookup,
        *,
        blocked: frozenset[str] = DEFAULT_BLOCKED,
        cap: int = DEFAULT_CAP,
    ) -> ApplyStats:
        """Apply ``entries`` and record the positions they reach, atomically."""
        return self.write(prepare(entries, keys, blocked=blocked), cap=cap)

    def stage(self, prepared: Prepared, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Copy a prepared batch's table into the in-memory staging database,
        with its identity hash: the DuckDB half of preparing. The processor does
        it on a cursor of its preparing thread, so that the Arrow scan (which
        takes the GIL now and then) does not slow the thread writing the store."""
        if prepared.staged is not None or prepared.error is not None or not len(prepared.stage):
            return
        con = con or self.con
        name = f"{STAGING}.batch_{next(self._staged)}"
        con.register("_prepared", prepared.stage.freeze())
        try:
            con.execute(
                f"CREATE TABLE {name} AS SELECT *, {IDENTITY_HASH.format('identity')} AS ih "
                "FROM _prepared"
            )
        finally:
            con.unregister("_prepared")
        prepared.staged = name

    def unstage(self, prepared: Prepared, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Drop a batch's staging table (outside the store's transaction: a
        transaction writes to one database)."""
        if prepared.staged is not None:
            (con or self.con).execute(f"DROP TABLE IF EXISTS {prepared.staged}")
            prepared.staged = None

    @contextlib.contextmanager
    def _staging(self, prepared: Prepared) -> Iterator[None]:
        """``prepared`` staged (if the processor has not already) for the block."""
        self.stage(prepared)
        try:
            yield
        except BaseException:
            # A failed batch may leave the connection unusable (Store.recover):
            # what made it fail is the error to raise, not the clean-up's.
            with contextlib.suppress(duckdb.Error):
                self.unstage(prepared)
            raise
        self.unstage(prepared)

    def write(self, prepared: Prepared, *, cap: int = DEFAULT_CAP) -> ApplyStats:
        """Write a prepared batch and the positions it reaches, atomically.

        A failure of the store itself (``INFRASTRUCTURE_ERRORS``) raises
        :class:`StoreFailure` with nothing applied. A batch that fails otherwise
        (a bug, not bad input) is applied record by record, and a record that
        still fails alone, while the store takes its reject, is kept as an
        ``internal_error`` reject (replayable): the pipeline never stops on one
        record.
        """
        try:
            return self._write_or_split(prepared, cap)
        except Exception as exc:
            if is_infrastructure(exc):
                raise StoreFailure(f"{type(exc).__name__}: {exc}") from exc
            raise

    def _write_or_split(self, prepared: Prepared, cap: int) -> ApplyStats:
        entries = prepared.entries
        try:
            if prepared.error is not None:
                raise prepared.error
            with self._staging(prepared):
                stats: ApplyStats = self._transaction(
                    lambda: self._apply(prepared, cap, entries, prepared.reach)
                )
            return stats
        except Exception as exc:  # any bug at all: one record must not stop the pipeline
            if is_infrastructure(exc):
                raise
            if len(entries) == 1:
                log.exception(
                    "record %s@%d cannot be applied", entries[0].stream, entries[0].position
                )
                error = exc
                failed: ApplyStats = self._transaction(lambda: self._keep_failed(entries[0], error))
                return failed
            log.exception("batch of %d records failed; applying one by one", len(entries))
            total = ApplyStats()
            for entry in entries:
                one = prepare([entry], prepared.keys, blocked=prepared.blocked)
                stats = self._write_or_split(one, cap)
                total.records += stats.records
                total.applied += stats.applied
                total.duplicates += stats.duplicates
                total.rejected.update(stats.rejected)
            if prepared.reach:  # past damage at the batch's end (Prepared.reach)
                self._transaction(lambda: self._save_positions((), prepared.reach))
            return total

    def replay(
        self,
        entries: Sequence[Entry],
        keys: KeyLookup,
        *,
        blocked: frozenset[str] = DEFAULT_BLOCKED,
        cap: int = DEFAULT_CAP,
    ) -> ApplyStats:
        """Apply rejected records again (SPEC §7), e.g. after their key was added.

        Their reject rows and de-duplication keys go, and they are applied as if
        read for the first time, in their own place in the total order; those
        that still fail are rejected again, with their reason as it is now.
        """

        def work() -> ApplyStats:
            replayed = orders((e.stream, e.position) for e in entries)
            with registered(self.con, "_replayed", replayed):
                for name in ("rejects", "seen"):
                    self.con.execute(
                        f"DELETE FROM {name} WHERE (stream, position) IN "
                        "(SELECT stream, position FROM _replayed)"
                    )
            return self._apply(prepared, cap, ())

        prepared = prepare(entries, keys, blocked=blocked)
        if prepared.error is not None:
            raise prepared.error
        with self._staging(prepared):
            return self._transaction(work)  # type: ignore[no-any-return]

    def _transaction(self, work: Any) -> Any:
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = work()
            self.con.execute("COMMIT")
        except BaseException:
            # A commit that failed has ended the transaction already: the
            # rollback must not hide why it failed.
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            self._known.clear()  # it may name identities of the rolled-back batch
            self._events = None
            self._next_number = None  # and number persons: read the numbers again
            raise
        return result

    def _keep_failed(self, entry: Entry, exc: Exception) -> ApplyStats:
        record = entry.record
        rows = reject_rows()
        rows.append(
            None,
            INTERNAL_ERROR,
            record.path,
            record.recv_ns,
            entry.stream,
            entry.position,
            json.dumps([["query", record.query.decode("utf-8", "replace")]]),
            f"{type(exc).__name__}: {exc}"[:500],
        )
        insert(self.con, "rejects", rows)
        self._save_positions([entry])
        stats = ApplyStats(records=1)
        stats.rejected[INTERNAL_ERROR] += 1
        return stats

    def _apply(
        self,
        prepared: Prepared,
        cap: int,
        position_entries: Iterable[Entry],
        reach: dict[str, int] | None = None,
    ) -> ApplyStats:
        stats = ApplyStats(records=len(prepared.entries))
        stage, revocations = prepared.stage, prepared.revocations
        self._fold_when_full()
        touched: dict[str, set[str]] = {}
        if len(stage):
            touched = self._write(prepared, stats)
        self._write_revocations(revocations)
        for product, edge in revocations:
            touched.setdefault(product, set()).update((edge.a, edge.b))
        for product, seeds in touched.items():
            capped = rederive(self.con, product, seeds, cap, self._numbers)
            if capped:
                stats.rejected[identity_graph.CAPPED] += capped
        self._save_positions(position_entries, reach)
        return stats

    # -- de-duplication (SPEC §4) and writing ---------------------------------------------------

    def _write(self, prepared: Prepared, stats: ApplyStats) -> dict[str, set[str]]:
        """Spread the batch over the tables; the alias identities it touched."""
        con, stage = self.con, prepared.stage
        # Within the batch the stage kept the earliest of each set of duplicates;
        # against the whole history, the stored one stays if it is earlier, else
        # this one takes the stored one's place (SPEC §4, §11).
        staged = prepared.staged
        stored = con.execute(
            "SELECT c.recv_ns, c.stream, c.position, s.recv_ns, s.stream, s.position "
            f"FROM {staged} c JOIN seen s "
            "ON s.dedup_time = c.dedup_time AND s.h1 = c.h1 AND s.h2 = c.h2"
        ).fetchall()
        duplicates = stage.duplicates
        later: set[tuple[str, int]] = set()
        replaced: list[Order] = []
        for kr, ks, kp, sr, ss, sp in stored:
            if (sr, ss, sp) == (kr, ks, kp):  # the very same record (a replayed reject)
                continue
            duplicates += 1
            if (sr, ss, sp) < (kr, ks, kp):
                later.add((ks, kp))
            else:
                replaced.append((sr, ss, sp))
        stage.drop(later)
        stats.duplicates = duplicates
        self._bump("duplicates", duplicates)
        touched = self._remove(replaced)
        if later:
            with registered(con, "_later", orders(later)):
                con.execute(
                    f"CREATE TEMP TABLE _kept AS SELECT * FROM {staged} "
                    "WHERE (stream, position) NOT IN (SELECT (stream, position) FROM _later)"
                )
        else:
            con.execute(f"CREATE TEMP VIEW _kept AS SELECT * FROM {staged}")
        self._spread(stage, stats, touched)
        # Not in a `finally`: on failure the transaction's rollback drops it,
        # and a DROP in an aborted transaction would hide why it failed.
        con.execute(f"DROP {'TABLE' if later else 'VIEW'} _kept")
        return touched

    def _remember_identities(self, stage: Stage) -> None:
        """Add the ``_p`` of the batch's events and property sets to
        ``known_identities`` (an alias makes its identities known only while it
        is not capped, which the views decide from ``aliases``, SPEC §11); a
        cache of those already there spares the look-up for most."""
        known = self._known
        fresh = Rows(product=TEXT, identity=TEXT)
        for index in stage.kept():
            parsed = stage.parsed[index]
            if isinstance(parsed, Beacon) and parsed.kind != "alias":
                pair = (parsed.product, parsed.identity)
                if pair not in known:
                    known.add(pair)
                    fresh.append(*pair)
        if len(known) > _KNOWN_CACHE:
            known.clear()
        if not len(fresh):
            return
        # The primary key leaves those already stored; the new ones come back.
        with registered(self.con, "_fresh", fresh):
            new = self.con.execute(
                "INSERT INTO known_identities (product, identity, ih) SELECT product, identity, "
                f"{IDENTITY_HASH.format('identity')} FROM _fresh "
                "ON CONFLICT DO NOTHING RETURNING product, identity, ih"
            ).fetchall()
        if new:
            self._report_clashes(new)

    def _report_clashes(self, new: list[tuple[str, str, int]]) -> None:
        """Log each identity just stored whose hash another identity of its
        product has: reports take the two for one person (schema.py gives the
        odds). Only the narrow ``ih`` column is read for all known identities
        (a join on the text read every identity: its cost grew with them,
        issue 12); the text only for a hash held more than once."""
        hashes = Rows(ih=pa.uint64())
        for ih in sorted({ih for _, _, ih in new}):
            hashes.append(ih)
        with registered(self.con, "_new_hashes", hashes):
            twice = self.con.execute(
                "SELECT ih FROM known_identities WHERE ih IN (SELECT ih FROM _new_hashes) "
                "GROUP BY ih HAVING count(*) > 1"
            ).fetchall()
        held: list[tuple[str, str, int]] = []
        if twice:  # (a text column read in full, for a clash, which is rare)
            held = self.con.execute(
                "SELECT product, identity, ih FROM known_identities WHERE ih = ANY(?::UBIGINT[])",
                [[ih for (ih,) in twice]],
            ).fetchall()
        sharing: dict[tuple[str, int], set[str]] = {}
        for product, identity, ih in held:
            sharing.setdefault((product, ih), set()).add(identity)
        for product, identity, ih in new:
            if clash := sharing.get((product, ih), set()) - {identity}:
                log.error("identities %r and %r of %r have the same hash: reports count "
                          "them as one person", identity, min(clash), product)  # fmt: skip

    def _spread(self, stage: Stage, stats: ApplyStats, touched: dict[str, set[str]]) -> None:
        con = self.con
        con.execute(
            "INSERT INTO seen SELECT dedup_time, h1, h2, recv_ns, stream, position FROM _kept"
        )
        self._compact()
        # Each row's person as the identity graph has it before this batch's
        # aliases (those that change it are in `moved` after rederive), and
        # its number (schema.py): once for each of the batch's identities.
        who = con.sql(
            f"SELECT DISTINCT k.product, k.ih, coalesce(i.ph, k.ih) AS ph FROM _kept k"
            f"{_PERSON_JOIN} WHERE k.kind IN ('event', 'set')"
        ).to_arrow_table()
        numbers = self._numbers(who.column("ph").to_pylist())
        who = who.append_column("pn", pa.array(numbers, NUMBER))
        with registered(con, "_who", who):
            ((added,),) = con.execute(
                "INSERT INTO events SELECT k.product, k.identity, k.event, k.time, k.recv_ns, "
                "k.stream, k.position, map(k.prop_keys, k.prop_values), k.metadata, k.ih, "
                f"w.ph, w.pn FROM _kept k{_WHO_JOIN} WHERE k.kind = 'event'"
            ).fetchall()
            if self._events is not None:
                self._events += added
            con.execute(
                "INSERT INTO property_values SELECT k.product, k.identity, unnest(k.prop_keys), "
                "unnest(k.prop_values), k.time, k.recv_ns, k.stream, k.position, k.ih, "
                f"w.ph, w.pn FROM _kept k{_WHO_JOIN} "
                "WHERE k.kind IN ('event', 'set') AND len(k.prop_keys) > 0"
            )
        con.execute(
            "INSERT INTO aliases SELECT product, identity, other, time, recv_ns, stream, "
            f"position, '{identity_graph.ACCEPTED}', ih, "
            f"{IDENTITY_HASH.format('other')} FROM _kept WHERE kind = 'alias'"
        )
        con.execute(
            "INSERT INTO rejects SELECT product, reason, path, recv_ns, stream, position, params, "
            f"NULL FROM _kept WHERE kind = '{REJECT}'"
        )
        con.execute(
            f"INSERT INTO rejects SELECT product, '{PROPERTY_DROPPED}', "
            "CASE kind WHEN 'event' THEN '/e' ELSE '/s' END, recv_ns, stream, position, '[]', "
            "unnest(drops) FROM _kept WHERE len(drops) > 0"
        )
        self._remember_identities(stage)
        # SPEC §2: a display name is the first spelling in the total order.
        con.execute(
            """
            INSERT INTO names
            SELECT product, kind, key, first.display, first.recv_ns, first.stream,
                   first.position
            FROM (
                -- a struct's minimum is by its fields in order: the earliest record's
                -- spelling (a record names a key once, so display never decides)
                SELECT product, kind, key, min(struct_pack(recv_ns := recv_ns,
                       stream := stream, position := position, display := display)) AS first
                FROM (
                    SELECT product, 'event' AS kind, event AS key, event_display AS display,
                           recv_ns, stream, position
                    FROM _kept WHERE kind = 'event'
                    UNION ALL
                    SELECT product, 'property', unnest(prop_keys), unnest(prop_displays),
                           recv_ns, stream, position
                    FROM _kept WHERE kind IN ('event', 'set') AND len(prop_keys) > 0
                )
                GROUP BY product, kind, key
            )
            ON CONFLICT DO UPDATE SET display = EXCLUDED.display, recv_ns = EXCLUDED.recv_ns,
                stream = EXCLUDED.stream, position = EXCLUDED.position
            WHERE EXCLUDED.recv_ns < names.recv_ns OR (EXCLUDED.recv_ns = names.recv_ns AND
                (EXCLUDED.stream < names.stream OR (EXCLUDED.stream = names.stream AND
                 EXCLUDED.position < names.position)))
            """
        )
        for kind, reason, count in con.execute(
            "SELECT kind, reason, count(*) FROM _kept GROUP BY ALL"
        ).fetchall():
            if kind == REJECT:
                stats.rejected[reason] += count
            else:
                stats.applied += count
        for product, a, b in con.execute(
            "SELECT product, identity, other FROM _kept WHERE kind = 'alias'"
        ).fetchall():
            touched.setdefault(product, set()).update((a, b))

    # -- the persons stored on rows (schema.py) --------------------------------------------------

    def _numbers(self, hashes: Sequence[int]) -> list[int]:
        """The number of each person hash in ``hashes`` (schema.py,
        ``persons``), giving those without one the next numbers, inside the
        caller's transaction (a rollback forgets what this remembers).

        The numbers given are kept in memory, so that a batch costs what its
        persons do, not what the history does (issue 12): all of them up to
        :data:`_NUMBERS_CACHE` persons, read once; past that, the half given or
        looked up last, and the others are looked up in ``persons`` (a scan,
        for batches with persons not met lately)."""
        numbered = self._numbered
        if self._next_number is None:
            self._read_numbers()
        # (map and `in` run in C: a comprehension cost twice as much a person)
        found = list(map(numbered.get, hashes))
        if None not in found:
            return found  # type: ignore[return-value]  # (no None in it)
        new = [h for h, n in zip(hashes, found, strict=True) if n is None]
        new = list(dict.fromkeys(new))
        if not self._all_numbered:
            asked = pa.table({"ph": pa.array(new, HASH)})
            with registered(self.con, "_asked", asked):
                numbered.update(
                    self.con.execute(
                        "SELECT ph, pn FROM persons WHERE ph IN (SELECT ph FROM _asked)"
                    ).fetchall()
                )
            new = [h for h in new if h not in numbered]
        if new:
            first = self._next_number
            assert first is not None  # (read above)
            given = range(first, first + len(new))
            numbered.update(zip(new, given, strict=True))
            table = pa.table({"ph": pa.array(new, HASH), "pn": pa.array(given, NUMBER)})
            with registered(self.con, "_given", table):
                self.con.execute("INSERT INTO persons SELECT ph, pn FROM _given")
            self._next_number = first + len(new)
        out = list(map(numbered.__getitem__, hashes))
        if len(numbered) > _NUMBERS_CACHE:  # forget the earlier half (a dict keeps its order)
            for earlier in list(itertools.islice(numbered, len(numbered) - _NUMBERS_CACHE // 2)):
                del numbered[earlier]
            self._all_numbered = False
        return out

    def warm(self) -> None:
        """Read the person numbers that writes keep in memory, if not yet read
        (``_numbers``): the processor does so before its first batch, which
        would otherwise wait for them (about 0.7 s for 1.2 million persons)."""
        if self._next_number is None:
            self._read_numbers()

    def _read_numbers(self) -> None:
        """How many numbers ``persons`` holds (the next one), and every number
        if they are at most :data:`_NUMBERS_CACHE`."""
        self._numbered.clear()
        ((count,),) = self.con.execute("SELECT count(*) FROM persons").fetchall()
        self._next_number = int(count)
        self._all_numbered = count <= _NUMBERS_CACHE
        if self._all_numbered and count:
            table = self.con.sql("SELECT ph, pn FROM persons").to_arrow_table()
            self._numbered.update(
                zip(table.column("ph").to_pylist(), table.column("pn").to_pylist(), strict=True)
            )

    def _fold_when_full(self) -> None:
        """Fold ``moved`` once it has :attr:`fold_rows` rows and one for every
        :attr:`fold_share` events (schema.py, ``FOLD_SHARE``)."""
        ((rows,),) = self.con.execute("SELECT count(*) FROM moved").fetchall()
        if rows >= self.fold_rows and rows >= self._event_rows() // self.fold_share:
            self._fold()

    def _fold(self) -> None:
        """Rewrite the stored person of the rows of every identity in ``moved``
        and empty it, inside the caller's transaction: a reader sees the rows
        and ``moved`` before or after, and the same persons either way."""
        for table in ("events", "property_values"):
            self.con.execute(
                f"UPDATE {table} SET ph = m.ph, pn = m.pn FROM moved m "
                f"WHERE m.product = {table}.product AND m.ih = {table}.ih AND {table}.ph <> m.ph"
            )
        self.con.execute("DELETE FROM moved")

    def fold(self) -> None:
        """Fold ``moved`` now, in a transaction of its own (see :meth:`_fold`)."""
        self._transaction(self._fold)

    def tidy(self) -> bool:
        """Fold ``moved`` once it has :attr:`fold_rows` rows, whatever the
        history: the processor calls this when it has nothing to apply. A batch
        folds only once ``moved`` also has a row for every :attr:`fold_share`
        events (a fold costs what the history does); between bursts, reports
        get their small ``moved`` back. Whether it folded."""
        ((rows,),) = self.con.execute("SELECT count(*) FROM moved").fetchall()
        if rows < self.fold_rows:
            return False
        self.fold()
        return True

    # -- events in sorted blocks (schema.py) -----------------------------------------------------

    def _compact(self) -> None:
        """Sort the events appended before this batch once they make a block:
        in the batch's transaction (a crash keeps them as they were or sorted,
        never half of each), before the batch's own (DuckDB numbers the rows a
        transaction adds apart from the table's until it commits)."""
        if (unsorted := self._unsorted()) >= self.compact_rows:
            self._sort_events(unsorted)

    def compact(self) -> int:
        """Sort the unsorted events into a block now, however few; how many
        there were. ``bench/processor.py`` starts its live-path measures just
        after a block was made, as into an empty store."""
        unsorted = self._unsorted()
        self._transaction(lambda: self._sort_events(unsorted))
        return unsorted

    def _unsorted(self) -> int:
        """How many events lie unsorted at the end of ``events`` (schema.py).

        The rows are counted once, then kept up to date by this store's own
        writes (``_events``): a ``count(*)`` before every batch cost more as
        the history grew (issue 12; the deletes of replaced duplicates make
        DuckDB look at every row group). Another writer's rows (a test's SQL)
        would only move where the next block begins, never what is stored."""
        ((comment,),) = self.con.execute(
            "SELECT comment FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            "AND table_name = 'events'"  # not a backup's copy being attached beside
        ).fetchall()
        rows = self._event_rows()
        try:
            return int(rows - int(json.loads(comment)["sorted_rows"]))
        except (TypeError, ValueError, KeyError):  # no block yet (a new store)
            return int(rows)

    def _event_rows(self) -> int:
        """How many rows ``events`` has (``_events``; counted if not known)."""
        if self._events is None:
            ((rows,),) = self.con.execute("SELECT count(*) FROM events").fetchall()
            self._events = int(rows)
        return self._events

    def _sort_events(self, rows: int | None, progress: Progress | None = None) -> None:
        """Rewrite the last ``rows`` events (None: all) as sorted blocks of
        about :attr:`compact_rows` each, ordered by ``EVENTS_SORT``, inside the
        caller's transaction, before it adds rows of its own.

        Appended rows take row ids after every other, so the unsorted events
        are the last ``rows`` row ids (DuckDB keeps insertion order; a
        checkpoint may renumber rows past deleted ones, but keeps their order).
        Rows deleted since (a replaced duplicate, ``_remove``) may leave a few
        unsorted rows out, or take a few sorted ones in: the content never
        changes, only the order of rows, and so the row groups a question skips.
        """
        con = self.con
        ((end,),) = con.execute("SELECT max(rowid) + 1 FROM events").fetchall()
        if end is not None:
            start = 0 if rows is None else max(int(end) - rows, 0)
            blocks = max(1, (end - start) // self.compact_rows)
            bounds = [start + (end - start) * k // blocks for k in range(blocks + 1)]
            for low, high in itertools.pairwise(bounds):
                con.execute(
                    "INSERT INTO events SELECT * FROM events WHERE rowid >= ? AND rowid < ? "
                    f"ORDER BY {EVENTS_SORT}",
                    [low, high],
                )
                if progress is not None:
                    progress(high - start, end - start)
            con.execute("DELETE FROM events WHERE rowid >= ? AND rowid < ?", [start, end])
        ((rows,),) = con.execute("SELECT count(*) FROM events").fetchall()
        self._events = int(rows)
        con.execute(f"COMMENT ON TABLE events IS '{SORTED_COMMENT.format(int(rows))}'")

    def sort_events(self, progress: Progress | None = None) -> None:
        """Every event into sorted blocks, in one transaction: for stores
        written other than by :meth:`apply` (``bench/reports.py`` writes its
        synthetic product with SQL)."""
        self._transaction(lambda: self._sort_events(None, progress))

    def _remove(self, replaced: list[Order]) -> dict[str, set[str]]:
        """Delete every trace of records that an earlier duplicate replaces;
        the identities of aliases among them, by product."""
        touched: dict[str, set[str]] = {}
        if not replaced:
            return touched
        with registered(self.con, "_gone", orders(o[1:] for o in replaced)):
            for product, a, b in self.con.execute(
                "SELECT product, a, b FROM aliases JOIN _gone USING (stream, position)"
            ).fetchall():
                touched.setdefault(product, set()).update((a, b))
            for name in ("seen", "events", "property_values", "aliases", "rejects"):
                ((deleted,),) = self.con.execute(
                    f"DELETE FROM {name} WHERE (stream, position) IN "
                    "(SELECT stream, position FROM _gone)"
                ).fetchall()
                if name == "events" and self._events is not None:
                    self._events -= deleted
        return touched

    def _write_revocations(self, revocations: list[tuple[str, Edge]]) -> None:
        rows = Rows(product=TEXT, a=TEXT, b=TEXT, recv_ns=INT, stream=TEXT, position=INT)
        for product, edge in revocations:
            rows.append(product, edge.a, edge.b, *edge.order)
        insert(self.con, "revocations", rows)

    def _bump(self, counter: str, by: int) -> None:
        if by:
            self.con.execute(
                "INSERT INTO counters VALUES (?, ?) "
                "ON CONFLICT DO UPDATE SET value = counters.value + EXCLUDED.value",
                [counter, by],
            )

    def _save_positions(
        self, entries: Iterable[Entry], reach: dict[str, int] | None = None
    ) -> None:
        """The positions after ``entries`` (or ``reach``, where damage at the end
        of a batch was skipped), and how many records each stream gained."""
        reached: dict[str, int] = dict(reach or {})
        records: Counter[str] = Counter()
        for entry in entries:
            records[entry.stream] += 1
            if entry.next_position > reached.get(entry.stream, -1):
                reached[entry.stream] = entry.next_position
        for stream, position in reached.items():
            self.con.execute(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET "
                "position = greatest(positions.position, EXCLUDED.position), "
                "records = positions.records + EXCLUDED.records",
                [stream, position, records[stream]],
            )
