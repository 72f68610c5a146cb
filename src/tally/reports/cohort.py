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
    event_filters,
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
    key = d.order_key("e")
    first = (
        Sql(f"a AS (SELECT person, min({key}) AS k0, {d.first_by('e.time', key)} AS t0 FROM (")
        + events_of(c.product, [q.first_event], c.start, c.end, d)
        + " AND "
        + event_filters("e", c.where, d)
        + ") e WHERE "
        + person_restriction(c, "person", d)
        + " GROUP BY person), ca AS (SELECT a.*, b.bucket FROM a"
        + d.bucket_join("a.t0", starts)
        + ")"
    )
    # Returns: at or after t0 (even after `to`), never the defining occurrence.
    back = (
        Sql(f", r AS (SELECT a.person, a.bucket, e.time, {key} AS k, (e.time - a.t0) // ")
        + sql("? AS idx FROM (", size)
        + events_of(c.product, [q.return_event], c.start, None, d)
        + " AND "
        + event_filters("e", c.where, d)
        + ") e JOIN ca a ON e.person = a.person AND e.time >= a.t0 AND "
        + f"{key} IS DISTINCT FROM a.k0)"
    )
    if q.count == "first_time":
        first_idx = d.first_by("idx", "k")
        back += f", rr AS (SELECT person, bucket, {first_idx} AS idx FROM r GROUP BY ALL)"
    else:
        back += ", rr AS (SELECT * FROM r)"
    measure = "count(DISTINCT person)" if c.unit == "people" else "count(*)"
    query = (
        Sql("WITH ")
        + first
        + back
        + " SELECT 'size', bucket, NULL, count(*) FROM ca GROUP BY bucket"
        + f" UNION ALL SELECT 'value', bucket, idx, {measure} FROM rr"
        + sql(" WHERE idx < ? GROUP BY bucket, idx", q.buckets)
        + " UNION ALL SELECT 'reached', bucket, idx, count(*) FROM"
        + " (SELECT person, bucket, min(idx) AS idx FROM rr GROUP BY person, bucket)"
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
