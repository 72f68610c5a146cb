"""One logged tracking call, normalised: a :class:`Beacon` or a :class:`Rejected`.

:func:`parse_record` is the pure core of the processor (DESIGN §3): it decodes
the parameters of a ``/e``, ``/s`` or ``/a`` record (SPEC §1), normalises names
and identities (SPEC §2), settles its times (SPEC §3) and its de-duplication
key (SPEC §4), or classifies it as rejected with a stable reason (SPEC §7,
§11). It does no I/O: the API key is looked up through the ``keys`` callable
that the caller passes in.

Decisions taken here where SPEC is silent:

- A POST body is read as a form when its media type is
  ``application/x-www-form-urlencoded`` (any parameters) or when the request has
  no ``Content-Type`` at all; any other body is ignored (it stays in the log).
- A pair without ``=`` (``&flag&``) is a parameter whose value is ``""``.
- Reserved names are matched exactly (``_K`` is an unknown reserved key). A
  property name that *becomes* ``_…`` once normalised (`` _x``) is ignored too,
  so that no property can clash with the ``_p``/``_n``/``_t`` of exports (§10).
- ``_d`` counts when its trimmed value is ``1``. ``_t`` is numeric by the §11
  rule (no white space); a present but empty ``_t`` is non-numeric. A ``_t``
  beyond the signed 64-bit range (after the millisecond rule) is treated as
  non-numeric.
- ``/a`` has no event time (its time is the receive second) and ignores ``_d``
  and properties, but its ``_t`` is its de-duplication time like any record's,
  so that a retried alias is absorbed. Its de-duplication key holds the other
  identity (``_n``) where an event holds its name key.
- A blocked ``_p`` is a *person* fault, on every endpoint; a blocked ``_n`` of
  ``/a`` is an *alias* fault (SPEC §11 order). ``_n`` of ``/a`` longer than 255
  characters is ``identity_too_long``, at the *name* step.
- Two property parameters with one key: the later wins *before* the limits are
  checked, so ``plan=a&Plan=<9 KiB>`` drops the property (and lists the drop),
  as a repeated ``plan`` would under "the last occurrence wins".
- A reject's de-duplication key covers its endpoint (after the ``/e``→``/s``
  rule), its de-duplication time and every other parameter (last one per name,
  ``_t``/``_d`` excepted): a retried copy is a duplicate, two different calls
  are two rejects.
"""

from __future__ import annotations

import enum
import hashlib
from codecs import escape_decode
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from string import hexdigits
from typing import Literal, NamedTuple

from tally import wire
from tally.log.record import Record
from tally.names import MAX_NAME, normalise
from tally.names import cached as cached_name
from tally.values import MAX_VALUE_BYTES, fits, is_numeric

#: The longest identity, in characters (SPEC §2).
MAX_IDENTITY = 255
#: SPEC §2 (compared case-insensitively).
DEFAULT_BLOCKED = frozenset(
    {"null", "nil", "undefined", "none", "anonymous", "guest", "0", "-1", "''", '""',
     "[object Object]", "NaN"}
)  # fmt: skip

EARLIEST_EVENT_TIME = 1_230_768_000  # 2009-01-01T00:00:00Z (SPEC §3)
MAX_FUTURE_NS = 24 * 3600 * 10**9  # how far past its receive time an event may be
_MILLISECONDS_ABOVE = 10**11  # a larger _t is in milliseconds (SPEC §3)
_INT64 = 2**63

Kind = Literal["event", "set", "alias"]


class Reason(enum.StrEnum):
    """The stable reject codes (SPEC §11), in the order that picks the first."""

    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    MISSING_PERSON = "missing_person"
    BLOCKED_IDENTITY = "blocked_identity"
    IDENTITY_TOO_LONG = "identity_too_long"
    MISSING_ALIAS_IDENTITY = "missing_alias_identity"
    NAME_TOO_LONG = "name_too_long"
    BAD_TIME = "bad_time"
    ALIAS_CAP = "alias_cap"  # decided by the identity graph, never here
    # A line an import could not read (tally.migrate.records), never a tracking call.
    MALFORMED_RECORD = "malformed_record"
    BAD_ESCAPE = "bad_escape"
    UNKNOWN_COLUMN = "unknown_column"


