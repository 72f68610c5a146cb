"""Every report is bounded (docs/reports.md, "Limits"): lists of conditions,
columns and filters, intervals in a series, and the store's memory. The time
and concurrency of queries: test_query_pool, test_query_isolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.errors import InvalidInput, QueryTooLarge
from tally.reports import Product, parse
from tally.reports.bodies import MAX_ITEMS
from tally.reports.query import MAX_COHORT_CELLS, MAX_INTERVALS
from tally.store import Store

PRODUCT = Product("default")


def refused(kind: str, body: dict[str, object]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse(kind, body, PRODUCT)
    return caught.value


def test_a_series_of_more_intervals_than_the_limit_is_refused_naming_the_count() -> None:
    error = refused(
        "metrics",
        {"event": "Signed Up", "interval": "hour", "from": "1970-01-01", "to": "2200-01-01"},
    )
    assert error.field == "interval"
    assert error.message == (
        "interval makes 2,016,144 hourly intervals of this range; the limit is 100,000: "
        "choose a longer interval or a shorter range"
    )
    for kind, body in (
        ("cohort", {"first_event": "a", "return_event": "b"}),
        ("revenue", {}),
    ):
        hourly = {**body, "interval": "hour", "from": "2000-01-01", "to": "2020-01-01"}
        assert refused(kind, hourly).field == "interval"
    # A hundred years by day is within it.
    days = {"event": "x", "interval": "day", "from": "1970-01-01", "to": "2070-01-01"}
    assert parse("metrics", days, PRODUCT).interval == "day"  # type: ignore[union-attr]
    assert MAX_INTERVALS > 365 * 100


@pytest.mark.parametrize("name", ["conditions", "columns", "where", "person_where"])
def test_lists_longer_than_the_limit_are_refused(name: str) -> None:
    item = {
        "conditions": {"type": "property", "property": "Plan", "op": "has_no_value"},
        "columns": {"type": "property", "property": "Plan"},
        "where": {"property": "Plan", "op": "has_no_value"},
        "person_where": {"property": "Plan", "op": "has_no_value"},
    }[name]
    body = {name: [item] * MAX_ITEMS}
    parse("people", body, PRODUCT)  # the limit itself is fine
    error = refused("people", {name: [item] * (MAX_ITEMS + 1)})
    assert (error.field, error.message) == (name, f"{name} has 51 items; the limit is 50")


def test_a_cohort_table_of_more_cells_than_the_limit_is_refused_naming_buckets() -> None:
    body = {"first_event": "a", "return_event": "b", "from": "2020-01-01", "to": "2025-01-01"}
    assert parse("cohort", {**body, "buckets": 100}, PRODUCT)  # 1,827 days x 100
    error = refused("cohort", {**body, "to": "2030-01-01", "buckets": 100})
    assert error.field == "buckets"
    assert error.message.startswith("buckets make 365,300 cells with the daily cohorts")
    assert f"the limit is {MAX_COHORT_CELLS:,}" in error.message
    weekly = {**body, "to": "2030-01-01", "buckets": 100, "interval": "week"}
    assert parse("cohort", weekly, PRODUCT)  # 522 weeks x 100


def test_a_query_past_the_memory_limit_is_its_own_error(tmp_path: Path) -> None:
    """DuckDB bounds memory for the whole database, and the spill beyond it."""
    sort = "SELECT count(*) FROM (SELECT i::VARCHAR FROM range(10000000) t(i) ORDER BY random())"
    store = Store(tmp_path / "store.duckdb")
    try:
        store.limit_memory(32_000_000, 4_000_000_000)
        memory = pytest.raises(QueryTooLarge, match=r"more memory than --query-memory \(32MB\)")
        with memory, store.reading() as cursor:
            cursor.execute(sort).fetchall()
        store.limit_memory(32_000_000, 1024**2)
        spill = pytest.raises(QueryTooLarge, match=r"than --query-spill \(1MiB\) allows")
        with spill, store.reading() as cursor:
            cursor.execute(sort).fetchall()
        with store.reading() as cursor:  # the store answers as usual after either
            assert cursor.execute("SELECT 42").fetchall() == [(42,)]
    finally:
        store.close()
