"""A product written in KISSmetrics' export layout (SPEC §10), for tools made for it.

``DEST/revisions/N.json`` (N from 1, each at most ``file_bytes`` long) hold one
JSON object a line, in the store's total order (SPEC §11): events
``{"_p", "_t", "_n", props…, metadata…}``, property sets ``{"_p", "_t",
props…}`` and aliases ``{"_p", "_t", "_p2"}``; names are display names
(SPEC §2), ``_t`` the event time (an alias's: when it was received).
``index.csv`` lists each file with the smallest and largest ``_t`` in it;
``status.csv`` says how many files there are and the largest ``_t``.

What is not there: duplicates and rejects (they were never applied), aliases
that were revoked or capped, and a ``/s`` that set no property. Importing the
export into a fresh data directory gives the same reports, with one caveat:
two records that differed only in the ``_t`` their client sent for
de-duplication, not in their event time, become duplicates (SPEC §4).
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tally.errors import Conflict
from tally.migrate.tables import batches_of
from tally.migrate.writers import column_text
from tally.views.events import property_names

FILE_BYTES = 64 * 1024 * 1024
INDEX_HEADER = ["filename", "min_timestamp", "max_timestamp", "min_utc_date", "max_utc_date"]
STATUS_HEADER = ["Total Revisions", "Exported Revisions", "Max Exported Revision Timestamp",
                 "Max Exported Revision UTC Timestamp"]  # fmt: skip
#: Metadata an event keeps that would mean something else in an export line.
_NOT_EXPORTED = frozenset({"_p2"})

#: The records received in [$lo, $hi), in the store's total order. (A
#: property set of an event has the event's receive time, stream and position.)
_RECORDS = """
SELECT kind, identity, other, name, time, keys, vals, mkeys, mvals FROM (
    SELECT e.recv_ns, e.stream, e.position, 'e' AS kind, e.identity, NULL::VARCHAR AS other,
           coalesce(n.display, e.event) AS name, e.time, map_keys(e.properties) AS keys,
           map_values(e.properties) AS vals, map_keys(e.metadata) AS mkeys,
           map_values(e.metadata) AS mvals
    FROM events e
    LEFT JOIN names n ON n.product = e.product AND n.kind = 'event' AND n.key = e.event
    WHERE e.product = $product AND e.recv_ns >= $lo AND e.recv_ns < $hi
    UNION ALL
    SELECT p.recv_ns, p.stream, p.position, 's', p.identity, NULL, NULL, any_value(p.time),
           list(p.key ORDER BY p.key), list(p.value ORDER BY p.key), []::VARCHAR[],
           []::VARCHAR[]
    FROM property_values p
    WHERE p.product = $product AND p.recv_ns >= $lo AND p.recv_ns < $hi AND NOT EXISTS (
        SELECT 1 FROM events e
        WHERE e.product = $product AND e.recv_ns >= $lo AND e.recv_ns < $hi
          AND e.stream = p.stream AND e.position = p.position)
    GROUP BY p.recv_ns, p.stream, p.position, p.identity
    UNION ALL
    SELECT recv_ns, stream, position, 'a', a, b, NULL, time, []::VARCHAR[], []::VARCHAR[],
           []::VARCHAR[], []::VARCHAR[]
    FROM aliases
    WHERE product = $product AND status = 'accepted' AND recv_ns >= $lo AND recv_ns < $hi
)
ORDER BY recv_ns, stream, position
"""
#: Rows (events, property values, aliases) a window of receive times holds at
#: most, about: the query's joins, groups and sort then fit in the export's
#: memory whatever the product's size.
WINDOW_ROWS = 1_000_000
_ROWS = """
SELECT recv_ns FROM events WHERE product = $product
UNION ALL SELECT recv_ns FROM property_values WHERE product = $product
UNION ALL SELECT recv_ns FROM aliases WHERE product = $product AND status = 'accepted'
"""
_FIRST, _LAST = -(2**63), 2**63 - 1


def windows(con: duckdb.DuckDBPyConnection, product: str) -> list[tuple[int, int]]:
    """Ranges of receive times [lo, hi), in order, that together hold every
    record, each about :data:`WINDOW_ROWS` rows of the store at most (cut at
    approximate quantiles: a window holds more when many rows share a time)."""
    # (fetchall: a result fetched to its end, as DuckDB 2 wants before the next query)
    count = int(
        con.execute(f"SELECT count(*) FROM ({_ROWS})", {"product": product}).fetchall()[0][0]
    )
    parts = -(-count // WINDOW_ROWS)
    if parts <= 1:
        return [(_FIRST, _LAST)]
    points = [i / parts for i in range(1, parts)]
    found = con.execute(f"SELECT approx_quantile(recv_ns, {points}) FROM ({_ROWS})",
                        {"product": product}).fetchall()  # fmt: skip
    cuts = sorted({int(cut) for cut in found[0][0]})
    bounds = [_FIRST, *cuts, _LAST]
    return list(itertools.pairwise(bounds))


@dataclass
class _File:
    name: str
    min_t: int | None = None
    max_t: int | None = None


@dataclass
class KmExport:
    records: int = 0
    files: list[_File] = field(default_factory=list)


def export_km(
    con: duckdb.DuckDBPyConnection,
    product: str,
    dest: Path,
    *,
    file_bytes: int = FILE_BYTES,
    on_batch: Callable[[int], object] | None = None,
) -> KmExport:
    """Write ``product``'s records under ``dest`` (new, or an empty folder)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise Conflict(f"{dest} exists and is not an empty folder: export into a new one",
                       field="dest")  # fmt: skip
    revisions = dest / "revisions"
    revisions.mkdir(parents=True, exist_ok=True)
    names = property_names(con, product)
    done = KmExport()
    lines = _Lines(names)
    out = None
    size = 0
    try:
        for batch in _batches(con, product):
            text, lengths = lines.of(batch)
            times = batch.column("time")
            start = 0  # row, and byte of text, where the current file's part begins
            byte = 0
            while start < batch.num_rows:
                if out is None or size >= file_bytes:
                    if out is not None:
                        out.close()
                    current = _File(f"revisions/{len(done.files) + 1}.json")
                    done.files.append(current)
                    out = open(dest / current.name, "wb")  # noqa: SIM115 (closed below)
                    size = 0
                # The rows up to the one that brings the file to file_bytes.
                ends = pc.cumulative_sum(lengths.slice(start))
                reached = pc.greater_equal(pc.add(ends, size), file_bytes)
                index = pc.index(reached, True).as_py()
                end = batch.num_rows if index < 0 else start + index + 1
                part = ends[end - start - 1].as_py()
                out.write(text[byte : byte + part])
                size += part
                bounds = pc.min_max(times.slice(start, end - start))
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                current.min_t = low if current.min_t is None else min(current.min_t, low)
                current.max_t = high if current.max_t is None else max(current.max_t, high)
                start, byte = end, byte + part
            done.records += batch.num_rows
            if on_batch is not None:
                on_batch(done.records)
    finally:
        lines.close()
        if out is not None:
            out.close()
    index = [[f.name, f.min_t, f.max_t, _utc(f.min_t), _utc(f.max_t)] for f in done.files]
    _write_csv(dest / "index.csv", INDEX_HEADER, index)
    latest = max((f.max_t for f in done.files if f.max_t is not None), default=None)
    _write_csv(dest / "status.csv", STATUS_HEADER,
               [[len(done.files), len(done.files), latest or "", _utc(latest)]])  # fmt: skip
    return done


