"""The KISSmetrics CSV import format (SPEC §10), as :class:`Row` values.

The header names the columns, in any case and order: ``Identity``; then
``Timestamp`` with ``Event`` and/or ``Prop:<name>`` columns, and/or ``Alias``.
A row with an ``Alias`` is an alias of its identity to that one; else a row
with an ``Event`` is that event (with the row's properties); else a row with
properties sets them. An empty cell is no value. ``Timestamp`` is Unix time
(SPEC §3's rules) or an ISO 8601 date and time (UTC unless it says otherwise).

A header without the columns this needs is refused before anything is written,
naming the columns expected. A column it does not know is one
``unknown_column`` reject (for line 1) and is left out of every row; a row with
more cells than the header is a ``malformed_record`` reject. A ``Person``
column (Tally's events export has one) is left out without a word.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tally import wire
from tally.beacon import Reason
from tally.errors import InvalidInput
from tally.migrate.records import Bad, Row
from tally.migrate.sources import Position, SourceFile, lines

EXPECTED = "Identity, Timestamp, and Event and/or Prop:<name> columns, or Identity and Alias"
_PROP = "prop:"


@dataclass
class Columns:
    identity: int
    timestamp: int | None = None
    event: int | None = None
    alias: int | None = None
    props: list[tuple[int, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    width: int = 0


def read_columns(header: list[str], name: str) -> Columns:
    """The columns of a header, or :class:`InvalidInput` naming those expected."""
    found: dict[str, int] = {}
    props: list[tuple[int, str]] = []
    unknown: list[str] = []
    for i, cell in enumerate(header):
        label = cell.strip().lstrip("\ufeff")
        lower = label.lower()
        if lower in ("identity", "timestamp", "event", "alias") and lower not in found:
            found[lower] = i
        elif lower == "person":
            pass  # Tally's events export has it: the person is derived, not imported
        elif lower.startswith(_PROP) and label[len(_PROP) :].strip():
            props.append((i, label[len(_PROP) :].strip()))
        else:
            unknown.append(label)
    has_records = "timestamp" in found and ("event" in found or props)
    if "identity" not in found or not (has_records or "alias" in found):
        shown = ",".join(c.strip() for c in header)[:200]
        raise InvalidInput(f"{name} is not a KISSmetrics CSV import: its header ({shown}) "
                           f"needs {EXPECTED}", field="path")  # fmt: skip
    return Columns(found["identity"], found.get("timestamp"), found.get("event"),
                   found.get("alias"), props, unknown, len(header))  # fmt: skip


def header_of(item: SourceFile) -> Columns:
    for _, raw, _ in lines([item], Position()):
        text = raw.decode("utf-8", "replace")
        if text.strip():
            return read_columns(next(csv.reader([text])), item.name)
    raise InvalidInput(f"{item.name} is empty: a KISSmetrics CSV import needs a header "
                       f"with {EXPECTED}", field="path")  # fmt: skip


def items(item: SourceFile, start: Position) -> Iterator[tuple[Row | Bad | None, Position]]:
    """Every row from ``start`` (the header first, when it is the file's start)."""
    columns = header_of(item)
    read = ((raw, after) for _, raw, after in lines([item], start))
    yield from rows_of(read, columns, item.name, header_pending=start.line == 0)


def rows_of(
    read: Iterator[tuple[bytes, Position]], columns: Columns, name: str, *, header_pending: bool
) -> Iterator[tuple[Row | Bad | None, Position]]:
    """The rows of CSV lines, each with the position after it; the header
    line first when ``header_pending`` (one reject for columns not known)."""
    reached = Position()

    def texts() -> Iterator[str]:
        nonlocal reached
        for raw, after in read:
            reached = after
            yield raw.decode("utf-8", "replace")

    for cells in csv.reader(texts()):
        source = f"{name}:{reached.line}"
        if header_pending:
            if not any(c.strip() for c in cells):
                yield None, reached
                continue
            header_pending = False
            if columns.unknown:
                why = "column not known: " + ", ".join(columns.unknown) + f" (expected {EXPECTED})"
                yield Bad(Reason.UNKNOWN_COLUMN, why, ",".join(cells), source), reached
            else:
                yield None, reached
            continue
        yield row_of(cells, columns, source), reached


def row_of(cells: list[str], columns: Columns, source: str) -> Row | Bad | None:
    if not any(c.strip() for c in cells):
        return None
    if len(cells) > columns.width:
        return Bad(Reason.MALFORMED_RECORD, f"{len(cells)} cells, the header has "
                   f"{columns.width}", ",".join(cells), source)  # fmt: skip

    def cell(index: int | None) -> str:
        return cells[index].strip() if index is not None and index < len(cells) else ""

    params = [(wire.PERSON, cell(columns.identity))]
    when = cell(columns.timestamp)
    if when:
        params.append((wire.TIME, unix_time(when)))
    other = cell(columns.alias)
    if other:
        params.append((wire.NAME, other))
        return Row(wire.ALIAS_PATH, params, source)
    event = cell(columns.event)
    if event:
        params.append((wire.NAME, event))
    params.extend((name, cells[i]) for i, name in columns.props if i < len(cells) and cells[i])
    return Row(wire.EVENT_PATH if event else wire.SET_PATH, params, source)


def unix_time(text: str) -> str:
    """An ISO 8601 time as Unix seconds; anything else as it is (the processor
    takes numbers by SPEC §3, and rejects the rest as ``bad_time``)."""
    if text.replace(".", "", 1).isdigit():
        return text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return str(int(moment.timestamp()))
