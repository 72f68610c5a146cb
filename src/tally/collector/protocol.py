"""The tracking path: one asyncio protocol per connection over httptools.

Per request this does the least Python work it can (DESIGN §1): collect the URL,
the headers and the body, frame them as one log record, and hand the frame to
the group commit. The answer waits in the connection's queue of answers, which
keeps pipelined requests in order, until the write covering it is durable.

Everything that is not a tracking call is small and rare here: ``/healthz``,
the mobile SDKs' ``/m/trk``, CORS preflights, and any other path, which goes to
the core process (the JSON API and the dashboard) through :mod:`proxy`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

import httptools

from tally import health, wire
from tally.collector import lenient
from tally.errors import InvalidInput
from tally.log.record import encode_frame, method_code

if TYPE_CHECKING:
    from tally.collector.worker import Worker

log = logging.getLogger("tally.collector")

_TRACKING = frozenset(p.encode() for p in wire.TRACKING_PATHS)
_RECORDED_METHODS = {b"GET": method_code("GET"), b"POST": method_code("POST")}

_GIF_KEEP = wire.gif_response(keep_alive=True)
_GIF_CLOSE = wire.gif_response(keep_alive=False)
_HEAD_KEEP = wire.gif_response(keep_alive=True, head=True)
_HEAD_CLOSE = wire.gif_response(keep_alive=False, head=True)
_RETRY = b"Retry-After: 1\r\n"
_JSON = b"application/json"
_UNAVAILABLE = b"503 Service Unavailable"
_BUSY = b"tally cannot make this record durable right now; retry\n"


def _unavailable(keep_alive: bool) -> bytes:
    return wire.text_response(_UNAVAILABLE, _BUSY, keep_alive=keep_alive, extra=_RETRY)


_503_KEEP = _unavailable(True)
_503_CLOSE = _unavailable(False)
_413 = wire.text_response(b"413 Content Too Large", b"request too large\n", keep_alive=False)
_400 = wire.text_response(b"400 Bad Request", b"malformed HTTP request\n", keep_alive=False)


class _TooLarge(Exception):
    pass


class TrackingProtocol(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._commit = worker.commit
        self._max_head = worker.settings.max_head_bytes
        self._max_body = worker.settings.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._addr = b""
        # Answers in request order: ``bytes`` when ready, ``None`` while the
        # record is not yet durable. After every flush the head is ``None``.
        self._answers: deque[list[bytes | None]] = deque()
        self._close_after: list[bytes | None] | None = None
        self._closed = False
        self._paused = False
        self._proxy: bytes | None = None
        # The request being read.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._head_size = 0
        self._body_size = 0
        self._in_message = False
        # For the lenient fallback: bytes since the last message boundary.
        self._raw = b""
        self._completed_in_raw = 0
        self._lenient_buffer: bytes | None = None
        self.started_at = 0.0  # loop time the current request began; 0 when idle
        self.last_active = 0.0

    # -- connection -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._addr = str(peer[0]).encode()
        self.last_active = self._worker.loop.time()
        self._worker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._worker.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._worker.loop.time()
        if self._lenient_buffer is not None:
            self._lenient_buffer += data
            self._read_leniently()
            return
        if self._raw:
            self._raw += data
        else:
            self._raw = data
            self._completed_in_raw = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_400)
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self._fail(_413)
            else:
                self._switch_to_lenient()
            return
        if not self._in_message:
            self._raw = b""

    def eof_received(self) -> bool | None:
        # The client may close its side right after sending (fire-and-forget):
        # everything it sent was parsed above and is on its way to the log.
        return None

    def close_idle(self, now: float, timeout: float) -> None:
        """Close the connection if it is idle or stuck in a slow request."""
        if self._transport is None or self._closed:
            return
        if self.started_at:
            stuck = now - self.started_at > timeout  # a slow (or slowloris) request
        else:
            stuck = not self._answers and now - self.last_active > timeout  # idle keep-alive
        if stuck:
            self._transport.close()

    def shutdown(self) -> None:
        """Close after the answers already owed (server stopping)."""
        if self._transport is None or self._closed:
            return
        if not self._answers and self._proxy is None:
            self._transport.close()
        else:
            self._transport.pause_reading()
            self._paused = True
            if self._answers:
                self._close_after = self._answers[-1]

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = []
        self._body = []
        self._head_size = 0
        self._body_size = 0
        self.started_at = self._worker.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise _TooLarge

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise _TooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed_in_raw += 1
        self.started_at = 0.0
        if self._close_after is not None or self._proxy is not None:
            return  # nothing after a "Connection: close" or a proxied request
        body = b"".join(self._body) if self._body else b""
        self._handle(
            self._parser.get_method(),
            self._url,
            self._headers,
            body,
            self._parser.should_keep_alive(),
        )

    # -- requests -----------------------------------------------------------------

    def _handle(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        *,
        strict: bool = True,
    ) -> None:
        """Answer one request; ``strict`` is False for one that only the
        lenient reader could frame."""
        if url[:1] != b"/":
            url = _origin_form(url)
        mark = url.find(b"?")
        if mark >= 0:
            path, query = url[:mark], url[mark + 1 :]
        else:
            path, query = url, b""
        if path in _TRACKING:
            code = _RECORDED_METHODS.get(method)
            if code is not None:
                self._record(code, path, query, body, headers, keep_alive)
            elif method == b"HEAD":
                self._answer(_HEAD_KEEP if keep_alive else _HEAD_CLOSE, keep_alive)
            elif method == b"OPTIONS":
                self._answer(wire.options_response(keep_alive=keep_alive), keep_alive)
            else:
                self._answer(_text(b"405 Method Not Allowed", b"method not allowed\n",
                                   keep_alive, b"Allow: GET, POST, HEAD, OPTIONS\r\n"),
                             keep_alive)  # fmt: skip
        elif path == b"/healthz":
            self._answer(self._health(keep_alive, method == b"HEAD"), keep_alive)
        elif path == wire.MOBILE_VERIFY_PATH.encode():
            self._answer(_mobile_verification(headers, keep_alive, method == b"HEAD"), keep_alive)
        elif strict:
            self._start_proxy(method, url, headers, body)
        else:
            # The core's parser (uvicorn's, over the same llhttp) would refuse it
            # too, but in plain text: refuse it here, in the API's error shape.
            self._fail(_refused(headers))

    def _record(
        self,
        code: int,
        path: bytes,
        query: bytes,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        user_agent = content_type = forwarded_for = b""
        for name, value in headers:
            size = len(name)  # a browser sends a dozen headers: lower-case only candidates
            if size == 10:
                if name.lower() == b"user-agent":
                    user_agent = value
            elif size == 12:
                if name.lower() == b"content-type":
                    content_type = value
            elif size == 15 and name.lower() == b"x-forwarded-for":
                forwarded_for = value
        frame = encode_frame(
            code, path, query, body, time.time_ns(), self._addr,
            user_agent, content_type, forwarded_for,
        )  # fmt: skip
        slot: list[bytes | None] = [None]
        if not keep_alive:
            self._close_after = slot
        self._answers.append(slot)
        if not self._commit.submit(frame, self._acknowledge):
            slot[0] = _503_KEEP if keep_alive else _503_CLOSE
            self._flush()
        elif len(self._answers) > 256 and not self._paused and self._transport is not None:
            # Back-pressure: a client pipelining without reading waits here.
            self._transport.pause_reading()
            self._paused = True

    def _acknowledge(self, durable: bool) -> None:
        slot = self._answers[0]
        if durable:
            slot[0] = _GIF_CLOSE if slot is self._close_after else _GIF_KEEP
        else:
            slot[0] = _503_CLOSE if slot is self._close_after else _503_KEEP
        self._flush()

    def _answer(self, response: bytes, keep_alive: bool) -> None:
        slot: list[bytes | None] = [response]
        if not keep_alive:
            self._close_after = slot
        self._answers.append(slot)
        if len(self._answers) == 1:
            self._flush()

    def _flush(self) -> None:
        answers = self._answers
        transport = self._transport
        if transport is None:
            return
        while answers and answers[0][0] is not None:
            slot = answers.popleft()
            if not self._closed:
                transport.write(slot[0])  # type: ignore[arg-type]
            if slot is self._close_after:
                answers.clear()
                transport.close()
                return
        if not answers:
            if self._proxy is not None:
                self._run_proxy()
            elif self._paused and self._close_after is None:
                self._paused = False
                transport.resume_reading()

    def _health(self, keep_alive: bool, head: bool) -> bytes:
        """``ok`` and ``degraded`` answer 200, ``unavailable`` 503 (tally.health)."""
        commit = self._commit
        state = health.verdict(
            self._worker.settings,
            can_write=commit.can_write(),
            write_error=str(commit.last_error) if commit.last_error else None,
            disk_low=commit.disk_low(),
        )
        body = (json.dumps(state) + "\n").encode()
        if state["status"] == health.UNAVAILABLE:
            return wire.text_response(_UNAVAILABLE, body, keep_alive=keep_alive, extra=_RETRY,
                                      content_type=_JSON, head=head)  # fmt: skip
        return wire.text_response(b"200 OK", body, keep_alive=keep_alive, content_type=_JSON,
                                  head=head)  # fmt: skip

    def _fail(self, response: bytes) -> None:
        """Answer an unreadable request after those already owed, then close."""
        self._proxy = None
        slot: list[bytes | None] = [response]
        self._close_after = slot
        self._answers.append(slot)
        if self._transport is not None:
            self._transport.pause_reading()
        if len(self._answers) == 1:
            self._flush()

    # -- the lenient fallback (see lenient.py) ---------------------------------------

    def _switch_to_lenient(self) -> None:
        try:
            offset = lenient.skip_requests(self._raw, self._completed_in_raw)
        except lenient.Unframeable:
            self._fail(_400)
            return
        self._lenient_buffer = self._raw[offset:]
        self._raw = b""
        self._read_leniently()

    def _read_leniently(self) -> None:
        assert self._lenient_buffer is not None
        try:
            found = lenient.split_request(
                self._lenient_buffer, max_head=self._max_head, max_body=self._max_body
            )
        except lenient.TooLarge:
            self._fail(_413)
            return
        except lenient.Unframeable:
            self._fail(_400)
            return
        if found is None:
            if not self.started_at:
                self.started_at = self._worker.loop.time()
            return
        request, used = found
        rest = self._lenient_buffer[used:]
        self._lenient_buffer = None
        self._in_message = False
        self.started_at = 0.0
        self._handle(request.method, request.target, request.headers, request.body,
                     request.keep_alive, strict=False)  # fmt: skip
        if self._close_after is None and self._proxy is None:
            # Back to the strict parser for whatever follows on this connection.
            self._parser = httptools.HttpRequestParser(self)
            self._raw = b""
            if rest:
                self.data_received(rest)

    # -- everything else goes to the core process ------------------------------------

    def _start_proxy(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        if self._transport is None:
            return
        self._proxy = _proxied_request(method, url, headers, body, self._addr)
        self._transport.pause_reading()
        self._paused = True
        if not self._answers:
            self._run_proxy()

    def _run_proxy(self) -> None:
        from tally.collector.proxy import forward  # the slow path; keep the hot one lean

        request, self._proxy = self._proxy, None
        assert request is not None
        assert self._transport is not None
        self._close_after = [b""]  # nothing more is read on this connection
        task = self._worker.loop.create_task(
            forward(self._worker.core_socket, request, self._transport)
        )
        self._worker.tasks.add(task)
        task.add_done_callback(self._worker.tasks.discard)


def _text(
    status: bytes, body: bytes, keep_alive: bool, extra: bytes = b"", *, head: bool = False
) -> bytes:
    return wire.text_response(status, body, keep_alive=keep_alive, extra=extra, head=head)


def _origin_form(url: bytes) -> bytes:
    """``/path?query`` of an absolute-form request target."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        scheme_end = url.find(b"://")
        slash = url.find(b"/", scheme_end + 3 if scheme_end >= 0 else 0)
        return url[slash:] if slash >= 0 else b"/"
    target: bytes = parsed.path or b"/"
    if parsed.query is not None:
        target += b"?" + parsed.query
    return target


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bytes:
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return b""


