"""Hand a non-tracking request to the core process and relay its answer.

The core (the JSON API and the dashboard, DESIGN "Embedded default") listens on
a Unix socket in the data directory. The answer is relayed as it comes,
streamed, so large exports do not sit in the collector's memory. Only its
``Connection`` header is rewritten: the client's connection goes on to the
requests it pipelined after this one when the answer's end can be told without
a close (a ``Content-Length``, a chunked body, or none).

The connection to the core is kept for the next request once an answer has
been relayed whole (its end told by its framing, which the relay follows), and
reused within :data:`KEEP_SECONDS`, well inside uvicorn's own keep-alive (5 s):
a new connection costs the core about 0.2 ms of an API call's floor
(bench/floor.py). A request on a kept connection that the core closed before
answering anything is sent once more on a new one when repeating it is
harmless (the core closes only idle connections, which have read nothing,
but a core that dies while it works closes the same way): an idempotent method
(RFC 9110 §9.2.2) or a report, which only reads (RFC 9112 §9.3.1: a
non-idempotent request is not retried automatically). Any other request is
answered 503, as when the core is down. An import's request (below) has a
connection of its own, closed after its answer.

A client that goes away before the answer (it closes or resets its connection;
the collector reads on while the core works, to notice) has its relay
cancelled, which closes the connection to the core: uvicorn then tells the API
``http.disconnect``, and the query behind the answer is interrupted
(tally.query_pool). As for nginx, a client's end of file counts as leaving.

One request streams its body instead of arriving whole: an import (``POST
/api/v1/products/{product}/import``, up to ``--max-import-bytes``). Its body
goes through an :class:`Upload`, a pipe of at most about a mebibyte between the
client's reads and the core's socket, sent on chunked as it comes while the
core's answer is awaited (the core may answer before the body has all come:
then the client's connection closes after that answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tally import wire

log = logging.getLogger("tally.collector")

_CHUNK = 64 * 1024
_HIGH_WATER = 1024 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: How long a connection to the core is kept idle for the next request.
KEEP_SECONDS = 2.0
#: At most this many idle connections to the core are kept (a collector's
#: requests to the core are few at once: reports wait for a query slot).
KEEP_AT_MOST = 8


class Upload:
    """A request body on its way to the core while it arrives: what the client
    sent and the core's socket has not taken yet. Past ``bound`` bytes held,
    the client is not read (``pause``) until the sender has taken them
    (``resume``), so a slow core slows the client rather than filling memory."""

    def __init__(
        self, bound: int, pause: Callable[[], None], resume: Callable[[], None], *, expect: bool
    ) -> None:
        self._bound = bound
        self._pause = pause
        self._resume = resume
        self._chunks: list[bytes] = []
        self._held = 0
        self._waiter: asyncio.Future[None] | None = None
        #: The client sent ``Expect: 100-continue`` (curl does past 1 MiB).
        self.expect = expect
        self.done = False  # the whole body has arrived
        self.aborted = False  # it never will: the client left, or the body was refused
        #: The answer that refuses the request, when the collector refused its body.
        self.refusal: bytes | None = None
        self.answered = False  # something of the answer has gone to the client

    @property
    def full(self) -> bool:
        return self._held > self._bound

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._held += len(chunk)
        self._wake()
        if self._held > self._bound:
            self._pause()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def abort(self, refusal: bytes | None = None) -> None:
        if not self.done and not self.aborted:
            self.aborted = True
            self.refusal = refusal
            self._wake()

    async def take(self) -> list[bytes] | None:
        """The chunks that arrived since the last call, waiting for one;
        None once the body is complete, or aborted."""
        while not self._chunks and not self.done and not self.aborted:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.aborted or not self._chunks:
            return None
        chunks, self._chunks = self._chunks, []
        was_full, self._held = self._held > self._bound, 0
        if was_full:
            self._resume()
        return chunks

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


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
    upload: Upload | None = None,
) -> bool:
    """Relay the core's answer to ``request``; whether the client's connection
    can go on. A client that reads none of it for ``timeout`` seconds is
    given up on; the core itself may take as long as it needs. With an
    ``upload``, ``request`` is the head alone (chunked) and the body follows
    as it arrives; an aborted upload ends the relay with nothing sent."""
    kept: _Kept | None = None
    try:
        if core_socket is None:
            raise ConnectionRefusedError("no core process")
        sender: socket.socket | None = None
        if upload is None:
            kept = _take(core_socket)
            if kept is None:
                reader, writer = await asyncio.open_unix_connection(str(core_socket))
            else:
                reader, writer = kept.reader, kept.writer
        else:
            reader, writer, sender = await _open_for_upload(core_socket)
    except OSError as exc:
        log.warning("cannot reach the core at %s: %s", core_socket, exc)
        _answer(transport, _unavailable(), upload)
        return False
    if upload is not None and upload.expect and not upload.done and not transport.is_closing():
        transport.write(_CONTINUE)  # its turn has come: send the body (RFC 9110 §10.1.1)
    whole = False  # the answer was read to its end: the connection can serve another
    try:
        try:
            if sender is None or upload is None:
                try:
                    answer_head = await _ask(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    stale = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                    if kept is None or not stale or not repeatable(request):
                        raise
                    # Closed by the core while it was idle, before reading this
                    # request: once more, on a connection of its own.
                    writer.close()
                    try:
                        reader, writer = await asyncio.open_unix_connection(str(core_socket))
                    except OSError as again:
                        log.warning("cannot reach the core at %s: %s", core_socket, again)
                        _answer(transport, _unavailable(), upload)
                        return False
                    answer_head = await _ask(reader, writer, request)
            elif (sent := await _send_while_waiting(upload, request, sender, reader)) is None:
                return False  # aborted: the caller answers, or the client is gone
            else:
                answer_head = sent
        except (OSError, asyncio.IncompleteReadError) as exc:  # nothing relayed yet
            log.warning("the core closed without an answer: %r", exc)
            _answer(transport, _unavailable(), upload)
            return False
        # Before the whole body has arrived, the rest of it cannot be told
        # from the next request: the connection ends with this answer.
        keep_alive = keep_alive and (upload is None or upload.done)
        length, chunked, closes = _framing(answer_head, head_request=head)
        answer_head, delimited = _client_head(answer_head, keep_alive=keep_alive, head_request=head)
        if transport.is_closing():
            return False
        _answer(transport, answer_head, upload)
        if length is not None:
            relayed = whole = await _relay_length(reader, transport, length, timeout)
        elif chunked:
            relayed = whole = await _relay_chunked(reader, transport, timeout)
        else:
            relayed = await _relay_to_end(reader, transport, timeout)
        whole = whole and not closes and upload is None
        if not relayed or transport.is_closing():
            return False  # the client is gone, or reads nothing
        return keep_alive and delimited
    except (OSError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError) as exc:
        # (An answer cut short, or not HTTP: the client's connection ends.)
        log.warning("proxying to the core failed: %s", exc)
        whole = False
        return False
    finally:
        if whole and core_socket is not None:
            _keep(core_socket, reader, writer)
        else:
            writer.close()
        if sender is not None:
            sender.close()


class _Kept:
    """An idle connection to the core, and since when it is idle."""

    __slots__ = ("loop", "reader", "since", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = reader
        self.writer = writer
        self.since = time.monotonic()


#: The idle connections to the core, by its socket, most recently used last.
_IDLE: dict[Path, list[_Kept]] = {}


def _take(core_socket: Path) -> _Kept | None:
    """The most recently used idle connection to the core, if one is fresh."""
    idle = _IDLE.get(core_socket)
    loop = asyncio.get_running_loop()
    while idle:
        kept = idle.pop()
        fresh = time.monotonic() - kept.since < KEEP_SECONDS
        if (
            fresh
            and kept.loop is loop
            and not kept.reader.at_eof()
            and not (kept.writer.is_closing())
        ):
            return kept
        kept.writer.close()
    return None


def close_kept(core_socket: Path) -> None:
    """Close the idle connections kept to the core (a collector stopping)."""
    for kept in _IDLE.pop(core_socket, []):
        kept.writer.close()


def _keep(core_socket: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    idle = _IDLE.setdefault(core_socket, [])
    now = time.monotonic()
    for stale in [k for k in idle if now - k.since >= KEEP_SECONDS]:
        idle.remove(stale)
        stale.writer.close()
    if len(idle) >= KEEP_AT_MOST:
        idle.pop(0).writer.close()
    idle.append(_Kept(reader, writer))


#: Methods whose request means the same sent twice (RFC 9110 §9.2.2).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
#: ``POST /api/v1/products/{product}/reports/{kind}``: a report only reads.
_REPORT = re.compile(rb"POST /api/v1/products/[^/?# ]+/reports/[a-z]+[? ]")


def repeatable(request: bytes) -> bool:
    """Whether ``request`` may be sent to the core again when it is not known
    whether the core read it: its method is idempotent, or it asks a report."""
    method = request.split(b" ", 1)[0]
    return method in _IDEMPOTENT or _REPORT.match(request) is not None


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """Send ``request``; the head of the core's answer."""
    writer.write(request)
    await writer.drain()
    return await reader.readuntil(b"\r\n\r\n")


