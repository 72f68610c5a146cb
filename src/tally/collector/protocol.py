"""The tracking path: one asyncio protocol per connection over httptools.

Per request this does the least Python work it can (DESIGN §1): collect the URL,
the headers and the body, frame them as one log record, and hand the frame to
the group commit. The answer waits in the connection's queue of answers, which
keeps pipelined requests in order, until the write covering it is durable.

Everything that is not a tracking call is small and rare here: ``/healthz``,
the mobile SDKs' ``/m/trk``, CORS preflights, and any other path, which goes to
the core process (the JSON API and the dashboard) through :mod:`proxy`; its
answer takes its turn in the same queue.

What a client can make a connection hold is bounded (SPEC §1 limits): a request
head or a body past its limit is refused with 413 while it is still arriving
(:meth:`TrackingProtocol._check_partial`), and reading stops while more answers
wait than a client has read (:meth:`TrackingProtocol.pause_writing`).

One request is not held whole: an import (``POST
/api/v1/products/{product}/import``) streams its body to the core as it
arrives, up to ``--max-import-bytes``, through a bounded pipe
(:class:`tally.collector.proxy.Upload`); it is recognised once its head is in
(:meth:`TrackingProtocol.on_headers_complete`, which looks no further for a
tracking call's path).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, NamedTuple, cast

import httptools

from tally import health, wire
from tally.collector import lenient, stats
from tally.errors import InvalidInput
from tally.log.record import encode_frame, method_code

if TYPE_CHECKING:
    from tally.collector.proxy import Upload
    from tally.collector.worker import Worker

log = logging.getLogger("tally.collector")

_TRACKING = frozenset(p.encode() for p in wire.TRACKING_PATHS)
#: Endpoints counted by name for /metrics; every other path counts as the core's.
_COUNTED = _TRACKING | {b"/healthz", wire.MOBILE_VERIFY_PATH.encode()}
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
#: An import's path (docs/http-api.md), whose body streams to the core.
_IMPORT = re.compile(rb"/api/v1/products/[^/?#]+/import")
#: Bytes of an import's body held between the client and the core, at most
#: (a read more: reading pauses once past it).
_UPLOAD_BOUND = 1024 * 1024
_STOPPING = wire.text_response(
    _UNAVAILABLE,
    json.dumps({"error": {"code": "unavailable", "message": "Tally is stopping; the records "
                          "before this point are written: send the rest again"}}).encode(),
    keep_alive=False, content_type=_JSON, extra=_RETRY,
)  # fmt: skip
#: ``_completed_in_raw`` while ``_raw`` began inside an import's body: negative
#: until ``_raw`` starts afresh, and a count of requests in it still (it grows).
_UNFRAMED = -(1 << 62)


class _TooLarge(Exception):
    def __init__(self, answer: bytes = _413) -> None:
        super().__init__()
        self.answer = answer


class _Proxied(NamedTuple):
    """A request for the core, waiting for its turn in the queue of answers."""

    slot: list[bytes | None]
    request: bytes  # the head alone with an upload
    keep_alive: bool
    head: bool
    upload: Upload | None = None  # its body, still arriving (an import)


class TrackingProtocol(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._stats = worker.stats
        self._commit = worker.commit
        self._max_head = worker.settings.max_head_bytes
        self._max_body = worker.settings.max_body_bytes
        self._max_import = worker.settings.max_import_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._addr = b""
        # Answers in request order: ``bytes`` when ready, ``None`` while the
        # record is not yet durable. After every flush the head is ``None``.
        self._answers: deque[list[bytes | None]] = deque()
        self._close_after: list[bytes | None] | None = None
        self._closed = False
        self._paused = False  # reading paused (back-pressure, the core's turn, closing)
        self._write_blocked = False  # more unsent answers than the transport's high-water mark
        # Requests for the core, in order; the first is relayed once every
        # answer before its slot has gone out, then the queue goes on.
        self._proxied: deque[_Proxied] = deque()
        self._relaying = False
        self._relay: asyncio.Task[bool] | None = None  # relaying the first of them
        # Where received bytes go instead of the strict parser: the lenient
        # reader, or nowhere once a request was refused (_fail).
        self._divert: Callable[[bytes], None] | None = None
        self._linger = False
        # The request being read.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._upload: Upload | None = None  # instead of _body, for an import
        self._head_size = 0
        self._body_size = 0
        self._in_message = False
        # For the lenient fallback: bytes since the last message boundary.
        self._raw = b""
        self._completed_in_raw = 0
        self._lenient_buffer = b""
        # Where the request being read began in ``_raw`` (at the latest), and
        # the ``_completed_in_raw`` this was reckoned at (_check_partial).
        self._began = 0
        self._counted = 0
        self.started_at = 0.0  # loop time the current request began; 0 when idle
        self.last_active = 0.0

    # -- connection -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._addr = str(peer[0]).encode()
        self.last_active = self._worker.loop.time()
        if len(self._worker.connections) >= self._worker.settings.max_connections:
            # Each connection holds memory and a file descriptor: past the
            # limit, a client is told to come back rather than held.
            self._stats.responses[b"503"] += 1
            self._transport.write(_503_CLOSE)
            self._transport.close()
            return
        self._worker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upload is not None:
            self._upload.abort()  # the core's connection closes: the import ends there
            self._upload = None
        self._abandon()
        self._worker.connections.discard(self)
        if self._relay is not None:
            # Closes the connection to the core, which then stops the query
            # that the answer waits for (tally.query_pool): nobody would read it.
            self._relay.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._worker.loop.time()
        if self._divert is not None:
            self._divert(data)
            return
        if self._upload is not None:
            self._upload_received(data)
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
            if self._uploading():  # an import's body, begun in this read
                self._refuse_upload(exc)
            elif isinstance(exc.__context__, _TooLarge):
                self._fail(exc.__context__.answer)
            elif self._close_after is not None:
                self._fail(_400)  # llhttp's "data after Connection: close": dropped unanswered
            else:
                self._switch_to_lenient()
            return
        if not self._in_message:
            self._raw = b""
        elif self._uploading():
            self._raw = b""  # an import's body is not kept (no lenient reading for it)
        else:
            self._check_partial(data)

    def _uploading(self) -> bool:
        """Whether an import's body is arriving (the parser's callbacks set
        it: mypy cannot see them change it under its narrowing)."""
        return self._upload is not None

    def _upload_received(self, data: bytes) -> None:
        """Bytes of an import's body, for its pipe (on_body), and of whatever
        the client pipelined after it."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._upload is not None:
                self._refuse_upload(exc)
            else:
                # A request after the import, in this read: where it began is
                # not known (the body was not kept), so it is not read leniently.
                context = exc.__context__
                self._fail(context.answer if isinstance(context, _TooLarge) else _400)
            return
        if self._in_message and self._upload is None:
            # A request begun after the import's end: count it from here (a
            # read too few at most, as _check_partial allows), never lenient.
            self._raw = data
            self._completed_in_raw = _UNFRAMED
            self._check_partial(data)

    def eof_received(self) -> bool | None:
        # The client may close its side right after sending (fire-and-forget):
        # everything it sent was parsed above and is on its way to the log.
        return None

    def pause_writing(self) -> None:
        # The client does not read its answers (it may pipeline without ever
        # reading): read no more of its requests until it does, or the
        # answers would pile up in this process without limit.
        self._write_blocked = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._resume_reading()

    def close_idle(self, now: float, timeout: float) -> None:
        """Close the connection if it is idle or stuck in a slow request; never
        while a request of it waits for the core, which takes the time it takes
        (a client that stops reading the core's answer is closed by proxy.forward)."""
        if self._transport is None or self._closed:
            return
        if self._upload is not None:
            # An import's body, still arriving: cut only a client that stops
            # sending once it is its turn, not one held back while the core
            # takes its time (with the request before it, or with the body).
            sending = self._relaying and self._proxied[0].upload is self._upload
            if sending and not self._paused and now - self.last_active > timeout:
                self._transport.close()
            return
        if self._proxied:
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
        if self._upload is not None:
            # An import still arriving ends here (what came is written): its
            # relay then answers the refusal, after the answers before it.
            self._upload.abort(_STOPPING)
            self._upload = None
            self._divert = _discard
        if not self._answers:
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

    def on_headers_complete(self) -> None:
        url = self._url
        if (url[:5] == b"/api/" or url[:1] != b"/") and self._close_after is None:
            self._begin_upload(url)  # not for a tracking call: a path that may be an import

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._upload is not None:
            if self._body_size > self._max_import:
                raise _TooLarge
            self._upload.append(body)
            return
        if self._body_size > self._max_body:
            raise _TooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed_in_raw += 1
        self.started_at = 0.0
        if self._upload is not None:
            self._upload.finish()  # its request went to the core with its head
            self._upload = None
            return
        if self._close_after is not None:
            return  # nothing after a "Connection: close"
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
        self._stats.requests[path if path in _COUNTED else stats.CORE] += 1
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
            self._start_proxy(method, url, headers, body, keep_alive)
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
            # Back-pressure: a client pipelining faster than the log syncs waits here.
            self._transport.pause_reading()
            self._paused = True

    def _acknowledge(self, durable: bool) -> None:
        # Records are acknowledged in order, and after every flush the first
        # slot is the oldest record waiting, unless the core's answers wait too.
        slot = self._answers[0] if not self._proxied else self._oldest_record()
        if durable:
            slot[0] = _GIF_CLOSE if slot is self._close_after else _GIF_KEEP
        else:
            slot[0] = _503_CLOSE if slot is self._close_after else _503_KEEP
        self._flush()

    def _oldest_record(self) -> list[bytes | None]:
        waiting_for_core = [proxied.slot for proxied in self._proxied]
        return next(
            slot
            for slot in self._answers
            if slot[0] is None and not any(slot is other for other in waiting_for_core)
        )

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
            self._stats.responses[slot[0][9:12]] += 1  # type: ignore[index]
            if not self._closed:
                transport.write(slot[0])  # type: ignore[arg-type]
            if slot is self._close_after:
                answers.clear()
                self._end(transport)
                return
        if not answers:
            if self._paused:
                self._resume_reading()
        elif self._proxied and answers[0] is self._proxied[0].slot and not self._relaying:
            self._run_proxy()  # the core's turn

    def _end(self, transport: asyncio.Transport) -> None:
        """Close after the last answer. A refused request may still be arriving
        (a body past its limit, a head that never ends), and closing with bytes
        unread resets the connection, which can destroy the answer before the
        client reads it: then only our side is closed, and what still comes is
        read and dropped until the client closes (or worker.sweep does)."""
        if self._linger and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
            if self._paused:
                self._paused = False
                transport.resume_reading()
        else:
            transport.close()

    def _pause_reading(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        """Read again once nothing holds the connection back: no answer owed
        (a proxied request is one), none unsent beyond the high-water mark;
        while an import's body arrives, once its pipe has room (its answer,
        owed, waits for the body)."""
        if not self._paused or self._write_blocked or self._closed or self._transport is None:
            return
        if self._upload is not None:
            if self._upload.full:
                return
        elif self._answers or self._close_after is not None:
            return
        self._paused = False
        self.last_active = self._worker.loop.time()  # the sweep counts a stalled upload from here
        self._transport.resume_reading()

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
        """Refuse a request that is unreadable or too large: nothing of it is
        logged, nothing after it is parsed, and the connection closes after
        the answers already owed and this one (lingering, see _end)."""
        self._divert = _discard
        self._linger = True
        self._raw = self._lenient_buffer = b""
        if not self.started_at:
            self.started_at = self._worker.loop.time()  # the sweep ends the lingering
        if self._close_after is not None:
            return  # after a "Connection: close" nothing more is answered
        slot: list[bytes | None] = [response]
        self._close_after = slot
        self._answers.append(slot)
        if len(self._answers) == 1:
            self._flush()

    def _check_partial(self, data: bytes) -> None:
        """A read ended inside a request: hold what has arrived of it to the
        limits (SPEC §1) that on_url, on_header and on_body cannot apply while
        a header line or a chunk's framing is unfinished, and refuse a declared
        body over the limit at once rather than after a mebibyte of it. A request
        that arrives whole within one read never comes here."""
        raw = self._raw
        if raw is data or self._completed_in_raw != self._counted:
            # The request began in this read: at its start when no request ended
            # in it; else somewhere inside it, and only later reads count (at
            # most one read too few: the limit still bounds what is held).
            self._began = len(raw) if self._completed_in_raw else 0
            self._counted = self._completed_in_raw
        framing = len(raw) - self._began - self._body_size  # the head, a chunked body's framing
        if framing > self._max_head:
            # A head that ended was measured by the callbacks; after it only a
            # chunked body's framing and trailers grow this, allowed as much again.
            head_ended = self._body_size > 0 or raw.endswith(b"\r\n\r\n")
            if not head_ended or framing > 2 * self._max_head:
                self._fail(_413)
                return
        for name, value in self._headers:
            if len(name) == 14 and name.lower() == b"content-length":
                if value.strip().isdigit() and int(value) > self._max_body:
                    if not self._is_import(self._url):
                        self._fail(_413)
                    elif int(value) > self._max_import:
                        self._fail(_import_too_large(self._max_import))
                return

    # -- the lenient fallback (see lenient.py) ---------------------------------------

    def _switch_to_lenient(self) -> None:
        if self._completed_in_raw < 0:  # _raw began inside an import's body
            self._fail(_400)
            return
        try:
            offset = lenient.skip_requests(self._raw, self._completed_in_raw)
        except lenient.Unframeable:
            self._fail(_400)
            return
        self._lenient_buffer = self._raw[offset:]
        self._raw = b""
        self._divert = self._feed_lenient
        self._read_leniently()

    def _feed_lenient(self, data: bytes) -> None:
        self._lenient_buffer += data
        self._read_leniently()

    def _read_leniently(self) -> None:
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
        self._lenient_buffer = b""
        self._divert = None
        self._in_message = False
        self.started_at = 0.0
        self._handle(request.method, request.target, request.headers, request.body,
                     request.keep_alive, strict=False)  # fmt: skip
        if self._close_after is None:
            # Back to the strict parser for whatever follows on this connection.
            self._parser = httptools.HttpRequestParser(self)
            self._raw = b""
            if rest:
                self.data_received(rest)

    # -- everything else goes to the core process ------------------------------------

    def _start_proxy(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        """Queue a request for the core: its answer is relayed in its turn
        (_flush), and the requests pipelined after it are answered after it."""
        slot: list[bytes | None] = [None]
        if not keep_alive:
            self._close_after = slot
        self._answers.append(slot)
        request = _proxied_request(method, url, headers, body, self._addr)
        self._proxied.append(_Proxied(slot, request, keep_alive, method == b"HEAD"))
        if len(self._proxied) > 1:
            # A second request for the core would sit here whole (up to the
            # body limit) while the first is answered: read no more until then.
            # Up to it, reading goes on, so that a client that leaves while the
            # core works (its end of file, or a reset) is noticed at once.
            self._pause_reading()
        if len(self._answers) == 1:
            self._run_proxy()

    def _is_import(self, url: bytes) -> bool:
        if url[:1] != b"/":
            url = _origin_form(url)
        mark = url.find(b"?")
        return (
            _IMPORT.fullmatch(url if mark < 0 else url[:mark]) is not None
            and self._parser.get_method() == b"POST"
        )

    def _begin_upload(self, url: bytes) -> None:
        """A head is in: an import's request is queued for the core at once,
        and its body streams to it as it arrives (on_body). The body limit is
        ``--max-import-bytes``, refused at once when declared larger."""
        if not self._is_import(url):
            return
        headers = self._headers
        expect = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                if value.strip().isdigit() and int(value) > self._max_import:
                    raise _TooLarge(_import_too_large(self._max_import))
            elif lowered == b"expect":
                expect = value.strip().lower() == b"100-continue"
        from tally.collector.proxy import Upload  # the slow path; keep the hot one lean

        upload = Upload(_UPLOAD_BOUND, self._pause_reading, self._resume_reading, expect=expect)
        self._upload = upload
        self._stats.requests[stats.CORE] += 1
        if url[:1] != b"/":
            url = _origin_form(url)
        keep_alive = self._parser.should_keep_alive()
        slot: list[bytes | None] = [None]
        if not keep_alive:
            self._close_after = slot
        self._answers.append(slot)
        head = _proxied_head(self._parser.get_method(), url, headers, self._addr, chunked=True)
        self._proxied.append(_Proxied(slot, head, keep_alive, False, upload))
        if len(self._answers) == 1:
            self._run_proxy()

    def _refuse_upload(self, error: httptools.HttpParserError) -> None:
        """An import's body is over the limit or not HTTP: the request ends
        there. It is answered 413 or 400 if the core's answer has not begun
        (what the core wrote of it before stays written, as when a client
        leaves), else the connection closes."""
        upload = self._upload
        assert upload is not None
        self._upload = None
        context = error.__context__
        if isinstance(context, _TooLarge):
            refusal = _import_too_large(self._max_import)
        else:
            refusal = _refused_body()
        upload.abort(refusal)
        proxied = self._proxied[-1]  # nothing after it was read
        if self._relaying and self._proxied[0] is proxied:
            self._divert = _discard  # its relay ends, then _relayed answers
            return
        self._proxied.pop()
        self._answers.pop()
        if self._close_after is proxied.slot:
            self._close_after = None
        self.started_at = self._worker.loop.time()
        self._fail(refusal)

    def _run_proxy(self) -> None:
        from tally.collector.proxy import forward  # the slow path; keep the hot one lean

        assert self._transport is not None
        proxied = self._proxied[0]
        self._relaying = True
        relay = forward(
            self._worker.core_socket,
            proxied.request,
            self._transport,
            keep_alive=proxied.keep_alive,
            head=proxied.head,
            timeout=self._worker.settings.timeout,
            upload=proxied.upload,
        )
        if proxied.upload is not None:
            self.last_active = self._worker.loop.time()  # a stall counts from its turn
            self._resume_reading()  # the body is wanted now, whatever else waits
        task = self._worker.loop.create_task(relay)
        self._relay = task
        self._worker.tasks.add(task)
        task.add_done_callback(self._worker.tasks.discard)
        task.add_done_callback(functools.partial(self._relayed, proxied))

    def _relayed(self, proxied: _Proxied, task: asyncio.Task[bool]) -> None:
        """The core's answer is out: the answers queued behind it follow, unless
        the connection cannot go on (the client or the answer said close, the
        core failed, the client stopped reading)."""
        self._relaying = False
        self._relay = None
        if self._proxied and self._proxied[0] is proxied:
            self._proxied.popleft()
        if self._answers and self._answers[0] is proxied.slot:
            self._answers.popleft()
        if task.cancelled():
            go_on = False
        elif (error := task.exception()) is not None:
            log.error("relaying a request to the core failed", exc_info=error)
            go_on = False
        else:
            go_on = task.result() and proxied.slot is not self._close_after
        upload = proxied.upload
        if upload is not None and not upload.done and not self._closed:
            self._end_upload(upload, proxied.slot)
            return
        if not go_on and not self._closed and self._transport is not None:
            self._transport.close()
            self._abandon()
        if self.started_at:  # a request half read when the core's turn came: its time starts now
            self.started_at = self._worker.loop.time()
        self._flush()

    def _end_upload(self, upload: Upload, slot: list[bytes | None]) -> None:
        """An import's relay ended before its body had all arrived: refused by
        the collector (answered here unless the core's answer has begun), or
        answered early by the core, or the core failed. Nothing after it can
        be read: the connection closes (lingering, as after a refusal)."""
        upload.abort()
        if self._upload is upload:
            self._upload = None
        if self._close_after is slot:
            self._close_after = None
        self.started_at = self._worker.loop.time()  # the sweep ends the lingering
        if upload.refusal is not None and not upload.answered:
            self._fail(upload.refusal)
        elif self._transport is not None:
            self._divert = _discard
            self._linger = True
            self._end(self._transport)  # nothing more to answer: it was the last request

    def _abandon(self) -> None:
        """The connection is closed or lost: nothing more is sent. Requests
        waiting for the core are dropped; records on their way to the log are
        still acknowledged (into the void), which empties the queue."""
        self._closed = True
        if self._proxied:
            waiting = [proxied.slot for proxied in self._proxied]
            self._proxied.clear()
            self._answers = deque(
                slot for slot in self._answers if not any(slot is other for other in waiting)
            )
            self._flush()


def _discard(data: bytes) -> None:
    """Where bytes go after a refusal (_fail)."""


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
     b"proxy-connection", b"te", b"trailer",
     b"expect"}  # the body goes along at once: no "100 Continue" ahead of the answer
)  # fmt: skip