class Drop(enum.StrEnum):
    """Why one property was left out of a record that was applied (SPEC §11)."""

    NAME_TOO_LONG = "name_too_long"
    VALUE_TOO_LONG = "value_too_long"


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """What an API key meant when a record was received (SPEC §8, §11).

    ``product`` is ``None`` for an unknown key; a revoked key still names its
    product, so that its rejects are listed with it.
    """

    product: str | None
    revoked: bool = False


UNKNOWN_KEY = KeyStatus(None)

#: ``(trimmed key, receive time in ns) -> status``, given by the caller.
KeyLookup = Callable[[str, int], KeyStatus]


# Property and Beacon are named tuples, not dataclasses: one of each per record,
# on the processor's hot path, and a frozen dataclass costs ~4x more to build.
class Property(NamedTuple):
    key: str  # the name's key (case-folded), unique in a record
    display: str  # the name as sent, normalised (SPEC §2)
    value: str  # verbatim


class Beacon(NamedTuple):
    """A record that applies."""

    kind: Kind  # "event" only for /e with a non-empty name (SPEC §11)
    product: str
    identity: str  # _p, trimmed
    other: str | None  # /a: the _n identity, trimmed
    event_key: str | None
    event_display: str | None
    properties: tuple[Property, ...]  # one per key, the later wins (§11), sorted by key
    time: int  # event time, whole Unix seconds (SPEC §3)
    dedup_time: int  # SPEC §4
    recv_ns: int
    metadata: tuple[tuple[str, str], ...]  # wire.METADATA keys that were sent, sorted
    dropped: tuple[tuple[str, str], ...]  # (name as sent, Drop reason), property_dropped

    def dedup_key(self) -> bytes:
        """16 bytes that equal another record's exactly when SPEC §4 says duplicate."""
        fields = [self.product, self.identity, self.kind]
        fields.append(self.other if self.other is not None else self.event_key or "")
        fields.append(str(self.dedup_time))
        for prop in self.properties:
            fields.append(prop.key)
            fields.append(prop.value)
        return _digest(fields, b"tally.beacon.1")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be applied, kept to be listed and replayed (SPEC §7)."""

    reason: Reason
    path: str
    recv_ns: int
    product: str | None  # known when the key is (valid or revoked)
    params: tuple[tuple[str, str], ...]  # decoded, in request order (query, then body)
    dedup_time: int  # as a Beacon's: the client's _t when numeric, else the receive second
    dedup_key: bytes


def parse_record(
    record: Record, keys: KeyLookup, *, blocked: frozenset[str] = DEFAULT_BLOCKED
) -> Beacon | Rejected | None:
    """Normalise one logged record; ``None`` when it is not a tracking call."""
    kind = _KINDS.get(record.path)
    if kind is None or record.method not in _RECORDED_METHODS:
        return None
    fields = _fields(record.query)
    if record.method == "POST" and record.body and _is_form(record.content_type):
        fields += _fields(record.body)  # later, so the body wins (SPEC §1)

    alias = kind == "alias"
    reserved, found, drops = _split_params(fields, alias)

    event_key = event_display = other = None
    if kind == "event":
        raw_name = reserved.get(wire.NAME)
        names = None if raw_name is None else normalise(raw_name)
        if names is None:
            kind = "set"  # /e without a name is /s in every respect (SPEC §1, §11)
        else:
            event_display, event_key = names
    elif alias:
        other = reserved.get(wire.NAME, "").strip()

    recv_s = record.recv_ns // 1_000_000_000
    raw_time = reserved.get(wire.TIME)
    if raw_time is None:
        client_time = None
    elif len(raw_time) <= 18 and raw_time.isdigit() and raw_time.isascii():  # the usual
        client_time = int(raw_time)
        if client_time > _MILLISECONDS_ABOVE:
            client_time //= 1000
    else:
        client_time = _client_time(raw_time)
    dedup_time = recv_s if client_time is None else client_time

    key = reserved.get(wire.KEY, "").strip()
    status = keys(key, record.recv_ns) if key else UNKNOWN_KEY
    identity = reserved.get(wire.PERSON, "").strip()
    reason: Reason | None = None
    time = recv_s
    if blocked is DEFAULT_BLOCKED:
        folded, longest = _DEFAULT_FOLDED
    else:
        folded, longest = _folded_blocked(blocked)
    # The first fault wins, in SPEC §11's order: key, person, name, time, alias.
    if status.product is None:
        reason = Reason.UNKNOWN_KEY
    elif status.revoked:
        reason = Reason.REVOKED_KEY
    elif not identity:
        reason = Reason.MISSING_PERSON
    elif len(identity) > MAX_IDENTITY:
        reason = Reason.IDENTITY_TOO_LONG
    elif len(identity) <= longest and identity.casefold() in folded:
        reason = Reason.BLOCKED_IDENTITY
    elif alias:
        if not other:
            reason = Reason.MISSING_ALIAS_IDENTITY
        elif len(other) > MAX_IDENTITY:
            reason = Reason.IDENTITY_TOO_LONG
        elif len(other) <= longest and other.casefold() in folded:
            reason = Reason.BLOCKED_IDENTITY  # an alias fault, the last (SPEC §11)
    elif event_display is not None and len(event_display) > MAX_NAME:
        reason = Reason.NAME_TOO_LONG
    elif reserved.get(wire.TIME_IS_EVENT_TIME, "").strip() == wire.EVENT_TIME_GIVEN:
        if raw_time is None:
            pass  # _d=1 without _t: the receive time (SPEC §11)
        elif client_time is not None and _plausible(client_time, record.recv_ns):
            time = client_time
        else:
            reason = Reason.BAD_TIME

    if reason is not None:
        pairs = iter(fields)
        return Rejected(
            reason=reason,
            path=record.path,
            recv_ns=record.recv_ns,
            product=status.product,
            params=tuple(zip(pairs, pairs, strict=False)),
            dedup_time=dedup_time,
            dedup_key=_reject_key(kind, dedup_time, fields),
        )
    assert status.product is not None  # for mypy: an unknown key was rejected

    dropped: list[tuple[str, str]] = []
    if drops:
        properties = []
        for prop in found.values():
            if isinstance(prop, Property):
                properties.append(prop)
            else:
                dropped.append(prop)
        properties.sort()
    else:
        properties = sorted(found.values())  # type: ignore[arg-type]  # no drops
    metadata = []
    if not _METADATA.isdisjoint(reserved):
        metadata = sorted((name, value) for name, value in reserved.items() if name in _METADATA)
    return _new(
        Beacon,
        (
            kind,
            status.product,
            identity,
            other,
            event_key,
            event_display,
            tuple(properties),
            time,
            dedup_time,
            record.recv_ns,
            tuple(metadata),
            tuple(dropped),
        ),
    )


def _split_params(
    fields: list[str], alias: bool
) -> tuple[dict[str, str], dict[str, Property | tuple[str, str]], bool]:
    """The reserved parameters, the properties by key, and whether any is dropped.

    A property is there as a :class:`Property`, or as ``(name as sent, Drop)``
    when it is dropped: the later of one key wins (SPEC §11), then the limits
    apply to it.
    """
    reserved: dict[str, str] = {}
    found: dict[str, Property | tuple[str, str]] = {}
    drops = False
    # No strict= for zip(): CPython calls it the slow way when given a keyword,
    # which costs more than this loop's own overhead on a typical record.
    flat = iter(fields)
    for name, value in zip(flat, flat):  # noqa: B905  # fields has an even length
        if name[0] == _RESERVED:
            reserved[name] = value
        elif not alias:  # extra parameters on /a are ignored (SPEC §11)
            names = cached_name(name) or normalise(name)
            if names is None or names[0][0] == _RESERVED:
                continue  # a name that becomes empty is dropped (SPEC §11)
            display, key = names
            if len(display) > MAX_NAME:
                found[key] = (name, Drop.NAME_TOO_LONG)
                drops = True
            elif len(value) > _SURELY_FITS and not fits(value):
                found[key] = (name, Drop.VALUE_TOO_LONG)
                drops = True
            else:
                found[key] = _new(Property, (key, display, value))
    return reserved, found, drops


def _plausible(event_time: int, recv_ns: int) -> bool:
    """Whether a ``_t`` given with ``_d=1`` can be an event time (SPEC §3)."""
    return (
        event_time >= EARLIEST_EVENT_TIME and event_time * 1_000_000_000 <= recv_ns + MAX_FUTURE_NS
    )


def decode_params(data: bytes) -> list[tuple[str, str]]:
    """Form-urlencoded pairs in order (SPEC §1, §11), empty names left out.

    ``+`` is a space, ``%XX`` a byte, a malformed escape stays literal, and the
    bytes are UTF-8 with U+FFFD for what is not.
    """
    fields = iter(_fields(data))
    return list(zip(fields, fields, strict=False))


def _fields(data: bytes) -> list[str]:
    """:func:`decode_params` flat: ``[name, value, name, value, …]``."""
    # The usual query is ``name=value`` pairs joined by ``&``: then it is one
    # text whose separators can all become NUL, unescaped and decoded at once.
    # UTF-8 decoding never lets a bad sequence swallow an ASCII NUL, so this
    # equals decoding field by field, unless the data holds a NUL of its own
    # (raw or ``%00``): the count of fields tells.
    separators = data.translate(None, _ALL_BUT_SEPARATORS)
    if separators == _ALTERNATING[: len(separators)] and separators[-1:] == b"=":
        flat = data.translate(_SEPARATORS_TO_NUL)
        if flat.find(b"%") >= 0:  # see _unescape
            flat = _unquote(flat)
        fields = flat.decode("utf-8", "replace").split("\x00")
        if len(fields) == len(separators) + 1 and "" not in fields[::2]:
            return fields
    return _fields_pairwise(data)


def _fields_pairwise(data: bytes) -> list[str]:
    fields = []
    for part in data.split(b"&"):
        name, _, value = part.partition(b"=")
        if name:  # else an empty pair, or an empty name (SPEC §1)
            fields.append(_unescape(name))
            fields.append(_unescape(value))
    return fields


def _unescape(data: bytes) -> str:
    # find(), not ``in``: ``bytes in bytes`` first tries its operand as an int,
    # and raises and clears a TypeError, which costs more than the search.
    if data.find(b"+") >= 0:
        data = data.replace(b"+", b" ")
    if data.find(b"%") >= 0:
        data = _unquote(data)
    return data.decode("utf-8", "replace")


_ALL_BUT_SEPARATORS = bytes(byte for byte in range(256) if byte not in b"&=")
_ALTERNATING = b"=&" * 1024  # longer queries take the pairwise path
_SEPARATORS_TO_NUL = bytes.maketrans(b"&=+", b"\x00\x00 ")


def _unquote(data: bytes) -> bytes:
    """``%XX`` to its byte; ``100%`` and ``%zz`` stay as they are (SPEC §11)."""
    # C speed: once every backslash is doubled, the only escapes left for
    # escape_decode are the ``\xXX`` made from ``%XX``. It refuses a malformed
    # one, which the loop below then keeps literal.
    try:
        return escape_decode(data.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    except ValueError:
        pass
    head, *escapes = data.split(b"%")
    out = [head]
    for chunk in escapes:
        byte = _HEX_BYTE.get(chunk[:2])
        if byte is None:
            out.append(b"%")
            out.append(chunk)
        else:
            out.append(byte)
            out.append(chunk[2:])
    return b"".join(out)


_HEX_BYTE = {(a + b).encode(): bytes([int(a + b, 16)]) for a in hexdigits for b in hexdigits}


def _client_time(raw: str) -> int | None:
    """A ``_t`` in whole seconds (SPEC §3), or ``None`` when it is not a number.

    :func:`parse_record` inlines the case of plain digits.
    """
    whole, _, fraction = raw.partition(".")
    if len(whole) <= 18 and whole.isdigit() and fraction.isdigit() and raw.isascii():
        # Seconds with a fraction, as pyKISSmetrics sends them: the floor is
        # the whole part, and no Decimal is needed.
        seconds = int(whole)
        if seconds > _MILLISECONDS_ABOVE or (
            seconds == _MILLISECONDS_ABOVE and fraction.strip("0")
        ):
            return seconds // 1000
        return seconds
    if not is_numeric(raw):
        return None
    try:
        number = Decimal(raw)
    except InvalidOperation:  # an exponent beyond what Decimal can hold
        return None
    # Compare before converting: "1e999999999" must not become a huge int.
    if not -_INT64 <= number < _INT64 * 1000:
        return None
    # Floor, then divide: floor(floor(x) / 1000) is floor(x / 1000), exactly.
    seconds = int(number.to_integral_value(rounding=ROUND_FLOOR))
    return seconds // 1000 if number > _MILLISECONDS_ABOVE else seconds


def _is_form(content_type: str) -> bool:
    if not content_type:
        return True  # a POST to a tracking path has no other meaning
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == wire.FORM_CONTENT_TYPE


_blocked_sets: dict[frozenset[str], tuple[frozenset[str], int]] = {}


def _folded_blocked(blocked: frozenset[str]) -> tuple[frozenset[str], int]:
    """The case-folded blocked identities, and the longest one's length.

    Case-folding never shortens a string, so a longer identity is not blocked
    (SPEC §2 compares case-insensitively).
    """
    try:
        return _blocked_sets[blocked]
    except KeyError:
        pass
    folded = frozenset(value.casefold() for value in blocked)
    if len(_blocked_sets) >= 16:
        _blocked_sets.clear()
    _blocked_sets[blocked] = entry = (folded, max(map(len, folded), default=0))
    return entry


def _reject_key(kind: str, dedup_time: int, fields: list[str]) -> bytes:
    pairs = iter(fields)
    # The last one of each name, as for a repeated parameter (SPEC §1).
    last = dict(zip(pairs, pairs, strict=False))
    last.pop(wire.TIME, None)  # in dedup_time
    last.pop(wire.TIME_IS_EVENT_TIME, None)  # not part of the key (SPEC §11)
    fields = [kind, str(dedup_time)]
    for name, value in sorted(last.items()):
        fields.append(name)
        fields.append(value)
    return _digest(fields, b"tally.reject.1")


def _digest(fields: list[str], domain: bytes) -> bytes:
    # Framing, so that no two lists of fields give the same bytes: NUL between
    # fields when none holds a NUL (nearly always), else each field's length.
    # A first byte tells the two forms apart; UTF-8 is one-to-one on text.
    hashers = _hashers.get(domain) or _new_hashers(domain)
    text = "\x00".join(fields)
    if text.count("\x00") == len(fields) - 1:
        hasher = hashers[0].copy()
        hasher.update(text.encode("utf-8", "surrogatepass"))
    else:
        lengths = ",".join([str(len(field)) for field in fields])
        hasher = hashers[1].copy()
        hasher.update(f"{lengths};{''.join(fields)}".encode("utf-8", "surrogatepass"))
    return hasher.digest()


#: Per domain, BLAKE2b hashers that hold the domain and each framing's first
#: byte already: copying one costs less than setting up a new one.
_hashers: dict[bytes, tuple[hashlib.blake2b, hashlib.blake2b]] = {}


def _new_hashers(domain: bytes) -> tuple[hashlib.blake2b, hashlib.blake2b]:
    _hashers[domain] = hashers = (
        hashlib.blake2b(b"\x00", digest_size=16, person=domain),
        hashlib.blake2b(b"\x01", digest_size=16, person=domain),
    )
    return hashers


_KINDS: dict[str, Kind] = {
    wire.EVENT_PATH: "event",
    wire.SET_PATH: "set",
    wire.ALIAS_PATH: "alias",
}
_RECORDED_METHODS = frozenset({"GET", "POST"})
_METADATA = frozenset(wire.METADATA)
_RESERVED = wire.RESERVED_PREFIX
_DEFAULT_FOLDED = _folded_blocked(DEFAULT_BLOCKED)
_SURELY_FITS = MAX_VALUE_BYTES // 4  # characters: at most 4 bytes of UTF-8 each
_new = tuple.__new__
