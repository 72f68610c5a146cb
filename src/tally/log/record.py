"""One log record and its frame.

A frame is ``length:u32 crc32:u32 payload``, little-endian, where ``crc32`` is
zlib's CRC-32 of the payload. The payload holds everything the processor needs
to apply the request later (DESIGN §1): a version byte, the method, the receive
time in nanoseconds, then the lengths and bytes of the path, the client
address, the user agent, the content type, the ``X-Forwarded-For`` header, the
raw query string and the raw body. Nothing is decoded here: bad bytes are the
processor's business, and the log keeps them verbatim (SPEC §1).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

FRAME_HEADER = struct.Struct("<II")
_PAYLOAD_HEADER = struct.Struct("<BBqHHHHHII")
#: The start of a payload: version, method, receive time (ns).
PAYLOAD_TIME = struct.Struct("<BBq")
VERSION = 1
#: A frame larger than this is corruption, not a record (the collector's own
#: limits keep real records far below it).
MAX_PAYLOAD = 4 * 1024 * 1024

METHODS = ("GET", "POST", "HEAD", "OPTIONS", "OPERATOR")
_METHOD_CODES = {name: code for code, name in enumerate(METHODS)}


class Record(NamedTuple):
    """A request as the collector received it (a named tuple: the processor
    makes one per record, and a frozen dataclass costs several times more)."""

    method: str
    path: str
    query: bytes
    body: bytes
    recv_ns: int
    addr: str = ""
    user_agent: str = ""
    content_type: str = ""
    forwarded_for: str = ""


class CorruptFrame(ValueError):
    """The bytes at a position are not a whole, valid frame."""


def encode_frame(
    method_code: int,
    path: bytes,
    query: bytes,
    body: bytes,
    recv_ns: int,
    addr: bytes,
    user_agent: bytes,
    content_type: bytes,
    forwarded_for: bytes,
) -> bytes:
    """Frame one request; the collector's hot path, so it takes raw bytes."""
    payload = b"".join(
        (
            _PAYLOAD_HEADER.pack(
                VERSION,
                method_code,
                recv_ns,
                len(path),
                len(addr),
                len(user_agent),
                len(content_type),
                len(forwarded_for),
                len(query),
                len(body),
            ),
            path,
            addr,
            user_agent,
            content_type,
            forwarded_for,
            query,
            body,
        )
    )
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def encode_record(record: Record) -> bytes:
    return encode_frame(
        method_code(record.method),
        record.path.encode(),
        record.query,
        record.body,
        record.recv_ns,
        record.addr.encode(),
        record.user_agent.encode(),
        record.content_type.encode(),
        record.forwarded_for.encode(),
    )


def method_code(method: str) -> int:
    return _METHOD_CODES[method]


def _decode(buf: bytes, start: int, end: int) -> Record:
    # The processor's read path: one slice per field, straight from the buffer.
    (version, method, recv_ns, lp, la, lu, lc, lx, lq, lb) = _PAYLOAD_HEADER.unpack_from(buf, start)
    if version != VERSION:
        raise CorruptFrame(f"unknown record version {version}")
    p0 = start + _PAYLOAD_HEADER.size
    p1 = p0 + lp
    p2 = p1 + la
    p3 = p2 + lu
    p4 = p3 + lc
    p5 = p4 + lx
    p6 = p5 + lq
    if p6 + lb != end:
        raise CorruptFrame("field lengths do not add up to the payload length")
    if method >= len(METHODS):
        raise CorruptFrame(f"unknown method code {method}")
    return _new(
        Record,
        (
            METHODS[method],
            buf[p0:p1].decode("utf-8", "replace"),
            buf[p5:p6],
            buf[p6:end],
            recv_ns,
            buf[p1:p2].decode("utf-8", "replace") if la else "",
            buf[p2:p3].decode("utf-8", "replace") if lu else "",
            buf[p3:p4].decode("utf-8", "replace") if lc else "",
            buf[p4:p5].decode("utf-8", "replace") if lx else "",
        ),
    )


# Building the tuple directly skips the named tuple's ``__new__``, a Python
# function: one record per call on the processor's read path.
_new = tuple.__new__


def read_frame(buf: bytes | memoryview, offset: int) -> tuple[Record, int] | None:
    """The record at ``offset`` and the offset after it.

    ``None`` when the buffer ends inside the frame (a tail still being written,
    or torn by a crash); :class:`CorruptFrame` when the bytes are not a frame.
    """
    end_of_header = offset + FRAME_HEADER.size
    if end_of_header > len(buf):
        return None
    length, crc = FRAME_HEADER.unpack_from(buf, offset)
    if length > MAX_PAYLOAD or length < _PAYLOAD_HEADER.size:
        raise CorruptFrame(f"implausible frame length {length}")
    end = end_of_header + length
    if end > len(buf):
        return None
    # One copy of the payload, which the checksum and the fields then read:
    # cheaper than a view for a small record, and never the whole buffer.
    payload = bytes(buf[end_of_header:end])
    if zlib.crc32(payload) != crc:
        raise CorruptFrame("checksum mismatch")
    return _decode(payload, 0, length), end