def _mobile_verification(headers: list[tuple[bytes, bytes]], keep_alive: bool, head: bool) -> bytes:
    """SPEC §1: the mobile SDKs ask whether to keep tracking, and where."""
    host = _header(headers, b"host").decode("latin-1") or "localhost"
    body = json.dumps(
        {"reason": "PRODUCT_SEARCH_SUCCESS", "tracking": True, "tracking_endpoint": host}
    ).encode()
    expires = formatdate(time.time() + 86400, usegmt=True).encode()
    return wire.text_response(
        b"200 OK",
        body,
        keep_alive=keep_alive,
        content_type=b"application/json",
        head=head,
    ).replace(b"Expires: 0\r\n", b"Expires: " + expires + b"\r\n")


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header's name (RFC 9110 §5.1)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # not in a header's value (§5.5)


def _refused(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The 400 for a request to the core that the strict parser refused, in
    the one JSON error shape (docs/http-api.md): it names the header that
    holds a control byte, when one does, but never echoes the value (a token)."""
    error = InvalidInput("malformed HTTP request: its request line or a header is not valid HTTP")
    for name, value in headers:
        if _TOKEN.fullmatch(name) and _CONTROL.search(value):
            header = name.decode("ascii")
            error = InvalidInput(
                f"the {header} header holds a control character (such as NUL), which HTTP "
                "does not allow in a header",
                field=header,
            )
            break
    body = json.dumps(error.to_json()).encode()
    return wire.text_response(b"400 Bad Request", body, keep_alive=False, content_type=_JSON)


_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade",
     b"proxy-connection", b"te", b"trailer"}
)  # fmt: skip


def _proxied_request(
    method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes, addr: bytes
) -> bytes:
    lines = [method + b" " + url + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers if name.lower() not in _HOP_BY_HOP)
    lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    lines.append(b"X-Tally-Client: " + addr)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
