"""The store contract: what the processor writes and what the reports read.

Every engine (DuckDB, :mod:`tally.store.store`, today; ClickHouse later) is one
object that is both sides of this contract, opened by name
(:func:`tally.store.open_engine`). The processor, ``tally rebuild``, the
replay of rejects, the query pool, the API, the dashboard and the CLI hold an
engine only through these protocols; the reports and views only through a
:class:`Cursor` and the engine's :class:`~tally.reports.sql.Dialect`.
``mypy --strict`` proves that the DuckDB classes conform (the end of
:mod:`tally.store`); ``tests/test_store_contract.py`` runs one suite against
every engine in :data:`tally.store.ENGINES`. docs/store.md, "The store
contract", says the same for people.

**The write side** (:class:`Writer`). One writer at a time (DESIGN §3).

- A batch is the log's records with their places (``Entry``: stream, position,
  the position after it), normalised by :func:`tally.store.batch.prepare`,
  which is pure and the same for every engine. :meth:`Writer.write` applies it
  **exactly once**: its rows and the positions it reaches
  (:meth:`Writer.positions`) commit together or not at all, so a crash at any
  instant neither loses nor doubles a record. Callers resume from
  :meth:`Writer.positions` and hand each record once: a record is never
  handed again once its position is applied (an engine need not absorb one
  that is: DuckDB would store it twice). Records may come in any order
  across streams and batches (below).
- SPEC §4: a record whose de-duplication key (product, identity, endpoint,
  event key or other identity, de-duplication time, every property) equals an
  earlier one's is a duplicate, counted and not stored; against the whole
  history, the **earlier in the total order** (SPEC §11: receive time, stream,
  position) is the one kept, even when it is read second (it takes the later
  one's place).
- SPEC §5: people are the connected components of the accepted aliases,
  re-derived in the total order wherever an alias or an operator's revocation
  arrives or goes (``alias_cap`` beyond ``cap`` identities; a person is named
  by its smallest identity); the result depends on the set of records only.
- SPEC §6: every property value is kept with its time and order (from ``/s``
  and ``/e``); a display name is the first spelling in the total order (SPEC
  §2).
- SPEC §7: a record that cannot be applied is a reject with its reason and
  parameters, and a property dropped from an applied record is listed;
  :meth:`Writer.replay` applies rejected records again in their own place in
  the order. A batch that fails for a bug is applied record by record (an
  ``internal_error`` reject for a record that still fails alone); a failure
  of the engine's machinery (:meth:`Writer.is_failure`: a full disk, I/O,
  memory) raises :class:`~tally.store.batch.StoreFailure` with nothing applied
  and no position moved.
- The store is a function of the records: any interleaving of the streams, in
  any batches, gives the same tables (``tests/test_order_independence.py``).

**The read side** (:class:`Reader`, :class:`Cursor`). Readers run beside the
writer, each on its own cursor (:meth:`Reader.reading`), and see whole batches
only (a batch and its positions are one transaction). What they may read is
this schema; the columns an engine lays out differently, it presents under
these names (a view). Every table holds ``product``; order columns are the
total order of SPEC §11 (``recv_ns``, ``stream``, ``position``); ``ih``/``ph``/
``ah``/``bh`` are the 64-bit hash of the identity column beside them
(:meth:`~tally.reports.sql.Dialect.identity_hash`).

- ``events``: one row per applied event: ``identity`` as sent, ``event`` (the
  name key), ``time`` (event time, s), ``recv_ns``, ``stream``, ``position``,
  ``properties`` (key -> value, as sent with the event), ``metadata``, ``ih``,
  and ``ph``: the identity's person as the store knew it when the row was
  written.
- ``property_values``: every value ever set on an identity (SPEC §6):
  ``identity``, ``key``, ``value``, ``time``, the order columns, ``ih``, ``ph``.
- ``moved``: ``ih`` -> ``ph``, the current person of every identity whose
  person changed since rows of it may have been written. The invariant an
  engine keeps, whatever order records arrive in (SPEC §5): a row's ``ph`` is
  its identity's current person unless the identity is in ``moved``, whose
  ``ph`` then is; a row's person is ``coalesce(moved.ph, ph)``
  (:meth:`~tally.reports.sql.Dialect.person_join`,
  :meth:`~tally.reports.sql.Dialect.person`). An engine may fold ``moved``
  into the rows at any time, in one transaction (what rows store then
  changes, never what they mean).
- ``identities``: aliased identities only: ``identity`` -> ``person`` (the
  smallest identity of its component) and ``grp``; ``ih``, ``ph``. For rows
  that store no person (``known_identities``), a person is
  ``coalesce(identities.ph, ih)``
  (:meth:`~tally.reports.sql.Dialect.graph_person`).
- ``aliases``: alias edges ``a``, ``b``, ``time``, the order columns and
  ``status`` (``accepted``, ``alias_cap``, ``revoked``); ``ah``, ``bh``.
- ``revocations``: operators' revocations ``a``, ``b`` with their order.
- ``known_identities``: every ``identity`` an applied event or property set
  names (with the aliases not capped: the known ones; a person page 404s on
  others), ``ih``.
- ``names``: ``kind`` (event, property), ``key`` -> ``display``, the first
  spelling (SPEC §2).
- ``rejects``: ``reason``, ``path``, the order columns, ``params`` (JSON list
  of [name, value]), ``detail``; ``product`` is NULL for an unknown key.
- ``positions``: ``stream`` -> ``position`` applied and ``records`` before it.
- ``counters``: ``name`` -> ``value`` (``duplicates`` absorbed).

(``seen``, the de-duplication keys, and ``meta`` are the engine's own.)

Reports and views build their SQL with :mod:`tally.reports.sql` and spell
everything an engine spells differently through the engine's
:attr:`Reader.dialect`; an engine provides a ``Dialect`` whose methods
(``order_key``, ``first_by``, ``last_by``, ``prop``, ``numeric``,
``exact_sum``, ``median``, ``ordered_list``, ``bit``, ``bit_or``,
``has_bit``, ``below_bit``, ``bucket``, ``bucket_join``, ``bucket_number``,
``identity_hash``, ``person_join``, ``person``, ``person_number``,
``people_numbered``, ``people_set``, ``people_union``, ``people_count``,
``graph_join``, ``graph_person``, ``with_identities``, ``person_name``,
``person_name_narrowed``, ``recorded_person_name``) keep the
meaning their docstrings state. What still bypasses the dialect is listed in
docs/store.md ("What a second engine provides").
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tally.beacon import KeyLookup
    from tally.log.reader import Entry
    from tally.reports.sql import Dialect
    from tally.store.batch import ApplyStats, Prepared, Progress


class Result(Protocol):
    """The rows of the statement a cursor last executed, as tuples."""

    def fetchall(self) -> list[tuple[Any, ...]]: ...

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row; None when none is left."""
        ...

    def fetchmany(self, size: int, /) -> list[tuple[Any, ...]]:
        """Up to ``size`` more rows (fewer at the end): the people CSV streams."""
        ...


