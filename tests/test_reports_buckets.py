"""Each row's interval, by arithmetic or by the quarter-hour join (Dialect.bucket).

Evenly spaced interval starts are reckoned by arithmetic, others joined
(SPEC §9, §12: intervals in the product's time zone, across DST changes): both
are checked, on real DuckDB, against the greatest start at or before each
time, found in Python.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from zoneinfo import ZoneInfo

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.reports.sql import DIALECT, Sql, interval_starts, sql

# Zones with and without DST, whole, half and three-quarter hours (Lord Howe's
# DST moves the clock by half an hour; Kathmandu is at +05:45).
ZONES = (
    "UTC",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Europe/Berlin",
)
INTERVALS = ("hour", "day", "week", "month")
#: 2024: New York's DST starts 03-10 and ends 11-03, Berlin's 03-31 and 10-27,
#: Lord Howe's ends 04-07 and starts 10-06.
LOW = int(datetime(2024, 1, 1).timestamp())
HIGH = int(datetime(2024, 12, 31).timestamp())


def buckets(con: duckdb.DuckDBPyConnection, times: list[int], starts: list[int]) -> list[int]:
    """Each time's interval start, as the reports' SQL finds it."""
    expression, joined = DIALECT.bucket("x.time", starts)
    query = (
        Sql("SELECT x.time, ")
        + expression
        + sql(" FROM (SELECT unnest(?::BIGINT[]) AS time) x", times)
        + joined
        + " ORDER BY 1"
    )
    return [bucket for _, bucket in con.execute(query.text, list(query.params)).fetchall()]


def expected(times: list[int], starts: list[int]) -> list[int]:
    return [starts[bisect_right(starts, t) - 1] for t in sorted(times)]


@st.composite
def series(draw: st.DrawFn) -> tuple[str, str, int, int, list[int]]:
    zone = draw(st.sampled_from(ZONES))
    interval = draw(st.sampled_from(INTERVALS))
    span = {"hour": 3 * 86_400, "day": 40 * 86_400, "week": 120 * 86_400}.get(
        interval, 400 * 86_400
    )
    start = draw(st.integers(LOW, HIGH))
    end = start + draw(st.integers(1, span))
    times = draw(st.lists(st.integers(start, end - 1), min_size=1, max_size=40))
    return zone, interval, start, end, times


@settings(max_examples=300, deadline=None)
@given(series())
def test_every_time_falls_in_its_interval(case: tuple[str, str, int, int, list[int]]) -> None:
    zone, interval, start, end, times = case
    starts = interval_starts(start, end, interval, zone)  # type: ignore[arg-type]
    con = duckdb.connect()
    assert buckets(con, times, starts) == expected(times, starts)


def _series(zone: str, interval: str, first: str, last: str) -> list[int]:
    tz = ZoneInfo(zone)
    start = int(datetime.fromisoformat(first).replace(tzinfo=tz).timestamp())
    end = int(datetime.fromisoformat(last).replace(tzinfo=tz).timestamp())
    return interval_starts(start, end, interval, zone)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("zone", "interval", "first", "last", "arithmetic"),
    [
        ("UTC", "day", "2024-03-01", "2024-04-01", True),
        ("America/New_York", "day", "2024-04-01", "2024-05-01", True),  # no change in range
        ("America/New_York", "day", "2024-03-01", "2024-04-01", False),  # DST starts 03-10
        ("America/New_York", "week", "2024-10-01", "2024-12-01", False),  # ends 11-03
        ("Australia/Lord_Howe", "day", "2024-04-01", "2024-04-20", False),  # half an hour back
        ("Asia/Kathmandu", "week", "2024-01-01", "2024-06-01", True),
        ("America/New_York", "hour", "2024-03-09", "2024-03-12", True),  # hours: absolute
        ("UTC", "month", "2024-01-01", "2024-04-01", False),
        ("UTC", "month", "2024-01-01", "2024-01-20", True),  # one interval
    ],
)
def test_both_ways_around_dst_changes(
    zone: str, interval: str, first: str, last: str, arithmetic: bool
) -> None:
    """Each way is taken where it should be, and answers as the other would:
    every quarter hour of the range, and the seconds around each start."""
    starts = _series(zone, interval, first, last)
    _, joined = DIALECT.bucket("x.time", starts)
    assert (joined.text == "") is arithmetic
    end = int(datetime.fromisoformat(last).replace(tzinfo=ZoneInfo(zone)).timestamp())
    times = list(range(starts[0], end, 900))
    times += [t for s in starts for t in (s - 1, s, s + 1) if starts[0] <= t < end]
    con = duckdb.connect()
    got = buckets(con, times, starts)
    assert got == expected(times, starts)
    # ... and the join, the other way, agrees where the arithmetic is taken.
    join_query = (
        sql("SELECT b.bucket FROM (SELECT unnest(?::BIGINT[]) AS time) x", times)
        + DIALECT.bucket_join("x.time", starts)
        + " ORDER BY x.time"
    )
    joined_rows = [b for (b,) in con.execute(join_query.text, list(join_query.params)).fetchall()]
    assert joined_rows == got
