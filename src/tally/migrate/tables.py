"""Events and people of a product as streams of Arrow record batches.

An export reads the store through one query whose result DuckDB hands over a
batch at a time (an Arrow record batch reader), so memory stays bounded whatever
the size: a batch of rows is converted and written before the next is read.
Times are UTC (SPEC §3); names are the display names (SPEC §2); the person is
the identity's person now (SPEC §5).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tally.names import name_key
from tally.views.events import property_names

BATCH_ROWS = 50_000

EVENT_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("s", tz="UTC")),
        ("event", pa.string()),
        ("person", pa.string()),
        ("identity", pa.string()),
        ("properties", pa.map_(pa.string(), pa.string())),
        ("metadata", pa.map_(pa.string(), pa.string())),
    ]
)
PEOPLE_SCHEMA = pa.schema(
    [
        ("person", pa.string()),
        ("identities", pa.list_(pa.string())),
        ("properties", pa.map_(pa.string(), pa.string())),
    ]
)


@dataclass(frozen=True)
class EventFilter:
    start: int | None = None  # Unix seconds, inclusive
    end: int | None = None  # exclusive
    event: str | None = None  # a name, in any spelling


#: No filter: every event.
EVERY_EVENT = EventFilter()


def event_where(product: str, f: EventFilter) -> tuple[str, list[Any]]:
    where: list[str] = ["e.product = ?"]
    params: list[Any] = [product]
    if f.start is not None:
        where.append("e.time >= ?")
        params.append(f.start)
    if f.end is not None:
        where.append("e.time < ?")
        params.append(f.end)
    if f.event:
        where.append("e.event = ?")
        params.append(name_key(f.event))
    return " AND ".join(where), params


def event_property_names(con: duckdb.DuckDBPyConnection, product: str, f: EventFilter) -> list[str]:
    """The display names of every property the selected events carry, sorted."""
    condition, params = event_where(product, f)
    names = property_names(con, product)
    keys = con.execute(
        f"SELECT DISTINCT unnest(map_keys(e.properties)) FROM events e WHERE {condition}", params
    ).fetchall()
    return sorted(names.get(k, k) for (k,) in keys)


def event_batches(
    con: duckdb.DuckDBPyConnection, product: str, f: EventFilter = EVERY_EVENT
) -> Iterator[pa.RecordBatch]:
    """The events, oldest first (SPEC §11's order), as :data:`EVENT_SCHEMA` batches."""
    condition, params = event_where(product, f)
    names = property_names(con, product)
    reader = batches_of(
        con,
        f"""
        SELECT e.time, coalesce(n.display, e.event) AS event,
               coalesce(i.person, e.identity) AS person, e.identity,
               e.properties, e.metadata
        FROM events e
        LEFT JOIN names n ON n.product = e.product AND n.kind = 'event' AND n.key = e.event
        LEFT JOIN identities i ON i.product = e.product AND i.ih = e.ih
        WHERE {condition}
        ORDER BY e.time, e.recv_ns, e.stream, e.position
        """,
        params,
    )
    display = _Displays(names)
    for batch in reader:
        yield pa.RecordBatch.from_arrays(
            [
                batch.column("time").cast(pa.timestamp("s", tz="UTC")),
                batch.column("event"),
                batch.column("person"),
                batch.column("identity"),
                display.of(batch.column("properties")),
                batch.column("metadata").cast(EVENT_SCHEMA.field("metadata").type),
            ],
            schema=EVENT_SCHEMA,
        )


class _Displays:
    """Property keys to display names, a whole map column at a time (Arrow's
    kernels, no Python loop over rows)."""

    def __init__(self, names: dict[str, str]) -> None:
        self._keys = pa.array(list(names), pa.string())
        self._displays = pa.array(list(names.values()), pa.string())

    def of(self, column: pa.Array) -> pa.MapArray:
        column = column.cast(pa.map_(pa.string(), pa.string()))
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        keys = column.keys
        found = pc.index_in(keys, value_set=self._keys)
        shown = pc.if_else(pc.is_null(found), keys, pc.take(self._displays, found))
        return pa.MapArray.from_arrays(column.offsets, shown, column.items)


def people_property_names(con: duckdb.DuckDBPyConnection, product: str) -> list[str]:
    names = property_names(con, product)
    keys = con.execute(
        "SELECT DISTINCT key FROM property_values WHERE product = ?", [product]
    ).fetchall()
    return sorted(names.get(k, k) for (k,) in keys)


def people_batches(con: duckdb.DuckDBPyConnection, product: str) -> Iterator[pa.RecordBatch]:
    """Every person with their identities and the current value of each of
    their properties (SPEC §6: the latest by event time, then the total order)."""
    names = property_names(con, product)
    reader = batches_of(
        con,
        """
        WITH known AS (
            SELECT identity, ih FROM known_identities WHERE product = $product
            UNION
            SELECT identity, ih FROM identities WHERE product = $product
        ),
        people AS (
            SELECT coalesce(i.person, k.identity) AS person,
                   list(k.identity ORDER BY k.identity) AS identities
            FROM known k LEFT JOIN identities i ON i.product = $product AND i.ih = k.ih
                 AND i.identity = k.identity
            GROUP BY ALL
        ),
        current AS (
            SELECT person, list(key ORDER BY key) AS keys, list(value ORDER BY key) AS vals
            FROM (
                SELECT coalesce(i.person, p.identity) AS person, p.key,
                       arg_max(p.value, (p.time, p.recv_ns, p.stream, p.position)) AS value
                FROM property_values p
                LEFT JOIN identities i ON i.product = p.product AND i.ih = p.ih
                     AND i.identity = p.identity
                WHERE p.product = $product
                GROUP BY ALL
            )
            GROUP BY person
        )
        SELECT p.person, p.identities, coalesce(c.keys, []) AS keys,
               coalesce(c.vals, []) AS vals
        FROM people p LEFT JOIN current c USING (person)
        ORDER BY p.person
        """,
        {"product": product},
    )
    for batch in reader:
        keys = batch.column("keys").to_pylist()
        values = batch.column("vals").to_pylist()
        properties = [
            [(names.get(k, k), v) for k, v in zip(ks, vs, strict=True)]
            for ks, vs in zip(keys, values, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(
            [
                batch.column("person"),
                batch.column("identities"),
                pa.array(properties, PEOPLE_SCHEMA.field("properties").type),
            ],
            schema=PEOPLE_SCHEMA,
        )


def batches_of(con: duckdb.DuckDBPyConnection, query: str, params: Any) -> Any:
    """A query's result as Arrow record batches, read as they are consumed
    (``to_arrow_reader`` of a relation in DuckDB 1.4 and later,
    ``fetch_arrow_reader`` before)."""
    relation = con.sql(query, params=params)
    fetch = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return fetch(BATCH_ROWS)
