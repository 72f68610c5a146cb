"""Where the API's queries run: a bounded pool, each query within its limits.

Reports and the API's reads share the core process and the store with the
processor, which writes on a thread and a connection of its own, at the lowest
priority (tally.processor). So that report traffic can neither crowd it out
nor take every thread of the API:

- at most ``--query-concurrency`` queries hold a slot at once, each on a
  thread and a cursor of its own; the others wait for one, in order, up to
  :data:`WAIT_SECONDS`, then are answered 503 ``busy`` with ``Retry-After``;
- a query still running after ``--query-timeout`` is interrupted and answered
  504 ``query_timeout``;
- when the client goes away (its collector then closes the connection to the
  core: collector.proxy, and uvicorn says ``http.disconnect``), the query is
  interrupted at once and nothing is answered;
- memory is DuckDB's, bounded for the whole database (Store.limit_memory): a
  query past it is answered 507 ``query_memory`` (Store.reading).

A slot is given back only when its query's thread has ended, interrupted or
not, so the bound holds for what really runs. What was stopped, and why, is
counted for ``GET /metrics`` (:meth:`QueryPool.counts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tally.errors import Busy, ClientGone, QueryTooLarge, TimedOut
from tally.store.contract import Cursor, Reader

log = logging.getLogger("tally.api")

T = TypeVar("T")

#: How long a query waits for a slot before it is answered 503 ``busy``.
WAIT_SECONDS = 5.0
#: How often a stopped query that still runs is interrupted again: DuckDB
#: forgets an interrupt that comes between two statements (measured: the next
#: statement then runs to its end), and a view may run several.
INTERRUPT_AGAIN_SECONDS = 0.05

#: Why a query was stopped or refused (``tally_queries_stopped``'s ``reason``).
DISCONNECTED = "disconnected"
TIMEOUT = TimedOut.default_code
MEMORY = QueryTooLarge.default_code
BUSY = Busy.default_code


class _Job:
    """One query's thread, as the event loop sees it: its cursor, to interrupt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: Cursor | None = None
        self.stopped = ""

    def begin(self, cursor: Cursor) -> None:
        """In the thread, before the first statement."""
        with self._lock:
            self._cursor = cursor
            if self.stopped:
                raise ClientGone("stopped before it began")

    def interrupt(self, why: str) -> bool:
        """Interrupt the query; whether this is the first time."""
        with self._lock:
            first = not self.stopped
            self.stopped = self.stopped or why
            cursor = self._cursor
        if cursor is not None:
            # Closed already (the engine's error, whichever it is): it has ended.
            with contextlib.suppress(Exception):
                cursor.interrupt()
        return first


