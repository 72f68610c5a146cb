"""Cohorts and retention (SPEC §9, §12).

People are grouped by the interval of their first ``first_event`` in range;
each return occurrence falls in bucket ``(time - t0) // size`` from that
person's own first occurrence ``t0``, and may lie after ``to``.
"""

from __future__ import annotations

from typing import Any

import duckdb

from tally.reports.query import Cohort
from tally.reports.sql import (
    DIALECT,
    Dialect,
    Sql,
    events_of,
    interval_starts,
    iso_local,
    person_restriction,
    sql,
)

#: Bucket sizes in seconds; a cohort "month" is 30 days (SPEC §9).
SIZES = {"hour": 3600, "day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}


def run(con: duckdb.DuckDBPyConnection, q: Cohort, d: Dialect = DIALECT) -> dict[str, Any]:
    c = q.common
    starts = interval_starts(c.start, c.end, q.interval, c.tz)
    size = SIZES[q.interval]
    first = (
        Sql("a AS (SELECT person, min(time) AS t0 FROM (")
        + events_of(c.product, [q.first_event], c.start, c.end, d, filters=c.where)
        + ") e WHERE "
        + person_restriction(c, "person", d)
        + " GROUP BY person), ca AS (SELECT a.*, b.bucket FROM a"
        + d.bucket_join("a.t0", starts)
        + ")"
    )
    # Returns at or after t0 (even after `to`), counted per person and bucket.
    # The cohort-defining occurrence is not its own return (SPEC §12): when the
    # two events are one, it is one of the occurrences counted in bucket 0 (at
    # t0, and it passes the same filters), so one is taken off there. Counting
    # needs no order keys, and a person's first return is then in the lowest
    # bucket with an occurrence left.
    defining = 1 if q.first_event == q.return_event else 0
    back = (
        Sql(", r AS (SELECT person, bucket, idx, c - CASE WHEN idx = 0 THEN ")
        + sql("? ELSE 0 END AS c FROM (SELECT a.person, a.bucket, (e.time - a.t0) // ? AS idx, ",
              defining, size)
        + "count(*) AS c FROM ("
        + events_of(c.product, [q.return_event], c.start, None, d, filters=c.where)
        + ") e JOIN ca a ON e.person = a.person AND e.time >= a.t0 GROUP BY ALL)), "
        + "firsts AS (SELECT person, bucket, min(idx) AS idx FROM r WHERE c > 0 GROUP BY ALL)"
    )  # fmt: skip
    if q.count == "first_time":
        value = "SELECT bucket, idx, count(*) AS v FROM firsts"
    elif c.unit == "people":
        value = "SELECT bucket, idx, count(*) AS v FROM r WHERE c > 0"
    else:
        value = "SELECT bucket, idx, sum(c) AS v FROM r WHERE c > 0"
    query = (
        Sql("WITH ")
        + first
        + back
        + " SELECT 'size', bucket, NULL, count(*) FROM ca GROUP BY bucket"
        + f" UNION ALL SELECT 'value', * FROM ({value}"
        + sql(" GROUP BY bucket, idx) WHERE idx < ?", q.buckets)
        + " UNION ALL SELECT 'reached', bucket, idx, count(*) FROM firsts"
        + sql(" WHERE idx < ? GROUP BY bucket, idx", q.buckets)
    )
    sizes: dict[int, int] = {}
    values: dict[tuple[int, int], int] = {}
    reached: dict[tuple[int, int], int] = {}
    for what, bucket, idx, count in con.execute(query.text, list(query.params)).fetchall():
        if what == "size":
            sizes[bucket] = count
        elif what == "value":
            values[bucket, idx] = count
        else:
            reached[bucket, idx] = count
    cohorts = []
    for start in starts:
        people = sizes.get(start, 0)
        row = [values.get((start, k), 0) for k in range(q.buckets)]
        if c.unit == "people":
            firsts = [reached.get((start, k), 0) for k in range(q.buckets)]
        else:
            firsts = row
        cumulative = [sum(firsts[: k + 1]) for k in range(q.buckets)]
        cohorts.append(
            {
                "start": iso_local(start, c.tz),
                "people": people,
                "values": row,
                "percentages": [v / people if people else None for v in row],
                "cumulative": cumulative,
                "cumulative_percentages": [v / people if people else None for v in cumulative],
            }
        )
    return {"cohorts": cohorts}
