"""Revenue (SPEC §9, §12): payments, paying, new and churned customers per interval.

Every numeric value of the product's revenue property ever set on a person is
a payment at that time (negative: a refund). Revenue counts the payments in
range; "new" and "churned" look at each person's positive payments over all
time, since a first payment ever, or the payment a person churns after, may
lie before ``from``.
"""

from __future__ import annotations

from typing import Any

from tally.reports.query import Revenue
from tally.reports.sql import (
    DIALECT,
    Dialect,
    Sql,
    interval_starts,
    iso_local,
    join,
    person_restriction,
    sql,
)
from tally.reports.statements import execute
from tally.store.contract import Cursor

DAY = 86_400


def run(con: Cursor, q: Revenue, d: Dialect = DIALECT) -> dict[str, Any]:
    c = q.common
    starts = interval_starts(c.start, c.end, q.interval, c.tz)
    cells = _cells(con, q, starts, d)

    def cell(kind: str, bucket: int | None) -> tuple[int, float | None, int]:
        return cells.get((kind, bucket), (0, None, 0))

    def revenue(bucket: int | None) -> float | int:
        _, total, count = cell("revenue", bucket)
        return float(total) if count and total is not None else 0

    series = []
    for s in starts:
        paying = cell("paying", s)[0]
        series.append(
            {
                "start": iso_local(s, c.tz),
                "revenue": revenue(s),
                "paying": paying,
                "new": cell("new", s)[0],
                "churned": cell("churned", s)[0],
                "average_per_customer": revenue(s) / paying if paying else None,
            }
        )
    churned = cell("churned", None)[0]
    return {
        "series": series,
        "total_revenue": revenue(None),
        "paying": cell("paying", None)[0],
        "lifetime_value": revenue(None) / churned if churned else None,
    }


def _cells(
    con: Cursor, q: Revenue, starts: list[int], d: Dialect
) -> dict[tuple[str, int | None], tuple[int, float | None, int]]:
    """(kind, interval start or None for the whole range) -> (people, sum, count)."""
    c = q.common
    churn = q.churn_days * DAY

    def fact(kind: str, moment: Sql, amount: str, rows: Sql | str) -> Sql:
        """Facts of one kind: a person, a moment in range, an amount or NULL."""
        return (
            Sql(f"SELECT * FROM (SELECT '{kind}' AS kind, person, ")
            + moment
            + f" AS moment, {amount} AS amount FROM "
            + rows
            + ") "
            + sql("WHERE moment >= ? AND moment < ?", c.start, c.end)
        )

    facts = [
        fact("revenue", Sql("time"), "amount", "pay"),
        fact("paying", Sql("time"), "NULL", "positive"),
        fact("new", Sql("time"), "NULL", "positive WHERE time = first"),
        # A person churns the moment more than churn_days have passed after a
        # positive payment without another one (SPEC §12), if that is in range.
        fact("churned", sql("time + ?", churn), "NULL",
             sql("positive WHERE next IS NULL OR next - time > ?", churn)),
    ]  # fmt: skip
    query = (
        Sql("WITH pay AS (SELECT * FROM (SELECT ")
        + f"{d.person('v')} AS person, v.time, v.recv_ns, v.stream, v.position, "
        + d.numeric("v.value")
        + f" AS amount FROM property_values v{d.person_join('v')}"
        + sql(" WHERE v.product = ? AND v.key = ?", c.product, q.property)
        + ") WHERE amount IS NOT NULL AND "
        + person_restriction(c, "person", d)
        # Each positive payment ever, with the time of the person's next one and
        # of their first one.
        + "), positive AS (SELECT person, time, lead(time) OVER (PARTITION BY person "
        + f"ORDER BY {d.order_columns}) AS next, min(time) OVER (PARTITION BY person) AS first "
        + "FROM pay WHERE amount > 0), facts AS ("
        + join(facts, " UNION ALL ")
        + f") SELECT f.kind, b.bucket, count(DISTINCT f.person), {d.exact_sum('f.amount')}, "
        + "count(f.amount), grouping(b.bucket) FROM facts f"
        + d.bucket_join("f.moment", starts)
        + " GROUP BY GROUPING SETS ((f.kind, b.bucket), (f.kind))"
    )
    rows = execute(con, query).fetchall()
    return {
        (kind, None if grouped else bucket): (people, total, count)
        for kind, bucket, people, total, count, grouped in rows
    }
