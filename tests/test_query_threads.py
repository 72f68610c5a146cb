"""A report's DuckDB threads (Store.all_threads) through the query pool: every
core while it runs, one thread again once its thread has ended, which is after
its answer was handed over (tally.query_pool: the answer does not wait for
``SET threads``); the slot is held until then."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from test_query_pool import Client

from tally.query_pool import QueryPool
from tally.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = Store(tmp_path / "store.duckdb")
    store.threads = 1  # as the processor sets it in `tally serve`
    store.con.execute("SET threads = 1")
    yield store
    store.close()


def threads(cursor: duckdb.DuckDBPyConnection) -> int:
    row = cursor.execute("SELECT current_setting('threads')").fetchone()
    assert row is not None
    return int(row[0])


def test_a_report_has_every_core_and_gives_them_back(store: Store) -> None:
    pool = QueryPool(store, slots=1, timeout=10)

    async def main() -> None:
        for _ in range(20):
            during = await pool.run(Client().request(), threads, all_threads=True)
            assert during == (os.cpu_count() or 1)
        deadline = time.monotonic() + 10
        while pool.counts()["running"]:  # the last thread is tidying up
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with store.reading() as cursor:
            assert threads(cursor) == 1
        # Without all_threads, a query runs on the processor's one thread.
        assert await pool.run(Client().request(), threads) == 1

    asyncio.run(main())


def test_overlapping_reports_keep_every_core_until_the_last_ends(store: Store) -> None:
    pool = QueryPool(store, slots=4, timeout=10)

    def slow_threads(cursor: duckdb.DuckDBPyConnection) -> int:
        cursor.execute("SELECT count(*) FROM range(20000000)").fetchall()
        return threads(cursor)

    async def main() -> None:
        seen = await asyncio.gather(
            *(pool.run(Client().request(), slow_threads, all_threads=True) for _ in range(4))
        )
        assert seen == [os.cpu_count() or 1] * 4
        deadline = time.monotonic() + 10
        while pool.counts()["running"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with store.reading() as cursor:
            assert threads(cursor) == 1

    asyncio.run(main())