class QueryPool:
    def __init__(
        self, store: Reader, *, slots: int, timeout: float, wait: float = WAIT_SECONDS
    ) -> None:
        self.store = store
        self.slots = slots
        self.timeout = timeout
        self.wait = wait
        self._running = 0  # slots taken, by running queries or handed to a waiting one
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._stopped: Counter[str] = Counter()
        self._counting = threading.Lock()  # /metrics reads the counts from its thread
        self._ending: set[asyncio.Task[None]] = set()

    def counts(self) -> dict[str, Any]:
        """For /metrics: queries running and waiting, and stopped by reason."""
        with self._counting:
            stopped = dict(self._stopped)
        return {"running": self._running, "waiting": len(self._waiting), "stopped": stopped}

    async def run(
        self,
        request: Request,
        work: Callable[[Cursor], T],
        *,
        pooled: bool = True,
        timed: bool = True,
        all_threads: bool = False,
    ) -> T:
        """``work`` on a cursor of the store, in a thread, in a slot of the pool
        (unless not ``pooled``), stopped after ``--query-timeout`` (unless not
        ``timed``) or when the client goes away. Call it once the request's
        body is read: what the client sends from then on is only watched for
        its leaving. ``all_threads``: DuckDB's every core (Store.all_threads)."""
        gone = asyncio.ensure_future(_disconnected(request))
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            if pooled:
                await self._take_slot(gone)
            job = _Job()
            thread = self._start(job, work, pooled=pooled, all_threads=all_threads, answer=answer)
            racing: set[asyncio.Future[Any]] = {answer, thread, gone}
            done, _ = await asyncio.wait(
                racing,
                timeout=self.timeout if timed else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if answer in done:
                if not thread.done():  # still tidying up: what goes wrong there is logged
                    thread.add_done_callback(_tidied)
                return answer.result()
            if thread not in done:
                raise self._stop(job, thread, DISCONNECTED if gone in done else TIMEOUT)
            return self._result(thread)
        finally:
            answer.cancel()
            gone.cancel()

    async def stream(
        self,
        request: Request,
        chunks: Callable[[Cursor], Iterator[bytes]],
        *,
        all_threads: bool = False,
        timed: bool = True,
    ) -> AsyncIterator[bytes]:
        """The ``chunks`` of one query as they come, for a streamed answer, in a
        slot of the pool. The first is in hand when this returns: until then
        the query is bounded by ``--query-timeout`` (unless not ``timed``) and
        its errors are answered as usual; once the answer has begun, only by
        the client, which may take its time to read (the thread waits for it,
        chunk by chunk), or leave."""
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await self._take_slot(gone)
        except BaseException:
            gone.cancel()
            raise
        send, receive = anyio.create_memory_object_stream[bytes]()

        def produce(cursor: Cursor) -> None:
            with send:
                for chunk in chunks(cursor):
                    # Blocks while the client reads: a closed receiver ends it.
                    anyio.from_thread.run(send.send, chunk)

        job = _Job()
        thread = self._start(job, produce, pooled=True, all_threads=all_threads)
        first = asyncio.ensure_future(receive.receive())
        try:
            racing: set[asyncio.Future[Any]] = {first, thread, gone}
            done, _ = await asyncio.wait(
                racing,
                timeout=self.timeout if timed else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if first not in done and thread in done:
                self._result(thread)  # its error, before anything was sent
                await asyncio.wait({first})  # or its end: the stream is closed
            if not first.done():
                raise self._stop(job, thread, DISCONNECTED if gone in done else TIMEOUT)
            try:
                chunk = first.result()
            except anyio.EndOfStream:
                chunk = b""
        except BaseException:
            first.cancel()
            receive.close()
            gone.cancel()
            raise

        def left(_: asyncio.Future[None]) -> None:
            # Also when the answer never begins (Starlette saw the client leave
            # first): then _rest never runs, and the thread waits to send.
            if not gone.cancelled():
                receive.close()
                self._stop(job, thread, DISCONNECTED)

        gone.add_done_callback(left)
        return self._rest(chunk, receive, job, thread, gone)

    async def _rest(
        self,
        chunk: bytes,
        receive: MemoryObjectReceiveStream[bytes],
        job: _Job,
        thread: asyncio.Future[Any],
        gone: asyncio.Future[None],
    ) -> AsyncIterator[bytes]:
        """The chunks from ``chunk`` on. Whether the client leaves is watched
        here (``gone``) and by Starlette, which cancels this: either way the
        query stops."""
        finished = False
        following: asyncio.Future[bytes] | None = None
        try:
            yield chunk
            while True:
                following = asyncio.ensure_future(receive.receive())
                racing: set[asyncio.Future[Any]] = {following, gone}
                done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:  # (receive is closed then: see stream's `left`)
                    return
                try:
                    chunk = following.result()
                except anyio.EndOfStream:
                    finished = True
                    # A query that failed on the way raises here: the answer is
                    # then cut short (no last chunk), not ended as if whole.
                    await thread
                    return
                yield chunk
        finally:
            if following is not None:
                following.cancel()
            receive.close()
            gone.cancel()
            if not finished:
                self._stop(job, thread, DISCONNECTED)

    # -- slots ---------------------------------------------------------------------------------

    async def _take_slot(self, gone: asyncio.Future[None]) -> None:
        if self._running < self.slots and not self._waiting:
            self._running += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        racing: set[asyncio.Future[Any]] = {turn, gone}
        done, _ = await asyncio.wait(racing, timeout=self.wait, return_when=asyncio.FIRST_COMPLETED)
        if turn.done():  # a slot was handed over (_give_back)
            if gone not in done:
                return
            self._give_back()
        else:
            self._waiting.remove(turn)
            turn.cancel()
        if gone in done:
            self._count(DISCONNECTED)
            raise ClientGone("the client left while its query waited for a slot")
        self._count(BUSY)
        raise Busy(
            f"all {self.slots} query slots are taken (--query-concurrency) and none came "
            f"free within {self.wait:g} s: try again shortly"
        )

    def _give_back(self, _: object = None) -> None:
        """A slot is free: to the first query waiting, if any."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes to it: still taken
                return
        self._running -= 1

    # -- threads -------------------------------------------------------------------------------

    def _start(
        self,
        job: _Job,
        work: Callable[[Cursor], T],
        *,
        pooled: bool,
        all_threads: bool,
        answer: asyncio.Future[T] | None = None,
    ) -> asyncio.Future[T]:
        """``work`` in a thread of its own; the thread's future. With ``answer``,
        what ``work`` returns is handed to it at once, before the thread closes
        its cursor and gives DuckDB's threads back (a ``SET threads`` that
        waits for DuckDB's own worker to stop: 0.15 ms, at times 3 ms), so that
        the answer leaves meanwhile. The thread's future ends after that."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            threads = self.store.all_threads() if all_threads else contextlib.nullcontext()
            with threads, self.store.reading() as cursor:
                job.begin(cursor)
                value = work(cursor)
                if answer is not None:
                    loop.call_soon_threadsafe(_settle, answer, value)
                return value

        thread = asyncio.ensure_future(run_in_threadpool(run))
        if pooled:
            thread.add_done_callback(self._give_back)
        return thread

    def _result(self, thread: asyncio.Future[T]) -> T:
        try:
            return thread.result()
        except QueryTooLarge:
            self._count(MEMORY)
            raise

    def _stop(self, job: _Job, thread: asyncio.Future[Any], why: str) -> Exception:
        """Interrupt ``job`` now and until its thread ends (its slot is given
        back then), count it; the error to answer with."""
        if job.interrupt(why):
            ending = asyncio.ensure_future(self._end(job, thread, why))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
        if why == TIMEOUT:
            return TimedOut(
                f"the query ran longer than {self.timeout:g} s (--query-timeout) and was "
                "stopped: narrow its range or its conditions"
            )
        return ClientGone("the client left before its answer; its query was stopped")

    async def _end(self, job: _Job, thread: asyncio.Future[Any], why: str) -> None:
        while not thread.done():
            job.interrupt(why)
            await asyncio.wait({thread}, timeout=INTERRUPT_AGAIN_SECONDS)
        if not thread.cancelled():
            thread.exception()  # the interrupt's, expected: retrieved, not logged
        self._count(why)

    def _count(self, why: str) -> None:
        with self._counting:
            self._stopped[why] += 1


def _settle(answer: asyncio.Future[T], value: T) -> None:
    if not answer.done():  # (cancelled: the query was stopped, or its client left)
        answer.set_result(value)


def _tidied(thread: asyncio.Future[Any]) -> None:
    """After an answer has left: a failure to close its cursor or to give
    DuckDB's threads back is logged (the store's own errors show elsewhere)."""
    if not thread.cancelled() and (error := thread.exception()) is not None:
        log.warning("after a query's answer: %s", error)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (uvicorn: its connection closed)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
