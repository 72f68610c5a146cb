"""Writing batches of rows as CSV, JSON lines or Parquet, a batch at a time.

CSV has a column a property (``Prop:<name>``, as the KISSmetrics CSV import
format names them, so that an events export is also an import file); JSON
lines and Parquet keep the properties as one map. Parquet gets one row group a
batch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EXPORT_FORMATS = ("csv", "jsonl", "parquet")


def encode(
    fmt: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], prop_names: list[str]
) -> Iterator[bytes]:
    """The bytes of the export, a batch's worth at a time (a Parquet row group
    a batch), so that it streams to a file, stdout or an HTTP answer."""
    if fmt == "parquet":
        sink = _Sink()
        with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch)
                yield sink.take()
        yield sink.take()  # the footer
        return
    if fmt == "csv":
        yield _csv_line(_csv_header(schema, prop_names))
    rows = _Rows(schema, prop_names)
    try:
        for batch in batches:
            yield rows.csv(batch) if fmt == "csv" else rows.jsonl(batch)
    finally:
        rows.close()


class _Rows:
    """CSV and JSON text of batches, made whole by an in-memory DuckDB over
    each Arrow batch: its SQL formats every cell, escapes as Python's csv
    module does, and ends each line, and the batch's text is then the data
    buffer of the Arrow column it returns (no Python object a row; Python's
    csv writer over fetched rows cost twice as much)."""

    def __init__(self, schema: pa.Schema, prop_names: list[str]) -> None:
        self._con = duckdb.connect(config={"memory_limit": "64MB", "threads": 1})
        events = "event" in schema.names
        columns = (
            [_TIME, "event", "identity", "person"]
            if events
            else ["person", "to_json(identities)::VARCHAR"]
        )
        cells = [
            *columns,
            *(f"map_extract(properties, ${i + 1})[1]" for i in range(len(prop_names))),
        ]
        self._csv = (
            "SELECT " + " || ',' || ".join(map(_csv_cell, cells)) + " || chr(10) FROM _batch"
        )
        fields = [f"{name} := {_TIME if name == 'time' else name}" for name in schema.names]
        self._jsonl = f"SELECT to_json(struct_pack({', '.join(fields)})) || chr(10) FROM _batch"
        self._names = prop_names

    def _text(self, query: str, batch: pa.RecordBatch, params: list[str] | None = None) -> bytes:
        if "time" in batch.schema.names:  # as its Unix seconds: see _TIME
            index = batch.schema.get_field_index("time")
            batch = batch.set_column(index, "time", batch.column(index).cast(pa.int64()))
        self._con.register("_batch", pa.Table.from_batches([batch]))
        try:
            return column_text(self._con.sql(query, params=params).to_arrow_table().column(0))
        finally:
            self._con.unregister("_batch")

    def csv(self, batch: pa.RecordBatch) -> bytes:
        return self._text(self._csv, batch, self._names or None)

    def jsonl(self, batch: pa.RecordBatch) -> bytes:
        return self._text(self._jsonl, batch)

    def close(self) -> None:
        self._con.close()


#: A time in Unix seconds as ISO 8601 text in UTC (DuckDB's own for a
#: timestamp with a time zone would say +00).
_TIME = "strftime(make_timestamp(time * 1000000), '%Y-%m-%dT%H:%M:%SZ')"


def _csv_cell(value: str) -> str:
    """SQL for a cell as Python's csv writer writes it (lineterminator "\\n",
    QUOTE_MINIMAL): nothing for NULL; quoted, quotes doubled, when the text
    holds a comma, a quote or a newline."""
    return (f"(CASE WHEN ({value}) IS NULL THEN '' "
            f"WHEN regexp_matches({value}, '[,\"\\n]') "
            f"THEN '\"' || replace({value}, '\"', '\"\"') || '\"' ELSE ({value}) END)")  # fmt: skip


def column_text(column: pa.Array | pa.ChunkedArray) -> bytes:
    """The text of a column of strings laid end to end: the part of its data
    buffer its offsets span (one copy, no Python object a row)."""
    if isinstance(column, pa.ChunkedArray):
        return b"".join(column_text(chunk) for chunk in column.chunks)
    if column.null_count or not (
        pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    ):
        column = pc.fill_null(column.cast(pa.large_string()), "")
    if not len(column):
        return b""
    _, offsets, data = column.buffers()
    kind = pa.int64() if pa.types.is_large_string(column.type) else pa.int32()
    bounds = pa.Array.from_buffers(kind, len(column) + 1, [None, offsets], offset=column.offset)
    start, end = bounds[0].as_py(), bounds[-1].as_py()
    return bytes(data[start:end].to_pybytes())


class _Sink(io.RawIOBase):
    """Where Parquet is written: it keeps what was written until it is taken,
    and counts every byte (the writer asks where it is for the footer)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._total = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._total += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._total

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks = []
        return data


def _csv_line(cells: list[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(cells)
    return text.getvalue().encode()


def _csv_header(schema: pa.Schema, prop_names: list[str]) -> list[str]:
    if "event" in schema.names:
        return ["Timestamp", "Event", "Identity", "Person", *(f"Prop:{n}" for n in prop_names)]
    return ["Person", "Identities", *(f"Prop:{n}" for n in prop_names)]