class Cursor(Protocol):
    """What a report or a view is given: one thread's connection to the store.

    ``execute`` takes SQL text with ``?`` placeholders and their values in
    order (tally.reports.sql.Sql), never values pasted into the text."""

    def execute(self, query: str, parameters: Any = None, /) -> Result: ...

    def begin(self) -> object:
        """Start a transaction: every statement until :meth:`rollback` reads
        one snapshot (the person page reads several tables)."""
        ...

    def rollback(self) -> object: ...

    def interrupt(self) -> None:
        """Stop the statement running on this cursor, from another thread
        (the query pool's timeout, a client gone)."""
        ...

    def close(self) -> None: ...


class Staging(Protocol):
    """Where the processor's preparing thread hands batches to the engine
    before they are written (DuckDB: an in-memory table, made on a cursor of
    that thread), so that writing one batch overlaps preparing the next."""

    def stage(self, prepared: Prepared) -> None:
        """Make ``prepared`` ready to write (idempotent; a batch that
        :meth:`Writer.write` finds unstaged is staged there)."""
        ...

    def unstage(self, prepared: Prepared) -> None:
        """Free a staged batch that will not be written."""
        ...

    def close(self) -> None: ...


class Writer(Protocol):
    """The write side: what the processor, ``tally rebuild`` and the replay of
    rejects call. One writer at a time; see the module's docstring."""

    def positions(self) -> dict[str, int]:
        """Per log stream, the position up to which records are applied (the
        processor resumes there)."""
        ...

    def write(self, prepared: Prepared, *, cap: int = ...) -> ApplyStats:
        """Apply a prepared batch and the positions it reaches, atomically and
        exactly once (SPEC §4 to §7; ``cap``: max identities per person)."""
        ...

    def apply(
        self,
        entries: Sequence[Entry],
        keys: KeyLookup,
        *,
        blocked: frozenset[str] = ...,
        cap: int = ...,
    ) -> ApplyStats:
        """:func:`~tally.store.batch.prepare` then :meth:`write`."""
        ...

    def replay(
        self,
        entries: Sequence[Entry],
        keys: KeyLookup,
        *,
        blocked: frozenset[str] = ...,
        cap: int = ...,
    ) -> ApplyStats:
        """Apply rejected records again (SPEC §7): their rejects and keys go,
        and they are applied in their own place in the total order."""
        ...

    def staging(self) -> Staging:
        """A staging lane for another thread (closed by the caller)."""
        ...

    def warm(self) -> None:
        """Read ahead what writes keep in memory (DuckDB: the person numbers),
        so that the first batch does not wait for it; writes read it anyway
        when it is not read."""
        ...

    def is_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the engine's machinery failing (a full disk, an
        I/O error, memory), not a record: nothing is applied, the processor
        retries the same records (DESIGN §2)."""
        ...

    def recover(self) -> None:
        """After a failure: make the engine usable again if it can (DuckDB:
        reconnect); errors are left for the next write."""
        ...

    def tidy(self) -> bool:
        """The processor has nothing to apply: upkeep the engine put off while
        records came (DuckDB: fold ``moved``); whether it did any."""
        ...

    def limit_threads(self, threads: int) -> None:
        """The engine's own worker threads outside reports (the processor
        yields to ingest with one; :meth:`Reader.all_threads` lends more)."""
        ...

    def limit_memory(self, memory: int, spill: int) -> None:
        """At most ``memory`` bytes of memory and ``spill`` bytes spilled to
        disk, for the writer and every reader together."""
        ...

    def bulk(self) -> AbstractContextManager[None]:
        """While a whole store is written (``tally rebuild``): the engine may
        defer what is cheaper to build once at the end (DuckDB: indexes)."""
        ...

    def sort_events(self, progress: Progress | None = None) -> None:
        """Compaction: lay every event out for the questions (DuckDB: sorted
        blocks by product, event, time), for stores written other than by
        :meth:`write`; the content never changes."""
        ...

    def checkpoint(self) -> None:
        """Everything written made durable in the engine's own files."""
        ...

    def close(self) -> None: ...


class Reader(Protocol):
    """The read side: what the query pool, the API, the dashboard and the
    CLI take a cursor from; the reports and views get the cursor and the
    dialect."""

    @property
    def dialect(self) -> Dialect:
        """This engine's spelling of what the reports need (tally.reports.sql)."""
        ...

    def reading(self) -> AbstractContextManager[Cursor]:
        """A cursor for one reader's thread, closed after the block. The
        engine failing is raised as :class:`~tally.store.batch.StoreFailure`
        (503), a query past the memory limit as
        :class:`~tally.errors.QueryTooLarge` (507)."""
        ...

    def all_threads(self) -> AbstractContextManager[None]:
        """Every core for the engine while a report runs."""
        ...

    def close(self) -> None: ...


class Engine(Writer, Reader, Protocol):
    """A store: both sides of the contract, on one set of tables."""


class Opener(Protocol):
    """How an engine is opened (:data:`tally.store.ENGINES`): a store that
    cannot be opened raises :class:`~tally.errors.Unavailable`
    (``store_unavailable``; ``store_too_new``; ``store_conversion_failed``)."""

    def __call__(
        self, path: Path, *, read_only: bool = False, progress: Progress | None = None
    ) -> Engine: ...