def _proxied_request(
    method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes, addr: bytes
) -> bytes:
    return _proxied_head(method, url, headers, addr, length=len(body)) + body


def _proxied_head(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    addr: bytes,
    *,
    length: int = 0,
    chunked: bool = False,
) -> bytes:
    """The head of a request for the core: the client's own framing and
    connection headers replaced by ours (a body of ``length``, or chunked)."""
    lines = [method + b" " + url + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers if name.lower() not in _HOP_BY_HOP)
    if chunked:
        # An import's connection to the core is its own, closed after it (proxy).
        lines.append(b"Transfer-Encoding: chunked")
        lines.append(b"Connection: close")
    else:
        lines.append(b"Content-Length: " + str(length).encode())
    lines.append(b"X-Tally-Client: " + addr)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _import_too_large(limit: int) -> bytes:
    """The 413 for an import's body over ``--max-import-bytes``, in the API's
    error shape."""
    body = json.dumps({"error": {
        "code": "too_large",
        "message": f"an import's body is at most {limit} bytes (--max-import-bytes); "
        "send it in parts (with one ?name, records sent twice are absorbed)",
    }}).encode()  # fmt: skip
    return wire.text_response(b"413 Content Too Large", body, keep_alive=False, content_type=_JSON)


def _refused_body() -> bytes:
    """The 400 for an import whose body stopped being valid HTTP framing (a
    chunk's size that is not hex, say), in the API's error shape."""
    error = InvalidInput("malformed HTTP request: the body's framing is not valid HTTP")
    body = json.dumps(error.to_json()).encode()
    return wire.text_response(b"400 Bad Request", body, keep_alive=False, content_type=_JSON)
