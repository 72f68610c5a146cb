"""Hand a non-tracking request to the core process and relay its answer.

The core (the JSON API and the dashboard, DESIGN "Embedded default") listens on
a Unix socket in the data directory. The request is sent with ``Connection:
close`` and the answer is relayed as it comes, streamed, so large exports do not
sit in the collector's memory. Only its ``Connection`` header is rewritten: the
core closes after every answer, the client's connection goes on to the requests
it pipelined after this one when the answer's end can be told without a close
(a ``Content-Length``, a chunked body, or none).

A client that goes away before the answer (it closes or resets its connection;
the collector reads on while the core works, to notice) has its relay
cancelled, which closes the connection to the core: uvicorn then tells the API
``http.disconnect``, and the query behind the answer is interrupted
(tally.query_pool). As for nginx, a client's end of file counts as leaving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from tally import wire

log = logging.getLogger("tally.collector")

_CHUNK = 64 * 1024
_HIGH_WATER = 1024 * 1024


def _unavailable() -> bytes:
    body = json.dumps(
        {"error": {"code": "core_unavailable", "message": "the Tally core is not running"}}
    ).encode()
    return wire.text_response(
        b"503 Service Unavailable",
        body,
        keep_alive=False,
        content_type=b"application/json",
        extra=b"Retry-After: 1\r\n",
    )


async def forward(
    core_socket: Path | None,
    request: bytes,
    transport: asyncio.Transport,
    *,
    keep_alive: bool,
    head: bool,
    timeout: float,
) -> bool:
    """Relay the core's answer to ``request``; whether the client's connection
    can go on. A client that reads none of it for ``timeout`` seconds is
    given up on; the core itself may take as long as it needs."""
    try:
        if core_socket is None:
            raise ConnectionRefusedError("no core process")
        reader, writer = await asyncio.open_unix_connection(str(core_socket))
    except OSError as exc:
        log.warning("cannot reach the core at %s: %s", core_socket, exc)
        if not transport.is_closing():
            transport.write(_unavailable())
        return False
    try:
        writer.write(request)
        await writer.drain()
        try:
            answer_head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            log.warning("the core closed without an answer")
            if not transport.is_closing():
                transport.write(_unavailable())
            return False
        answer_head, delimited = _client_head(answer_head, keep_alive=keep_alive, head_request=head)
        if transport.is_closing():
            return False
        transport.write(answer_head)
        while chunk := await reader.read(_CHUNK):
            if transport.is_closing():
                return False
            transport.write(chunk)
            if not await _drained(transport, timeout):
                return False
        return keep_alive and delimited
    except (OSError, asyncio.LimitOverrunError) as exc:
        log.warning("proxying to the core failed: %s", exc)
        return False
    finally:
        writer.close()


def _client_head(answer_head: bytes, *, keep_alive: bool, head_request: bool) -> tuple[bytes, bool]:
    """The core's answer head as the client gets it (its ``Connection`` says
    whether the connection goes on), and whether the answer's end can be told
    without a close (RFC 9112 §6.3)."""
    status_line, *lines = answer_head[:-4].split(b"\r\n")
    fields = [line.partition(b":") for line in lines]
    kept = [line for line, (name, _, _) in zip(lines, fields, strict=True)
            if name.strip().lower() != b"connection"]  # fmt: skip
    framing = {name.strip().lower(): value.strip().lower() for name, _, value in fields}
    try:
        status = int(status_line.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    delimited = status >= 200 and (
        head_request
        or status in (204, 304)
        or b"content-length" in framing
        or framing.get(b"transfer-encoding", b"").endswith(b"chunked")
    )
    kept.append(b"Connection: keep-alive" if keep_alive and delimited else b"Connection: close")
    return b"\r\n".join([status_line, *kept]) + b"\r\n\r\n", delimited


async def _drained(transport: asyncio.Transport, timeout: float) -> bool:
    """Wait while the client leaves more than ``_HIGH_WATER`` of the answer
    unread; False when it is gone, or read none of it for ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    size = transport.get_write_buffer_size()
    deadline = loop.time() + timeout
    while size > _HIGH_WATER:
        if transport.is_closing() or loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
        unsent = transport.get_write_buffer_size()
        if unsent < size:
            deadline = loop.time() + timeout
        size = unsent
    return not transport.is_closing()
