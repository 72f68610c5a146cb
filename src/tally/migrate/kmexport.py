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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from tally.errors import Conflict
from tally.migrate.tables import batches_of
from tally.views.events import property_names

FILE_BYTES = 64 * 1024 * 1024
INDEX_HEADER = ["filename", "min_timestamp", "max_timestamp", "min_utc_date", "max_utc_date"]
STATUS_HEADER = ["Total Revisions", "Exported Revisions", "Max Exported Revision Timestamp",
                 "Max Exported Revision UTC Timestamp"]  # fmt: skip
#: Metadata an event keeps that would mean something else in an export line.
_NOT_EXPORTED = frozenset({"_p2"})

_RECORDS = """
SELECT kind, identity, other, name, time, keys, vals, mkeys, mvals FROM (
    SELECT e.recv_ns, e.stream, e.position, 'e' AS kind, e.identity, NULL::VARCHAR AS other,
           coalesce(n.display, e.event) AS name, e.time, map_keys(e.properties) AS keys,
           map_values(e.properties) AS vals, map_keys(e.metadata) AS mkeys,
           map_values(e.metadata) AS mvals
    FROM events e
    LEFT JOIN names n ON n.product = e.product AND n.kind = 'event' AND n.key = e.event
    WHERE e.product = $product
    UNION ALL
    SELECT p.recv_ns, p.stream, p.position, 's', p.identity, NULL, NULL, any_value(p.time),
           list(p.key ORDER BY p.key), list(p.value ORDER BY p.key), []::VARCHAR[],
           []::VARCHAR[]
    FROM property_values p
    WHERE p.product = $product AND NOT EXISTS (
        SELECT 1 FROM events e
        WHERE e.product = $product AND e.stream = p.stream AND e.position = p.position)
    GROUP BY p.recv_ns, p.stream, p.position, p.identity
    UNION ALL
    SELECT recv_ns, stream, position, 'a', a, b, NULL, time, []::VARCHAR[], []::VARCHAR[],
           []::VARCHAR[], []::VARCHAR[]
    FROM aliases WHERE product = $product AND status = 'accepted'
)
ORDER BY recv_ns, stream, position
"""


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
    out = None
    size = 0
    try:
        for batch in batches_of(con, _RECORDS, {"product": product}):
            for row in batch.to_pylist():
                data = orjson.dumps(_line(row, names)) + b"\n"
                t = row["time"]
                if out is None or size >= file_bytes:
                    if out is not None:
                        out.close()
                    current = _File(f"revisions/{len(done.files) + 1}.json")
                    done.files.append(current)
                    out = open(dest / current.name, "wb")  # noqa: SIM115 (closed below)
                    size = 0
                out.write(data)
                size += len(data)
                current.min_t = t if current.min_t is None else min(current.min_t, t)
                current.max_t = t if current.max_t is None else max(current.max_t, t)
            done.records += batch.num_rows
            if on_batch is not None:
                on_batch(done.records)
    finally:
        if out is not None:
            out.close()
    index = [[f.name, f.min_t, f.max_t, _utc(f.min_t), _utc(f.max_t)] for f in done.files]
    _write_csv(dest / "index.csv", INDEX_HEADER, index)
    latest = max((f.max_t for f in done.files if f.max_t is not None), default=None)
    _write_csv(dest / "status.csv", STATUS_HEADER,
               [[len(done.files), len(done.files), latest or "", _utc(latest)]])  # fmt: skip
    return done


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
