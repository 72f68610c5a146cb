"""What the CLI and the API share of an export: its query, in bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb

from tally.errors import InvalidInput
from tally.migrate.tables import (
    EVENT_SCHEMA,
    EVERY_EVENT,
    PEOPLE_SCHEMA,
    EventFilter,
    event_batches,
    event_property_names,
    event_where,
    people_batches,
    people_property_names,
)
from tally.migrate.writers import EXPORT_FORMATS, encode
from tally.views.common import parse_time

KINDS = ("events", "people")
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


def event_filter(time_from: Any, time_to: Any, event: str | None) -> EventFilter:
    return EventFilter(parse_time(time_from, "from"), parse_time(time_to, "to"), event or None)


def check_export(kind: str, fmt: str) -> None:
    if kind not in KINDS:
        raise InvalidInput(f"an export is of {' or '.join(KINDS)}, not {kind!r}", field="kind")
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"the format is one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}",
                           field="format")  # fmt: skip


def export_bytes(
    con: duckdb.DuckDBPyConnection,
    product: str,
    kind: str,
    fmt: str,
    f: EventFilter = EVERY_EVENT,
) -> Iterator[bytes]:
    """The export of ``kind`` (events or people) in ``fmt``, as it is made."""
    check_export(kind, fmt)
    if kind == "events":
        names = event_property_names(con, product, f) if fmt == "csv" else []
        return encode(fmt, EVENT_SCHEMA, event_batches(con, product, f), names)
    names = people_property_names(con, product) if fmt == "csv" else []
    return encode(fmt, PEOPLE_SCHEMA, people_batches(con, product), names)


def count_rows(
    con: duckdb.DuckDBPyConnection, product: str, kind: str, f: EventFilter = EVERY_EVENT
) -> int:
    """How many rows an export will have (for its progress bar)."""
    if kind == "events":
        condition, params = event_where(product, f)
        row = con.execute(f"SELECT count(*) FROM events e WHERE {condition}", params).fetchone()
    else:
        row = con.execute(
            "SELECT count(DISTINCT coalesce(i.person, k.identity)) FROM known_identities k "
            "LEFT JOIN identities i ON i.product = k.product AND i.ih = k.ih "
            "AND i.identity = k.identity WHERE k.product = ?",
            [product],
        ).fetchone()
    return int(row[0]) if row else 0
