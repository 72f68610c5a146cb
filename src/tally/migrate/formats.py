"""The sources an import reads, by format: ``km`` (a KISSmetrics export folder
or one of its files), ``json`` (JSON lines in the export's record shape) and
``csv`` (the KISSmetrics CSV import format).

:func:`open_source` refuses at once, before anything is written, a source that
is not what its format expects at all (a CSV given as a KISSmetrics export).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tally.errors import InvalidInput
from tally.migrate import kmcsv
from tally.migrate.blocks import framed_blocks
from tally.migrate.importer import Framed, frame_items
from tally.migrate.kmjson import parse_line
from tally.migrate.records import Bad, Row
from tally.migrate.sources import Position, SourceFile, first_line, km_files, lines, source_file

FORMATS = ("km", "json", "csv")


@dataclass(frozen=True)
class Source:
    format: str
    path: Path
    files: list[SourceFile]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def chunks(self, start: Position, key: str) -> Iterator[Framed]:
        """The source's records from ``start`` on, framed in chunks: JSON lines
        a block at a time (tally.migrate.blocks), CSV a record at a time."""
        if self.format == "csv":
            return frame_items(self.items(start), key, start)
        return framed_blocks(self.files, start, key)

    def items(self, start: Position) -> Iterator[tuple[Row | Bad | None, Position]]:
        if self.format == "csv":
            yield from kmcsv.items(self.files[0], start)
            return
        yield from json_items(lines(self.files, start))


def json_items(
    read: Iterator[tuple[SourceFile, bytes, Position]],
) -> Iterator[tuple[Row | Bad | None, Position]]:
    """JSON lines as records; a last line cut short is a reject that says so."""
    for item, raw, position in read:
        parsed = parse_line(raw, f"{item.name}:{position.line}")
        if isinstance(parsed, Bad) and not raw.endswith(b"\n"):
            parsed = parsed._replace(why=f"truncated last line ({parsed.why})")
        yield parsed, position


def open_source(fmt: str, path: Path) -> Source:
    if fmt == "csv":
        item = source_file(path)
        kmcsv.header_of(item)
        return Source(fmt, path, [item])
    files = km_files(path) if fmt == "km" else [source_file(path)]
    what = "a KISSmetrics export" if fmt == "km" else "JSON lines"
    for item in files:
        first = first_line(item)
        if not first:
            continue  # an empty file: nothing to import from it
        if not first.lstrip().startswith(b"{"):
            hint = " (CSV? use `tally import csv`)" if b"," in first and b"{" not in first else ""
            raise InvalidInput(f"{item.path} is not {what}: its first line is not a JSON "
                               f"object{hint}", field="path")  # fmt: skip
        break
    return Source(fmt, path, files)
