"""How an imported row becomes a log record (docs/log-format.md, "Imported records").

An imported row is written as the tracking call that would have sent it: a
``GET`` record on ``/e``, ``/s`` or ``/a`` whose query string holds the row's
KISSmetrics parameters, the product's API key as ``_k``, ``_d=1`` (SPEC §10:
an imported record's time is its ``_t``, with §3's bounds) and its source as
``_src=<file>:<line>``. A row without a time is sent with an empty ``_t``,
which with ``_d=1`` is a ``bad_time`` reject (SPEC §11), never the import's
clock. ``_src`` is a reserved name the processor ignores (SPEC §1), so it is
in no de-duplication key of an applied record (a repeated import is absorbed,
SPEC §4) but is among a reject's parameters, which is how ``tally rejects``
names the file and line. A Tally that predates imports reads these records as
the tracking calls they are.

A line the importer cannot read at all (not JSON, a bad octal escape, a CSV
column it does not know) is written as a record on :data:`REJECT_PATH` that the
processor turns into a reject with the importer's reason
(:func:`parse_import_reject`); older readers ignore that path.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple
from urllib.parse import quote, urlencode

from tally import wire
from tally.beacon import UNKNOWN_KEY, KeyLookup, Reason, Rejected, decode_params
from tally.log.record import Record, encode_frame, method_code

#: The parameter that names a record's source, ``<file>:<line>``.
SOURCE = "_src"
#: A line the importer could not read: the processor rejects it (SPEC §7).
REJECT_PATH = "/import/reject"
USER_AGENT = b"tally import"
GET = method_code("GET")
#: How much of an unreadable line a reject keeps.
MAX_RAW = 8192


class Row(NamedTuple):
    """One record of a source, as the tracking call that would have sent it."""

    path: str  # wire.EVENT_PATH, SET_PATH or ALIAS_PATH
    params: list[tuple[str, str]]  # the row's own parameters; _t if it had one
    source: str  # <file>:<line>


class Bad(NamedTuple):
    """A line that is not a record at all; a reject with ``reason`` (a Reason)."""

    reason: Reason
    why: str
    raw: str
    source: str


def frame(item: Row | Bad, key: str, recv_ns: int) -> bytes:
    """The log frame of an imported row or unreadable line."""
    if isinstance(item, Bad):
        pairs = [(SOURCE, item.source), (wire.KEY, key), ("reason", str(item.reason)),
                 ("why", item.why), ("line", item.raw[:MAX_RAW])]  # fmt: skip
        path = REJECT_PATH
    else:
        # The source first: a reject's parameters are listed in this order.
        pairs = [(SOURCE, item.source), (wire.KEY, key), *item.params]
        if not any(name == wire.TIME for name, _ in item.params):
            pairs.append((wire.TIME, ""))  # no time: bad_time, never a guess (SPEC §10)
        pairs.append((wire.TIME_IS_EVENT_TIME, wire.EVENT_TIME_GIVEN))
        path = item.path
    return encode_frame(GET, path.encode(), _query(pairs), b"", recv_ns, b"", USER_AGENT, b"", b"")


def _query(pairs: list[tuple[str, str]]) -> bytes:
    """``pairs`` form-urlencoded (``%XX`` for every byte but letters, digits
    and ``_.-~``), as ``urlencode(pairs, quote_via=quote)`` makes them, in one
    pass over the whole query instead of one call a value (the importer's
    hot path): names and values are joined by NUL and SOH, escaped together,
    and the two then become ``=`` and ``&``."""
    text = "\x01".join([name + "\x00" + value for name, value in pairs])
    if (text.count("\x00"), text.count("\x01")) != (len(pairs), len(pairs) - 1) or "\x02" in text:
        return urlencode(pairs, quote_via=quote).encode()  # a NUL or SOH of their own
    return escape_query(text.encode())


def escape_query(data: bytes) -> bytes:
    """Names and values joined by NUL and SOH as a query string: every byte
    but letters, digits, ``_.-~``, NUL, SOH and STX escaped as ``%XX``, then
    NUL and SOH made ``=`` and ``&`` (STX is left: it separates the records
    of a block, tally.migrate.blocks)."""
    unsafe = data.translate(None, _SAFE)  # the bytes to escape (C speed, as replace is)
    if unsafe:
        found = set(unsafe)
        if _PERCENT in found:  # first: the other escapes bring % of their own
            data = data.replace(b"%", b"%25")
            found.discard(_PERCENT)
        for byte in found:
            data = data.replace(_BYTES[byte], _ESCAPES[byte])
    return data.translate(_SEPARATORS)


_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-\x00\x01\x02"
_PERCENT = ord("%")
_BYTES = [bytes([byte]) for byte in range(256)]
_ESCAPES = [f"%{byte:02X}".encode() for byte in range(256)]
_SEPARATORS = bytes.maketrans(b"\x00\x01", b"=&")


def parse_import_reject(record: Record, keys: KeyLookup) -> Rejected | None:
    """The reject of an unreadable imported line, or ``None`` for any other record."""
    if record.path != REJECT_PATH or record.method != "GET":
        return None
    params = decode_params(record.query)
    found = dict(params)
    try:
        reason = Reason(found.get("reason", ""))
    except ValueError:
        reason = Reason.MALFORMED_RECORD
    key = found.get(wire.KEY, "").strip()
    status = keys(key, record.recv_ns) if key else UNKNOWN_KEY
    shown = tuple((n, v) for n, v in params if n in (SOURCE, "why", "line"))
    digest = hashlib.blake2b(digest_size=16, person=b"tally.import.1")
    for name, value in shown:  # the same line of the same source is one reject
        digest.update(f"{len(name)}:{name}{len(value)}:{value}".encode("utf-8", "surrogatepass"))
    return Rejected(
        reason=reason,
        path=REJECT_PATH,
        recv_ns=record.recv_ns,
        product=status.product,
        params=shown,
        dedup_time=0,
        dedup_key=digest.digest(),
    )
