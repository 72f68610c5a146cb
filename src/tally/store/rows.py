"""Building Arrow tables row by row, and moving them into DuckDB.

DESIGN "Embedded default": DuckDB takes rows fastest as Arrow tables, so every
write of the store goes through one of these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from tally.store.schema import IDENTITY_HASH

TEXT = pa.string()
INT = pa.int64()
TEXT_MAP = pa.map_(pa.string(), pa.string())
HASH = pa.uint64()  # an identity's or a person's hash (schema.IDENTITY_HASH)
NUMBER = pa.uint32()  # a person's number (schema.py, ``persons``)


class Rows:
    """Columns of one table, filled a row at a time."""

    def __init__(self, **schema: pa.DataType) -> None:
        self.schema = schema
        self.columns: list[list[Any]] = [[] for _ in schema]

    def append(self, *values: Any) -> None:
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)

    def __len__(self) -> int:
        return len(self.columns[0])

    def table(self) -> pa.Table:
        return pa.table(
            {
                name: pa.array(column, kind)
                for (name, kind), column in zip(self.schema.items(), self.columns, strict=True)
            }
        )


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, rows: Rows | pa.Table) -> Iterator[str]:
    """``rows`` visible to SQL as the view ``name`` for the ``with`` block."""
    con.register(name, rows.table() if isinstance(rows, Rows) else rows)
    try:
        yield name
    except BaseException:
        # In a transaction the failure aborted, unregistering fails too: the
        # error to raise is the failure's (the store's processor retries).
        with contextlib.suppress(duckdb.Error):
            con.unregister(name)
        raise
    con.unregister(name)


def insert(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: Rows,
    suffix: str = "",
    *,
    hashes: dict[str, str] | None = None,
) -> None:
    """Insert ``rows``; ``hashes`` adds hash columns: column -> the identity
    column it hashes (schema.IDENTITY_HASH)."""
    if not len(rows):
        return
    names = [*rows.schema, *(hashes or {})]
    values = [*rows.schema, *(IDENTITY_HASH.format(s) for s in (hashes or {}).values())]
    with registered(con, "_rows", rows):
        con.execute(
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} FROM _rows "
            + suffix
        )


def orders(items: Any) -> Rows:
    """A (stream, position) table, the key of a record in every table."""
    rows = Rows(stream=TEXT, position=INT)
    for stream, position in items:
        rows.append(stream, position)
    return rows


def reject_rows() -> Rows:
    """Rows for the ``rejects`` table."""
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
