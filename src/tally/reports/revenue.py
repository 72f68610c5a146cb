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
    """(kind, interval start or None for the whole range) -> (people, sum,
    count): the people for "paying", "new" and "churned", the sum and count
    for "revenue" (its people are not counted: 0)."""
    c = q.common
    churn = q.churn_days * DAY

    def fact(kind: str, moment: Sql, rows: Sql | str) -> Sql:
        """People of one kind: a person and a moment in range."""
        return (
            Sql(f"SELECT * FROM (SELECT '{kind}' AS kind, person, ")
            + moment
            + " AS moment FROM "
            + rows
            + ") "
            + sql("WHERE moment >= ? AND moment < ?", c.start, c.end)
        )

    facts = [
        fact("paying", Sql("time"), "positive"),
        fact("new", Sql("time"), "positive WHERE time = first"),
        # A person churns the moment more than churn_days have passed after a
        # positive payment without another one (SPEC §12), if that is in range.
        fact("churned", sql("time + ?", churn),
             sql("positive WHERE next IS NULL OR next - time > ?", churn)),
    ]  # fmt: skip
    # The interval of each row, by arithmetic where the starts are evenly
    # spaced, else by a join (Dialect.bucket).
    fact_bucket, fact_buckets = d.bucket("f.moment", starts)
    pay_bucket, pay_buckets = d.bucket("p.time", starts)
    amount = d.as_double("v.value")
    query = (
        Sql("WITH pay AS (SELECT person, time, amount FROM (SELECT ")
        + f"{d.person('v')} AS person, v.time, "
        + amount
        + f" AS amount, v.value FROM property_values v{d.person_join('v')}"
        + sql(" WHERE v.product = ? AND v.key = ?", c.product, q.property)
        # The value parsed once (not in the filter and again in the select).
        + ") WHERE "
        + d.is_numeric("value", "amount")
        + " AND "
        + person_restriction(c, "person", d)
        # Each positive payment ever, with the time of the person's next one and
        # of their first one, in one pass over each person's payments. Ordered
        # by time alone: of payments at the same time, all but the last in the
        # total order (SPEC §3) have a next one at that time, and the last has
        # the next later one, whichever it is, so the churn moments and first
        # payments are those of the total order.
        + "), positive AS (SELECT person, time, lead(time) OVER w AS next, "
        + "first_value(time) OVER w AS first FROM pay WHERE amount > 0 "
        + "WINDOW w AS (PARTITION BY person ORDER BY time)), people AS ("
        + join(facts, " UNION ALL ")
        # People counted per kind and interval; payments summed apart, with no
        # count of distinct people (a third fewer rows through that grouping).
        + ") SELECT kind, bucket, count(DISTINCT person), NULL, 0, grouping(bucket) FROM "
        + "(SELECT f.kind, f.person, "
        + fact_bucket
        + " AS bucket FROM people f"
        + fact_buckets
        + ") GROUP BY GROUPING SETS ((kind, bucket), (kind)) UNION ALL SELECT 'revenue', "
        + f"bucket, 0, {d.exact_sum('amount')}, count(amount), grouping(bucket) FROM "
        + "(SELECT p.amount, "
        + pay_bucket
        + " AS bucket FROM pay p"
        + pay_buckets
        + sql(" WHERE p.time >= ? AND p.time < ?", c.start, c.end)
        + ") GROUP BY GROUPING SETS ((bucket), ())"
    )
    rows = execute(con, query).fetchall()
    return {
        (kind, None if grouped else bucket): (people, total, count)
        for kind, bucket, people, total, count, grouped in rows
    }
