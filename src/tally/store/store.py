"""Applying batches of log records to the store, exactly once.

A batch is applied in one transaction together with the log positions it
reaches, so a crash at any instant leaves the store as it was before the batch
or after it (DESIGN §3). Within the batch, records are normalised
(:mod:`tally.beacon`), de-duplicated against the whole history (SPEC §4: the
earlier record in the total order is the one kept, whichever was read first),
written, and the identity graph is re-derived where aliases changed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from tally import identity_graph
from tally.beacon import DEFAULT_BLOCKED, Beacon, KeyLookup, Rejected, parse_record
from tally.identity_graph import Edge, Order
from tally.log.reader import Entry
from tally.operations import parse_operator
from tally.store.graph import rederive
from tally.store.rows import INT, TEXT, TEXT_MAP, Rows, insert, orders, registered
from tally.store.schema import DDL, SCHEMA_VERSION

log = logging.getLogger("tally.store")

DEFAULT_CAP = 1000
PROPERTY_DROPPED = "property_dropped"
INTERNAL_ERROR = "internal_error"


@dataclass
class ApplyStats:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Item:
    order: Order
    parsed: Beacon | Rejected
    dedup_time: int
    h1: int
    h2: int


def _halves(digest: bytes) -> tuple[int, int]:
    return (
        int.from_bytes(digest[:8], "little", signed=True),
        int.from_bytes(digest[8:16], "little", signed=True),
    )


def _dedup_time(parsed: Beacon | Rejected) -> int:
    if isinstance(parsed, Beacon):
        return parsed.dedup_time
    return getattr(parsed, "dedup_time", parsed.recv_ns // 1_000_000_000)


class Store:
    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = path
        self.con = duckdb.connect(str(path), read_only=read_only)
        if not read_only:
            self.con.execute(DDL)
            self.con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                [str(SCHEMA_VERSION)],
            )

    def close(self) -> None:
        self.con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for another thread (DuckDB: one cursor per thread)."""
        return self.con.cursor()

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
        """Apply ``entries`` and record the positions they reach, atomically.

        A batch that fails as a whole (a bug, not bad input) is applied record by
        record, and the records that still fail are kept as ``internal_error``
        rejects: the pipeline never stops on one record (issue: "bad input").
        """
        try:
            stats: ApplyStats = self._transaction(
                lambda: self._apply(entries, keys, blocked, cap, entries)
            )
            return stats
        except Exception as exc:  # any bug at all: one record must not stop the pipeline
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
                stats = self.apply([entry], keys, blocked=blocked, cap=cap)
                total.records += stats.records
                total.applied += stats.applied
                total.duplicates += stats.duplicates
                total.rejected.update(stats.rejected)
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
            return self._apply(entries, keys, blocked, cap, ())

        return self._transaction(work)  # type: ignore[no-any-return]

    def _transaction(self, work: Any) -> Any:
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = work()
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        return result

    def _keep_failed(self, entry: Entry, exc: Exception) -> ApplyStats:
        record = entry.record
        rows = _reject_rows()
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
        entries: Sequence[Entry],
        keys: KeyLookup,
        blocked: frozenset[str],
        cap: int,
        position_entries: Iterable[Entry],
    ) -> ApplyStats:
        stats = ApplyStats(records=len(entries))
        items: list[_Item] = []
        revocations: list[tuple[str, Edge]] = []
        for entry in entries:
            record = entry.record
            order = (record.recv_ns, entry.stream, entry.position)
            if record.method == "OPERATOR":
                revocation = parse_operator(record)
                if revocation is not None:
                    revocations.append(
                        (revocation.product, Edge(revocation.a, revocation.b, order))
                    )
                continue
            parsed = parse_record(record, keys, blocked=blocked)
            if parsed is None:
                continue
            digest = parsed.dedup_key() if isinstance(parsed, Beacon) else parsed.dedup_key
            h1, h2 = _halves(digest)
            items.append(_Item(order, parsed, _dedup_time(parsed), h1, h2))

        kept, duplicates, replaced = self._deduplicate(items)
        stats.duplicates = duplicates
        touched = self._remove(replaced)
        self._write(kept, stats)
        self._write_revocations(revocations)
        for product, edge in revocations:
            touched.setdefault(product, set()).update((edge.a, edge.b))
        for item in kept:
            parsed = item.parsed
            if isinstance(parsed, Beacon) and parsed.kind == "alias" and parsed.other is not None:
                touched.setdefault(parsed.product, set()).update((parsed.identity, parsed.other))
        for product, seeds in touched.items():
            stats.rejected[identity_graph.CAPPED] += rederive(self.con, product, seeds, cap)
        if not stats.rejected[identity_graph.CAPPED]:
            del stats.rejected[identity_graph.CAPPED]
        self._bump("duplicates", duplicates)
        self._save_positions(position_entries)
        return stats

    # -- de-duplication (SPEC §4) ------------------------------------------------------------

    def _deduplicate(self, items: list[_Item]) -> tuple[list[_Item], int, list[Order]]:
        """Keep, of each set of duplicates, the earliest in the total order: the
        stored one, or one of this batch, which then replaces the stored one."""
        best: dict[tuple[int, int, int], _Item] = {}
        duplicates = 0
        for item in items:
            key = (item.dedup_time, item.h1, item.h2)
            current = best.get(key)
            if current is None:
                best[key] = item
            else:
                duplicates += 1
                if item.order < current.order:
                    best[key] = item
        if not best:
            return [], duplicates, []
        candidates = Rows(dedup_time=INT, h1=INT, h2=INT)
        for key in best:
            candidates.append(*key)
        with registered(self.con, "_candidates", candidates):
            stored = self.con.execute(
                "SELECT c.dedup_time, c.h1, c.h2, s.recv_ns, s.stream, s.position "
                "FROM _candidates c JOIN seen s "
                "ON s.dedup_time = c.dedup_time AND s.h1 = c.h1 AND s.h2 = c.h2"
            ).fetchall()
        replaced: list[Order] = []
        for dedup_time, h1, h2, recv_ns, stream, position in stored:
            key = (dedup_time, h1, h2)
            item = best[key]
            earlier: Order = (recv_ns, stream, position)
            if earlier == item.order:  # the very same record (a replayed reject)
                continue
            duplicates += 1
            if earlier < item.order:
                del best[key]
            else:  # read later, yet earlier in the total order: it takes the place
                replaced.append(earlier)
        return list(best.values()), duplicates, replaced

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
                self.con.execute(
                    f"DELETE FROM {name} WHERE (stream, position) IN "
                    "(SELECT stream, position FROM _gone)"
                )
        return touched

    # -- writing ---------------------------------------------------------------------------

    def _write(self, kept: list[_Item], stats: ApplyStats) -> None:
        seen = Rows(dedup_time=INT, h1=INT, h2=INT, recv_ns=INT, stream=TEXT, position=INT)
        events = Rows(
            product=TEXT,
            identity=TEXT,
            event=TEXT,
            time=INT,
            recv_ns=INT,
            stream=TEXT,
            position=INT,
            properties=TEXT_MAP,
            metadata=TEXT_MAP,
        )
        values = Rows(
            product=TEXT,
            identity=TEXT,
            key=TEXT,
            value=TEXT,
            time=INT,
            recv_ns=INT,
            stream=TEXT,
            position=INT,
        )
        aliases = Rows(
            product=TEXT,
            a=TEXT,
            b=TEXT,
            time=INT,
            recv_ns=INT,
            stream=TEXT,
            position=INT,
            status=TEXT,
        )
        rejects = _reject_rows()
        names: dict[tuple[str, str, str], tuple[Order, str]] = {}
        identities: set[tuple[str, str]] = set()

        def name(product: str, kind: str, key: str, display: str, order: Order) -> None:
            current = names.get((product, kind, key))
            if current is None or order < current[0]:
                names[(product, kind, key)] = (order, display)

        for item in kept:
            recv_ns, stream, position = order = item.order
            seen.append(item.dedup_time, item.h1, item.h2, recv_ns, stream, position)
            parsed = item.parsed
            if isinstance(parsed, Rejected):
                stats.rejected[parsed.reason] += 1
                rejects.append(
                    parsed.product,
                    str(parsed.reason),
                    parsed.path,
                    recv_ns,
                    stream,
                    position,
                    json.dumps(parsed.params, ensure_ascii=False),
                    None,
                )
                continue
            stats.applied += 1
            product, identity, time = parsed.product, parsed.identity, parsed.time
            identities.add((product, identity))
            if parsed.kind == "alias":
                other = parsed.other or ""
                identities.add((product, other))
                aliases.append(
                    product,
                    identity,
                    other,
                    time,
                    recv_ns,
                    stream,
                    position,
                    identity_graph.ACCEPTED,
                )
                continue
            if parsed.kind == "event" and parsed.event_key and parsed.event_display:
                events.append(
                    product,
                    identity,
                    parsed.event_key,
                    time,
                    recv_ns,
                    stream,
                    position,
                    [(p.key, p.value) for p in parsed.properties],
                    list(parsed.metadata),
                )
                name(product, "event", parsed.event_key, parsed.event_display, order)
            for prop in parsed.properties:
                values.append(
                    product, identity, prop.key, prop.value, time, recv_ns, stream, position
                )
                name(product, "property", prop.key, prop.display, order)
            path = "/e" if parsed.kind == "event" else "/s"
            for prop_name, reason in parsed.dropped:
                rejects.append(
                    product,
                    PROPERTY_DROPPED,
                    path,
                    recv_ns,
                    stream,
                    position,
                    "[]",
                    f"{prop_name[:300]}: {reason}",
                )

        insert(self.con, "seen", seen)
        insert(self.con, "events", events)
        insert(self.con, "property_values", values)
        insert(self.con, "aliases", aliases)
        insert(self.con, "rejects", rejects)
        known = Rows(product=TEXT, identity=TEXT)
        for pair in identities:
            known.append(*pair)
        insert(self.con, "known_identities", known, "ON CONFLICT DO NOTHING")
        self._upsert_names(names)

    def _upsert_names(self, names: dict[tuple[str, str, str], tuple[Order, str]]) -> None:
        rows = Rows(
            product=TEXT, kind=TEXT, key=TEXT, display=TEXT, recv_ns=INT, stream=TEXT, position=INT
        )
        for (product, kind, key), ((recv_ns, stream, position), display) in names.items():
            rows.append(product, kind, key, display, recv_ns, stream, position)
        # SPEC §2: the display name is the first spelling in the total order.
        insert(
            self.con,
            "names",
            rows,
            "ON CONFLICT DO UPDATE SET display = EXCLUDED.display, recv_ns = EXCLUDED.recv_ns, "
            "stream = EXCLUDED.stream, position = EXCLUDED.position "
            "WHERE EXCLUDED.recv_ns < names.recv_ns OR (EXCLUDED.recv_ns = names.recv_ns AND "
            "(EXCLUDED.stream < names.stream OR (EXCLUDED.stream = names.stream AND "
            "EXCLUDED.position < names.position)))",
        )

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

    def _save_positions(self, entries: Iterable[Entry]) -> None:
        reached: dict[str, int] = {}
        for entry in entries:
            if entry.next_position > reached.get(entry.stream, -1):
                reached[entry.stream] = entry.next_position
        for stream, position in reached.items():
            self.con.execute(
                "INSERT INTO positions VALUES (?, ?) ON CONFLICT DO UPDATE SET "
                "position = greatest(positions.position, EXCLUDED.position)",
                [stream, position],
            )


def _reject_rows() -> Rows:
    return Rows(
        product=TEXT,
        reason=TEXT,
        path=TEXT,
        recv_ns=INT,
        stream=TEXT,
        position=INT,
        params=TEXT,
        detail=TEXT,
    )
