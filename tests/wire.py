"""Raw-socket helpers for wire tests: what a client really sends and gets."""

from __future__ import annotations

import socket
import time

from tally import wire


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def split_responses(data: bytes) -> list[Response]:
    """Every response in ``data``, which must end with a whole one."""
    responses = []
    while data:
        parsed = Response.parse(data)
        assert parsed is not None, f"not a whole response: {data[:200]!r}"
        response, used = parsed
        responses.append(response)
        data = data[used:]
    return responses


def read_responses(sock: socket.socket, count: int, timeout: float = 10.0) -> list[Response]:
    """Read exactly ``count`` responses (each with a Content-Length, or none);
    bytes read past them are dropped, so the socket is done with after it."""
    sock.settimeout(timeout)
    buffer = b""
    responses: list[Response] = []
    deadline = time.monotonic() + timeout
    while len(responses) < count:
        parsed = Response.parse(buffer)
        if parsed is not None:
            response, used = parsed
            responses.append(response)
            buffer = buffer[used:]
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"got {len(responses)} of {count} responses")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(responses)} of {count} responses")
        buffer += chunk
    return responses


class Response:
    def __init__(self, status: int, version: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.body = body

    @classmethod
    def parse(cls, data: bytes, *, head: bool = False) -> tuple[Response, int] | None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = data[:end].decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        if len(data) < end + 4 + length:
            return None
        return cls(
            int(status), version, headers, data[end + 4 : end + 4 + length]
        ), end + 4 + length

    def is_gif(self) -> bool:
        return (
            self.status == 200
            and self.body == wire.GIF
            and self.headers.get("content-type") == "image/gif"
            and self.headers.get("content-length") == "43"
        )


def get(path_and_query: str | bytes, *, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    target = path_and_query.encode() if isinstance(path_and_query, str) else path_and_query
    return b"GET " + target + b" " + version + b"\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"