def _batches(con: duckdb.DuckDBPyConnection, product: str) -> Iterator[pa.RecordBatch]:
    for lo, hi in windows(con, product):
        yield from batches_of(con, _RECORDS, {"product": product, "lo": lo, "hi": hi})


class _Lines:
    """The export's lines of a batch of records, made by an in-memory DuckDB
    over it: the JSON object orjson.dumps makes of :func:`_line`'s dict, as
    text, with no Python object a row. (DuckDB writes the six control
    characters JSON escapes with a letter in hex, ``\\u001B``, in capitals
    where orjson writes small letters: the rare rows with one are made by
    :func:`_line` and orjson, so that every byte is what it always was.)"""

    def __init__(self, names: dict[str, str]) -> None:
        self._con = duckdb.connect(config={"memory_limit": "64MB", "threads": 1})
        self._keys = pa.array(list(names), pa.string())
        self._displays = pa.array(list(names.values()), pa.string())
        self._names = names

    def of(self, batch: pa.RecordBatch) -> tuple[bytes, pa.Array]:
        """The batch's lines laid end to end, and the length of each."""
        keys = batch.column("keys")
        flat = keys.flatten()
        found = pc.index_in(flat, value_set=self._keys)
        shown = pc.if_else(pc.is_null(found), flat, pc.take(self._displays, found))
        keys = pa.ListArray.from_arrays(keys.offsets, shown)
        self._con.register("_batch", pa.Table.from_batches([batch.set_column(
            batch.schema.get_field_index("keys"), "keys", keys)]))  # fmt: skip
        try:
            found_lines = self._con.sql(_LINE_SQL).to_arrow_table().column(0).combine_chunks()
        finally:
            self._con.unregister("_batch")
        if pc.any(pc.match_substring_regex(found_lines, _CAPITAL_ESCAPE)).as_py():
            rows = batch.to_pylist()
            texts = [orjson.dumps(_line(row, self._names)).decode() + "\n"
                     if re.search(_CAPITAL_ESCAPE, line) else line
                     for row, line in zip(rows, found_lines.to_pylist(), strict=True)]  # fmt: skip
            found_lines = pa.array(texts, pa.string())
        return column_text(found_lines), pc.binary_length(found_lines.cast(pa.binary()))

    def close(self) -> None:
        self._con.close()


#: A JSON escape DuckDB writes in capitals (after an even run of backslashes).
_CAPITAL_ESCAPE = r"(^|[^\\])(\\\\)*\\u00[01][A-F]"

_LINE_SQL = """
SELECT '{"_p":' || to_json(identity) || ',"_t":' || time::VARCHAR
    || CASE kind WHEN 'a' THEN ',"_p2":' || to_json(other) ELSE
        CASE kind WHEN 'e' THEN ',"_n":' || to_json(name) ELSE '' END
        || array_to_string(list_transform(keys,
               lambda k, i: ',' || to_json(k) || ':' || to_json(vals[i])), '')
        || array_to_string(list_transform(coalesce(mkeys, []),
               lambda k, i: CASE WHEN k = '_p2' THEN ''
                            ELSE ',' || to_json(k) || ':' || to_json(mvals[i]) END), '')
    END || '}' || chr(10)
FROM _batch
"""


def _line(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    line: dict[str, Any] = {"_p": row["identity"], "_t": row["time"]}
    if row["kind"] == "a":
        line["_p2"] = row["other"]
        return line
    if row["kind"] == "e":
        line["_n"] = row["name"]
    for key, value in zip(row["keys"], row["vals"], strict=True):
        line[names.get(key, key)] = value
    for key, value in zip(row["mkeys"] or [], row["mvals"] or [], strict=True):
        if key not in _NOT_EXPORTED:
            line[key] = value
    return line


def _utc(t: int | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
