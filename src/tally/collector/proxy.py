"""Hand a non-tracking request to the core process and relay its answer.

The core (the JSON API and the dashboard, DESIGN "Embedded default") listens on
a Unix socket in the data directory. The request is sent with ``Connection:
close`` and the answer is relayed byte for byte, streamed, so large exports do
not sit in the collector's memory; the client connection closes after it.
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


async def forward(core_socket: Path | None, request: bytes, transport: asyncio.Transport) -> None:
    try:
        if core_socket is None:
            raise ConnectionRefusedError("no core process")
        reader, writer = await asyncio.open_unix_connection(str(core_socket))
    except OSError as exc:
        log.warning("cannot reach the core at %s: %s", core_socket, exc)
        if not transport.is_closing():
            transport.write(_unavailable())
        transport.close()
        return
    try:
        writer.write(request)
        await writer.drain()
        while chunk := await reader.read(_CHUNK):
            if transport.is_closing():
                break
            transport.write(chunk)
            while transport.get_write_buffer_size() > _HIGH_WATER and not transport.is_closing():
                await asyncio.sleep(0.005)
    except OSError as exc:
        log.warning("proxying to the core failed: %s", exc)
    finally:
        writer.close()
        transport.close()
