"""A forgiving reader for requests that the strict HTTP parser refuses.

llhttp rejects every byte above 0x7F and every control character in a URL, but
hand-built beacons and old server libraries send raw UTF-8 and worse. SPEC §1
promises every tracking call its GIF and a raw log record whatever its
parameters hold, so such a request is read here instead: a request line split at
its first and last space, header lines, and a ``Content-Length`` body. Anything
this cannot frame either (a chunked body, no request line) is refused with 400.

Forgiving about what a request says, never about where it ends: whatever could
make a server or proxy in front of Tally see a request end elsewhere (request
smuggling, RFC 9112 §11.2) is refused with 400 as llhttp refuses it — a
``Transfer-Encoding``, two different ``Content-Length`` values or one that is
not digits, a folded header line, white space before a header's colon, a bare
CR in a header line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawRequest:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = b""
        for name, value in self.headers:
            if name.lower() == b"connection":
                connection = value.strip().lower()
        if self.version == b"HTTP/1.0":
            return connection == b"keep-alive"
        return connection != b"close"


class Unframeable(ValueError):
    """The bytes cannot be read as one HTTP request."""


class TooLarge(ValueError):
    """The request is over the head or body limit (413)."""


def _head_end(data: bytes) -> tuple[int, int]:
    """Where the head ends and the body starts; ``(-1, -1)`` while incomplete."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def split_request(data: bytes, *, max_head: int, max_body: int) -> tuple[RawRequest, int] | None:
    """The first request in ``data`` and the number of bytes it used.

    ``None`` when more bytes are needed.
    """
    head_end, body_start = _head_end(data)
    if head_end < 0:
        if len(data) > max_head:
            raise TooLarge("request head over the limit")
        return None
    if head_end > max_head:
        raise TooLarge("request head over the limit")
    lines = data[:head_end].replace(b"\r\n", b"\n").split(b"\n")
    request_line = lines[0].strip()
    first, last = request_line.find(b" "), request_line.rfind(b" ")
    if first <= 0 or last <= first or not request_line[last + 1 :].startswith(b"HTTP/"):
        raise Unframeable("no request line")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise Unframeable("a folded header line (obs-fold, RFC 9112 §5.2)")
        if b"\r" in line:
            raise Unframeable("a bare CR in a header line (RFC 9112 §2.2)")
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if name[-1:] in (b" ", b"\t"):
            raise Unframeable("white space before a header's colon (RFC 9112 §5.1)")
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            raise Unframeable("chunked body in a request the strict parser refused")
        if lowered == b"content-length":
            if not value.isdigit():  # int() would take "+1", " 1" or "1_0"
                raise Unframeable("bad Content-Length")
            if length is not None and int(value) != length:
                raise Unframeable("two different Content-Length values")
            length = int(value)
    if length is None:
        length = 0
    elif length > max_body:
        raise TooLarge("request body over the limit")
    end = body_start + length
    if end > len(data):
        return None
    request = RawRequest(
        method=request_line[:first],
        target=request_line[first + 1 : last].lstrip(b" "),  # the rest stays verbatim
        version=request_line[last + 1 :],
        headers=headers,
        body=data[body_start:end],
    )
    return request, end


def skip_requests(data: bytes, count: int) -> int:
    """Offset just after the first ``count`` (well-formed) requests of ``data``."""
    offset = 0
    for _ in range(count):
        found = split_request(data[offset:], max_head=len(data), max_body=len(data))
        if found is None:
            raise Unframeable("fewer whole requests than the strict parser completed")
        offset += found[1]
    return offset
