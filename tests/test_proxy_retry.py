"""A request whose kept connection the core closed without answering is sent
again only when repeating it is harmless (tally.collector.proxy): the core
may have read it and died while it worked (RFC 9112 §9.3.1).

The core here is a small HTTP server on a Unix socket that answers each
connection's first request and, told to, closes at its second after reading
it, as a core killed in the middle of the work would; the collector's side is
the real ``forward`` writing to a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path

import pytest

from tally.collector.proxy import close_kept, forward, repeatable

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Core:
    """Counts each request line it reads; closes without an answer on the
    second request of a connection when ``die_on_second`` is set."""

    def __init__(self) -> None:
        self.seen: Counter[bytes] = Counter()
        self.die_on_second = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        turn = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.seen[head.split(b"\r\n", 1)[0]] += 1
                turn += 1
                if turn == 2 and self.die_on_second:
                    return  # read, never answered
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def ask(path: Path, request: bytes) -> bytes:
    """What a client of the collector receives for ``request``."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    theirs.setblocking(False)
    try:
        await forward(path, request, transport, keep_alive=True, head=False, timeout=5)
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith((b"ok", b"}")):
            chunk = await asyncio.wait_for(loop.sock_recv(theirs, 65536), 5)
            if not chunk:
                break
            received += chunk
        return received
    finally:
        transport.close()
        theirs.close()


def request(line: str, body: bytes = b"") -> bytes:
    head = f"{line}\r\nHost: tally\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.mark.parametrize(
    ("line", "again"),
    [
        ("GET /api/v1/products HTTP/1.1", True),
        ("DELETE /api/v1/products/shop/saved/7 HTTP/1.1", True),
        ("POST /api/v1/products/shop/reports/funnel HTTP/1.1", True),
        ("POST /api/v1/products/shop/reports/people?format=csv HTTP/1.1", True),
        ("POST /api/v1/products/shop/replay HTTP/1.1", False),
        ("POST /api/v1/tokens HTTP/1.1", False),
        ("POST /products/shop/saved HTTP/1.1", False),
    ],
)
def test_only_a_harmless_request_is_sent_again(tmp_path: Path, line: str, again: bool) -> None:
    assert repeatable(request(line)) is again
    core = Core()

    async def run() -> tuple[bytes, bytes]:
        server = await asyncio.start_unix_server(core.serve, path=str(tmp_path / "core.sock"))
        try:
            first = await ask(tmp_path / "core.sock", request("GET /healthz HTTP/1.1"))
            core.die_on_second = True  # the kept connection's next request is read, then dropped
            second = await ask(tmp_path / "core.sock", request(line, b"{}"))
            return first, second
        finally:
            close_kept(tmp_path / "core.sock")
            server.close()

    first, second = asyncio.run(run())
    assert first.startswith(b"HTTP/1.1 200")
    sent = line.encode()
    if again:
        # Dropped on the kept connection, answered on a new one.
        assert second.startswith(b"HTTP/1.1 200"), second
        assert core.seen[sent] == 2
    else:
        # Read once by a core that died: the client is told, nothing is repeated.
        assert second.startswith(b"HTTP/1.1 503"), second
        assert b"core_unavailable" in second
        assert core.seen[sent] == 1
