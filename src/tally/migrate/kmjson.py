"""A line of a KISSmetrics export (SPEC §10), as a :class:`Row`.

KISSmetrics wrote one JSON object a line: events ``{"_p", "_t", "_n", props}``,
property sets ``{"_p", "_t", props}`` and aliases ``{"_p", "_t", "_p2"}``. Real
files hold more than that, and this reads them as they are:

- **Octal escapes.** Text was written with C's octal escapes for the bytes of
  UTF-8 (``\\302\\243`` for "£"), which JSON does not allow. Runs of them are
  turned into the characters they spell before the line is parsed; a run that
  is not UTF-8 is a ``bad_escape`` reject. A string that holds such a run after
  parsing (the backslashes escaped once more) is decoded the same way when the
  run's bytes are not ASCII.
- **Names in any case**: ``_P``, ``_N``, ``_T`` are ``_p``, ``_n``, ``_t``;
  event and property names are normalised by the processor (SPEC §2).
- **Mobile rows** carry ``_c`` and ``_server_timestamp``: kept as metadata.
  The time is ``_t`` all the same (SPEC §10); no ``_t`` is a ``bad_time``
  reject, never a guess.
- **Values** that are JSON numbers or booleans become their JSON text; ``null``
  is no value (the property is not set); arrays and objects their JSON text.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tally import wire
from tally.beacon import Reason
from tally.migrate.records import Bad, Row

_RAW_OCTAL = re.compile(rb"\\\\|(?:\\[0-7]{3})+")
#: A run of octal escapes in a string: (?:\\[0-3][0-7]{2})+, spelled to begin
#: with its backslash, which re then looks for before trying the rest (six
#: times faster over text with few backslashes).
TEXT_OCTAL = re.compile(r"\\[0-3][0-7]{2}(?:\\[0-3][0-7]{2})*")
#: Reserved names the importer sets itself (the key, and _d=1) or reads (_p2).
_NOT_PASSED = frozenset({wire.KEY, wire.TIME_IS_EVENT_TIME, wire.ALIAS_IN_EXPORT})


class BadEscape(ValueError):
    pass


def parse_line(raw: bytes, source: str) -> Row | Bad | None:
    """The record of one line; ``None`` for a blank one."""
    if not raw.strip():
        return None
    try:
        if b"\\" in raw:
            raw = unescape_raw(raw)
        obj = orjson.loads(raw)
    except BadEscape as exc:
        return Bad(Reason.BAD_ESCAPE, str(exc), _shown(raw), source)
    except orjson.JSONDecodeError as exc:
        return Bad(Reason.MALFORMED_RECORD, f"not JSON: {exc}", _shown(raw), source)
    if not isinstance(obj, dict):
        return Bad(Reason.MALFORMED_RECORD, "not a JSON object", _shown(raw), source)
    return object_row(obj, raw, source)


def object_row(obj: dict[str, Any], raw: bytes, source: str) -> Row | Bad:
    """The record of a line's object; ``raw``, the line as it was parsed
    (its bare octal escapes decoded), for a reject."""
    try:
        return row_of(obj, source)
    except BadEscape as exc:
        return Bad(Reason.BAD_ESCAPE, str(exc), _shown(raw), source)


def row_of(obj: dict[str, Any], source: str) -> Row:
    """A record in the KISSmetrics export's shape as a row."""
    reserved: dict[str, str] = {}
    props: list[tuple[str, str]] = []
    for raw_name, value in obj.items():
        if type(value) is str:  # nearly always: no call
            text = value if "\\" not in value else _unescape_text(value)
        else:
            converted = _text(value)
            if converted is None:
                continue
            text = converted
        name = _unescape_text(raw_name) if "\\" in raw_name else raw_name
        if name[:1] == wire.RESERVED_PREFIX:
            reserved[name.lower()] = text
        else:
            props.append((name, text))
    params: list[tuple[str, str]] = []
    if wire.PERSON in reserved:
        params.append((wire.PERSON, reserved[wire.PERSON]))
    other = reserved.get(wire.ALIAS_IN_EXPORT)
    if other is not None:
        params.append((wire.NAME, other))
        path = wire.ALIAS_PATH
    elif reserved.get(wire.NAME, "").strip():
        params.append((wire.NAME, reserved[wire.NAME]))
        path = wire.EVENT_PATH
    else:
        path = wire.SET_PATH
    params.extend(
        (name, value)
        for name, value in reserved.items()
        if name not in _NOT_PASSED and name not in (wire.PERSON, wire.NAME)
    )
    if path != wire.ALIAS_PATH:
        params.extend(props)
    return Row(path, params, source)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return _unescape_text(value) if "\\" in value else value
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def unescape_raw(raw: bytes) -> bytes:
    """A line with its bare octal escapes (not JSON) decoded, as JSON string
    content; :class:`BadEscape` when one is not UTF-8."""
    return _RAW_OCTAL.sub(_unescape_raw, raw)


def _unescape_raw(match: re.Match[bytes]) -> bytes:
    found = match.group()
    if found == b"\\\\":
        return found
    data = bytes(int(found[i + 1 : i + 4], 8) for i in range(0, len(found), 4))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEscape(f"octal escape {found.decode()} is not UTF-8") from exc
    return orjson.dumps(text)[1:-1]  # as JSON string content


def _unescape_text(text: str) -> str:
    return TEXT_OCTAL.sub(_decode_match, text)


def _decode_match(match: re.Match[str]) -> str:
    return decode_octal(match.group())


def decode_octal(found: str) -> str:
    """A run of octal escapes in a string (``\\302\\243``) as the text its
    bytes spell; the run itself when they are ASCII (plain text that happens
    to look like an escape); :class:`BadEscape` when they are not UTF-8."""
    data = bytes(int(found[i + 1 : i + 4], 8) for i in range(0, len(found), 4))
    if data.isascii():
        return found
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEscape(f"octal escape {found} is not UTF-8") from exc


def _shown(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", "replace")