def _framing(answer_head: bytes, *, head_request: bool) -> tuple[int | None, bool, bool]:
    """How the core's answer ends (RFC 9112 §6.3): after ``length`` bytes, or
    its last chunk, or (neither) when the core closes; and whether the core
    closes the connection after it."""
    status_line, *lines = answer_head[:-4].split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    closes = b"close" in fields.get(b"connection", b"")
    try:
        status = int(status_line.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, False, True
    if head_request or status in (204, 304) or 100 <= status < 200:
        return 0, False, closes
    if fields.get(b"transfer-encoding", b"").endswith(b"chunked"):
        return None, True, closes
    if (length := fields.get(b"content-length")) is not None and length.isdigit():
        return int(length), False, closes
    return None, False, True


async def _relay_length(
    reader: asyncio.StreamReader, transport: asyncio.Transport, length: int, timeout: float
) -> bool:
    """Relay ``length`` bytes of body; whether all came and went."""
    while length > 0:
        chunk = await reader.read(min(_CHUNK, length))
        if not chunk or transport.is_closing():
            return False
        length -= len(chunk)
        transport.write(chunk)
        if not await _drained(transport, timeout):
            return False
    return True


async def _relay_chunked(
    reader: asyncio.StreamReader, transport: asyncio.Transport, timeout: float
) -> bool:
    """Relay a chunked body as it comes, to its last chunk and the empty line
    after its trailers (RFC 9112 §7.1); whether all came and went."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        if transport.is_closing():
            return False
        transport.write(size_line)
        size = int(size_line.split(b";", 1)[0].strip(), 16)  # ValueError: not HTTP
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                transport.write(trailer)
            transport.write(trailer)
            return not transport.is_closing()
        if not await _relay_length(reader, transport, size + 2, timeout):  # and its CRLF
            return False


async def _relay_to_end(
    reader: asyncio.StreamReader, transport: asyncio.Transport, timeout: float
) -> bool:
    """Relay a body that ends when the core closes the connection; whether
    all came and went."""
    while chunk := await reader.read(_CHUNK):
        if transport.is_closing():
            return False
        transport.write(chunk)
        if not await _drained(transport, timeout):
            return False
    return True


class _UploadProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, except that a reset (the core closed without
    reading the rest of an import's body, after answering) ends the answer
    where it stops instead of making the next read raise."""

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            exc = None
        super().connection_lost(exc)


async def _open_for_upload(
    path: Path,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    """A connection to the core for an import: a stream to read the answer
    from, and a second descriptor of the same socket to send the body on. A
    transport closes both ways when a write fails (the core answered early and
    closed), dropping an answer already in the socket's buffer unread; writes
    on their own descriptor fail alone, and the answer is read all the same."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        sender = sock.dup()
    except OSError:
        sock.close()
        raise
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    try:
        transport, protocol = await loop.create_unix_connection(
            lambda: _UploadProtocol(reader, loop=loop), sock=sock
        )
    except OSError:
        sender.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop), sender


def _answer(transport: asyncio.Transport, data: bytes, upload: Upload | None) -> None:
    if upload is not None:
        upload.answered = True
    if not transport.is_closing():
        transport.write(data)


async def _send_while_waiting(
    upload: Upload, head: bytes, sender: socket.socket, reader: asyncio.StreamReader
) -> bytes | None:
    """Send the upload's body chunked as it arrives, and the head of the
    core's answer once it comes, which may be before the body is all sent (a
    refusal: the core then stops reading); None if the upload is aborted
    before an answer."""
    sending = asyncio.ensure_future(_send_body(upload, head, sender))
    answering = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    try:
        await asyncio.wait([sending, answering], return_when=asyncio.FIRST_COMPLETED)
        if not answering.done():
            if upload.aborted:
                return None
            # All sent, or the core stopped reading (its answer says why).
            if (error := sending.exception()) is not None:
                log.debug("sending an import's body to the core stopped: %s", error)
            return await answering
        return answering.result()
    finally:
        for task in (sending, answering):
            task.cancel()
        # Ended before the sockets close (forward), errors retrieved: what they
        # were is decided above.
        await asyncio.gather(sending, answering, return_exceptions=True)


async def _send_body(upload: Upload, head: bytes, sender: socket.socket) -> None:
    """Send the head, then the body as it arrives in chunks (RFC 9112 §7.1),
    each once the core's socket has taken the one before; an aborted upload
    gets no last chunk, and the core sees a body cut short when the
    connection closes."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sender, head)
    while (chunks := await upload.take()) is not None:
        size = sum(map(len, chunks))
        await loop.sock_sendall(sender, b"".join([b"%x\r\n" % size, *chunks, b"\r\n"]))
    if not upload.aborted:
        await loop.sock_sendall(sender, b"0\r\n\r\n")


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
