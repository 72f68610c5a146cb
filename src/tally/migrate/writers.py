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
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
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
    for batch in batches:
        if fmt == "csv":
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            for record in batch.to_pylist():
                writer.writerow(_csv_row(record, prop_names))
            yield text.getvalue().encode()
        else:
            yield b"".join(orjson.dumps(_json(r)) + b"\n" for r in batch.to_pylist())


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


def _csv_row(record: dict[str, Any], prop_names: list[str]) -> list[str]:
    props = dict(record["properties"])
    cells = [props.get(n, "") for n in prop_names]
    if "event" in record:
        return [_iso(record["time"]), record["event"], record["identity"], record["person"],
                *cells]  # fmt: skip
    return [record["person"], orjson.dumps(record["identities"]).decode(), *cells]


def _json(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    out["properties"] = dict(record["properties"])
    if "time" in record:
        out["time"] = _iso(record["time"])
        out["metadata"] = dict(record["metadata"] or [])
    return out


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
