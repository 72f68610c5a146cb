"""The query pool (tally.query_pool) on a real store: a query past its time,
or whose client leaves, is interrupted, a streamed one too; queries past the
pool's slots wait their turn, then are refused. The API on a real server:
test_query_isolation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from starlette.requests import Request
from starlette.types import Message

from tally.errors import Busy, ClientGone, TimedOut
from tally.query_pool import QueryPool
from tally.store import Store

#: Runs for about 40 minutes here, and stops within milliseconds when interrupted.
SLOW = "SELECT sum(hash(i)) FROM range(1000000000000) t(i)"


class Client:
    """The ASGI side of one request: its (empty) body, then its leaving, when told."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self._asked = False

    async def receive(self) -> Message:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def request(self) -> Request:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
        return Request(scope, self.receive)


def slow(cursor: duckdb.DuckDBPyConnection) -> Any:
    return cursor.execute(SLOW).fetchall()


def answer(cursor: duckdb.DuckDBPyConnection) -> Any:
    return cursor.execute("SELECT 42").fetchall()


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = Store(tmp_path / "store.duckdb")
    yield store
    store.close()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


async def settled(pool: QueryPool, reason: str, count: int = 1) -> None:
    """Until ``count`` queries were stopped for ``reason`` and every slot is free."""
    deadline = time.monotonic() + 10
    while pool.counts()["stopped"].get(reason) != count or pool.counts()["running"]:
        assert time.monotonic() < deadline, pool.counts()
        await asyncio.sleep(0.02)


def test_a_query_past_its_time_is_stopped(store: Store) -> None:
    pool = QueryPool(store, slots=2, timeout=0.2)

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(TimedOut, match=r"longer than 0.2 s \(--query-timeout\)"):
            await pool.run(Client().request(), slow)
        assert time.monotonic() - started < 5
        await settled(pool, "query_timeout")
        # The next query is answered as usual, and an error of the query itself
        # is no timeout.
        assert await pool.run(Client().request(), answer) == [(42,)]
        with pytest.raises(duckdb.CatalogException):
            await pool.run(Client().request(), lambda c: c.execute("SELECT * FROM nowhere"))
        assert pool.counts()["stopped"] == {"query_timeout": 1}

    run(main)


def test_a_query_whose_client_leaves_is_stopped_even_between_two_statements(
    store: Store,
) -> None:
    """DuckDB forgets an interrupt that comes between two statements: the pool
    interrupts again until the query's thread ends."""
    pool = QueryPool(store, slots=1, timeout=600)

    def two_statements(cursor: duckdb.DuckDBPyConnection) -> Any:
        cursor.execute("SELECT 1")
        time.sleep(0.5)  # the client leaves now
        return slow(cursor)

    async def main() -> None:
        client = Client()
        query = asyncio.ensure_future(pool.run(client.request(), two_statements))
        await asyncio.sleep(0.2)
        client.gone.set()
        left = time.monotonic()
        with pytest.raises(ClientGone):
            await query
        assert time.monotonic() - left < 2  # answered at once; the thread ends after
        await settled(pool, "disconnected")
        assert await pool.run(Client().request(), answer) == [(42,)]

    run(main)


def test_queries_past_the_slots_wait_their_turn_then_are_refused(store: Store) -> None:
    pool = QueryPool(store, slots=1, timeout=600, wait=0.5)

    async def main() -> None:
        first = Client()
        running = asyncio.ensure_future(pool.run(first.request(), slow))
        await asyncio.sleep(0.1)
        assert pool.counts()["running"] == 1
        # One more waits for the slot, then is told to come back.
        started = time.monotonic()
        refused = pytest.raises(Busy, match=r"all 1 query slots are taken \(--query-concurrency\)")
        with refused as busy:
            await pool.run(Client().request(), answer)
        assert time.monotonic() - started >= 0.5
        assert busy.value.retry_after == 5
        # One whose client leaves while it waits gives its turn up.
        leaving = Client()
        waiting = asyncio.ensure_future(pool.run(leaving.request(), answer))
        await asyncio.sleep(0.1)
        assert pool.counts()["waiting"] == 1
        leaving.gone.set()
        with pytest.raises(ClientGone):
            await waiting
        # One that waits gets the slot when the running query ends.
        patient = asyncio.ensure_future(pool.run(Client().request(), answer))
        await asyncio.sleep(0.1)
        assert not patient.done()
        first.gone.set()
        assert await patient == [(42,)]
        with pytest.raises(ClientGone):
            await running
        await settled(pool, "disconnected", 2)
        assert pool.counts() == {
            "running": 0,
            "waiting": 0,
            "stopped": {"busy": 1, "disconnected": 2},
        }

    run(main)


def numbers(cursor: duckdb.DuckDBPyConnection) -> Iterator[bytes]:
    """Three chunks, then a query that does not end."""
    for n in range(3):
        yield str(cursor.execute("SELECT ?", [n]).fetchall()[0][0]).encode()
    slow(cursor)


def test_a_stream_is_read_chunk_by_chunk_until_its_client_leaves(store: Store) -> None:
    pool = QueryPool(store, slots=1, timeout=600)

    async def main() -> None:
        client = Client()
        chunks = await pool.stream(client.request(), numbers)
        assert [await anext(chunks) for _ in range(3)] == [b"0", b"1", b"2"]
        reading = asyncio.ensure_future(anext(chunks))  # the query that does not end
        await asyncio.sleep(0.2)
        client.gone.set()
        with pytest.raises(StopAsyncIteration):
            await reading
        await settled(pool, "disconnected")

    run(main)


def test_a_stream_whose_client_leaves_before_it_is_read_is_stopped(store: Store) -> None:
    """Starlette may see the client leave before it reads any of the answer."""
    pool = QueryPool(store, slots=1, timeout=600)

    async def main() -> None:
        client = Client()
        chunks = await pool.stream(client.request(), numbers)
        await asyncio.sleep(0.2)  # the thread waits to hand over the second chunk
        assert pool.counts()["running"] == 1
        client.gone.set()
        await settled(pool, "disconnected")
        del chunks

    run(main)


def test_a_stream_past_its_time_before_its_first_chunk_is_stopped(store: Store) -> None:
    pool = QueryPool(store, slots=1, timeout=0.2)

    def late(cursor: duckdb.DuckDBPyConnection) -> Iterator[bytes]:
        slow(cursor)
        yield b"never"

    async def main() -> None:
        with pytest.raises(TimedOut):
            await pool.stream(Client().request(), late)
        await settled(pool, "query_timeout")

    run(main)
