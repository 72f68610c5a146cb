"""One log record and its frame.

A frame (format 2) is ``magic:4 length:u32 crc32:u32 payload``, little-endian,
where ``crc32`` is zlib's CRC-32 of the payload. The magic lets a reader find
the next frame after a damaged one (:func:`resync`); format 1 frames, written by
Tally before it, have no magic and are still read (docs/log-format.md). The
payload holds everything the processor needs
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

#: The first bytes of every format-2 frame. As a little-endian u32 it is far
#: above ``MAX_PAYLOAD``, so it is never the length of a format-1 frame, and it
#: is not zero, which marks the preallocated end of a segment (writer.py).
MAGIC = b"TLY\xf2"
FRAME_HEADER = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
#: A format-1 frame's header: length and CRC-32, no magic.
FRAME_HEADER_V1 = struct.Struct("<II")
_U32 = struct.Struct("<I")
_MAGIC_U32 = _U32.unpack(MAGIC)[0]
_HEADER_WORDS = struct.Struct("<III")  # a format-2 header as numbers
_PAYLOAD_HEADER = struct.Struct("<BBqHHHHHII")
#: The start of a payload: version, method, receive time (ns).
PAYLOAD_TIME = struct.Struct("<BBq")
VERSION = 1  # of the payload, unchanged by the frame's format 2
#: The log's format: 2 since frames begin with ``MAGIC``. ``log/FORMAT`` says
#: which a data directory holds; a newer one is refused (writer.py).
LOG_FORMAT = 2
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
    return FRAME_HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


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


def frame_header(buf: bytes | memoryview, offset: int) -> tuple[int, int, int] | None:
    """The header at ``offset``: its size, the payload length and the CRC, for
    either format; ``None`` when the buffer ends inside the header, and
    :class:`CorruptFrame` when the bytes cannot begin a frame."""
    if offset + FRAME_HEADER_V1.size > len(buf):
        return None
    first = _U32.unpack_from(buf, offset)[0]
    if first == _MAGIC_U32:
        if offset + FRAME_HEADER.size > len(buf):
            return None
        _, length, crc = FRAME_HEADER.unpack_from(buf, offset)
        size = FRAME_HEADER.size
    else:
        length, crc = FRAME_HEADER_V1.unpack_from(buf, offset)
        size = FRAME_HEADER_V1.size
    if length > MAX_PAYLOAD or length < _PAYLOAD_HEADER.size:
        raise CorruptFrame(f"implausible frame length {length}")
    return size, length, crc


def read_frame(buf: bytes | memoryview, offset: int) -> tuple[Record, int] | None:
    """The record at ``offset`` and the offset after it.

    ``None`` when the buffer ends inside the frame (a tail still being written,
    or torn by a crash); :class:`CorruptFrame` when the bytes are not a frame.
    """
    # The processor's read path: one unpack for a format-2 header, inline.
    if offset + _HEADER_WORDS.size <= len(buf):
        first, length, crc = _HEADER_WORDS.unpack_from(buf, offset)
        if first == _MAGIC_U32:
            end_of_header = offset + FRAME_HEADER.size
        else:  # format 1: length, CRC
            length, crc, end_of_header = first, length, offset + FRAME_HEADER_V1.size
        if length > MAX_PAYLOAD or length < _PAYLOAD_HEADER.size:
            raise CorruptFrame(f"implausible frame length {length}")
    else:
        header = frame_header(buf, offset)
        if header is None:
            return None
        end_of_header, length, crc = offset + header[0], header[1], header[2]
    end = end_of_header + length
    if end > len(buf):
        return None
    # One copy of the payload, which the checksum and the fields then read:
    # cheaper than a view for a small record, and never the whole buffer.
    payload = bytes(buf[end_of_header:end])
    if zlib.crc32(payload) != crc:
        raise CorruptFrame("checksum mismatch")
    return _decode(payload, 0, length), end


def check_frame(buf: bytes | memoryview, offset: int) -> int | None:
    """Like :func:`read_frame`, without building the record: the offset after a
    valid frame (``tally check`` verifies every frame this way)."""
    header = frame_header(buf, offset)
    if header is None:
        return None
    size, length, crc = header
    start = offset + size
    end = start + length
    if end > len(buf):
        return None
    if zlib.crc32(buf[start:end]) != crc:
        raise CorruptFrame("checksum mismatch")
    lengths = _PAYLOAD_HEADER.unpack_from(buf, start)
    if lengths[0] != VERSION:
        raise CorruptFrame(f"unknown record version {lengths[0]}")
    if lengths[1] >= len(METHODS):
        raise CorruptFrame(f"unknown method code {lengths[1]}")
    if _PAYLOAD_HEADER.size + sum(lengths[3:]) != length:
        raise CorruptFrame("field lengths do not add up to the payload length")
    return end


def resync(buf: bytes | memoryview, damaged: int, *, legacy: bool = False) -> int | None:
    """The offset of the first whole, valid frame after the damaged frame at
    ``damaged``, or ``None``: where reading goes on (docs/log-format.md).

    When the damaged frame's header is intact (its payload failed the checksum),
    the frame after it is tried first: a payload is never searched for frames,
    so a record's body that holds the bytes of a frame is never read as one.
    Otherwise a format-2 frame is found by its magic, then proven by its
    checksum and field lengths. Format-1 frames have no magic, so in a
    ``legacy`` segment (one Tally 0.x wrote) every offset is tried: slow, but
    only where such a segment is damaged.
    """
    data = bytes(buf) if isinstance(buf, memoryview) else buf
    try:
        header = frame_header(data, damaged)
    except CorruptFrame:
        header = None
    if header is not None and data.startswith(MAGIC, damaged):
        after = damaged + header[0] + header[1]
        if _is_frame(data, after):
            return after
    candidate = data.find(MAGIC, damaged + 1)
    if legacy:
        for offset in range(damaged + 1, len(data) if candidate < 0 else candidate):
            if data[offset] == 0 and not any(data[offset : offset + 4]):
                continue  # zeros: no format-1 frame starts with a zero length
            if _is_frame(data, offset):
                return offset
    while candidate >= 0:
        if _is_frame(data, candidate):
            return candidate
        candidate = data.find(MAGIC, candidate + 1)
    return None


def _is_frame(data: bytes, offset: int) -> bool:
    try:
        return check_frame(data, offset) is not None
    except CorruptFrame:
        return False
