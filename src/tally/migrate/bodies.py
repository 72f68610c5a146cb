"""An import sent as an HTTP body: JSON lines or CSV, maybe gzip, read as it
arrives (never whole in memory), as the items an import writes.

``Content-Type`` decides the format: ``text/csv`` is the KISSmetrics CSV
import format, ``application/x-ndjson``, ``application/jsonl``,
``application/json`` (one object a line) are JSON lines in the export's record
shape. ``Content-Encoding: gzip``, or a body that begins as gzip does, is
decompressed on the way. A line's source is ``<import name>:<line>``.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterable, Iterator
from itertools import chain

from tally.errors import InvalidInput
from tally.migrate import kmcsv
from tally.migrate.kmjson import parse_line
from tally.migrate.records import Bad, Row
from tally.migrate.sources import Position

JSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json",
                        "application/jsonlines", "application/x-jsonlines"})  # fmt: skip
CSV_TYPES = frozenset({"text/csv", "application/csv"})
_GZIP_MAGIC = b"\x1f\x8b"


def body_format(content_type: str) -> str:
    media = content_type.partition(";")[0].strip().lower()
    if media in JSON_TYPES:
        return "json"
    if media in CSV_TYPES:
        return "csv"
    raise InvalidInput(f"send JSON lines (Content-Type: application/x-ndjson) or CSV "
                       f"(text/csv), not {media or 'no Content-Type'!r}",
                       field="content-type")  # fmt: skip


def body_lines(chunks: Iterable[bytes], gzipped: bool) -> Iterator[tuple[bytes, Position]]:
    """The body's lines, each with the position after it (``done``: bytes
    received so far)."""
    inflate = None
    pending = b""
    offset = line = received = 0
    first = True
    for chunk in chunks:
        received += len(chunk)
        if first and chunk:
            first = False
            if gzipped or chunk.startswith(_GZIP_MAGIC):
                inflate = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
        try:
            data = inflate.decompress(chunk) if inflate is not None else chunk
        except zlib.error as exc:
            raise InvalidInput(f"the body is not valid gzip: {exc}", field="body") from exc
        pending += data
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            raw = pending[start : end + 1]
            offset += len(raw)
            line += 1
            yield raw, Position(0, offset, line, received)
            start = end + 1
        pending = pending[start:]
    if inflate is not None:
        pending += inflate.flush()
    if pending:
        yield pending, Position(0, offset + len(pending), line + 1, received)


def body_items(
    fmt: str, name: str, read: Iterator[tuple[bytes, Position]]
) -> Iterator[tuple[Row | Bad | None, Position]]:
    """The items of a body's lines; a CSV header without the columns needed
    raises :class:`InvalidInput` before any item."""
    if fmt == "json":
        for raw, position in read:
            parsed = parse_line(raw, f"{name}:{position.line}")
            if isinstance(parsed, Bad) and not raw.endswith(b"\n"):
                parsed = parsed._replace(why=f"truncated last line ({parsed.why})")
            yield parsed, position
        return
    head: list[tuple[bytes, Position]] = []
    for raw, position in read:
        head.append((raw, position))
        if raw.strip():
            break
    if not head or not head[-1][0].strip():
        raise InvalidInput(f"the body is empty: a CSV import needs a header with "
                           f"{kmcsv.EXPECTED}", field="body")  # fmt: skip
    header = next(csv.reader([head[-1][0].decode("utf-8", "replace")]))
    columns = kmcsv.read_columns(header, "the body")
    yield from kmcsv.rows_of(chain(head, read), columns, name, header_pending=True)
