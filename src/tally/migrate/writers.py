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
    """CSV and JSON text of batches, made by an in-memory DuckDB over each
    Arrow batch (its JSON and map functions are C++; a Python loop over the
    rows and their maps cost four times as much)."""

    def __init__(self, schema: pa.Schema, prop_names: list[str]) -> None:
        self._con = duckdb.connect(config={"memory_limit": "64MB", "threads": 1})
        events = "event" in schema.names
        cells = [f"map_extract(properties, ${i + 1})[1]" for i in range(len(prop_names))]
        head = "time, event, identity, person" if events else "person, to_json(identities)"
        self._csv = f"SELECT {', '.join([head, *cells])} FROM _batch"
        self._names = prop_names

    def _register(self, batch: pa.RecordBatch) -> None:
        if "time" in batch.schema.names:  # as ISO text, by Arrow: DuckDB's would say +00
            index = batch.schema.get_field_index("time")
            text = pc.strftime(batch.column(index), format="%Y-%m-%dT%H:%M:%SZ")
            batch = batch.set_column(index, "time", text)
        self._con.register("_batch", pa.Table.from_batches([batch]))

    def csv(self, batch: pa.RecordBatch) -> bytes:
        self._register(batch)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(
            self._con.execute(self._csv, self._names).fetchall()
        )
        return text.getvalue().encode()

    def jsonl(self, batch: pa.RecordBatch) -> bytes:
        self._register(batch)
        lines = self._con.execute("SELECT to_json(_batch) FROM _batch").fetchall()
        return "".join([line + "\n" for (line,) in lines]).encode()

    def close(self) -> None:
        self._con.close()


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
