"""Cohorts and retention (SPEC §9, §12).

People are grouped by the interval of their first ``first_event`` in range;
each return occurrence falls in bucket ``(time - t0) // size`` from that
person's own first occurrence ``t0``, and may lie after ``to``.
"""

from __future__ import annotations

from typing import Any

from tally.reports.query import Cohort, Common
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
from tally.reports.statements import execute
from tally.store.contract import Cursor

#: Bucket sizes in seconds; a cohort "month" is 30 days (SPEC §9).
SIZES = {"hour": 3600, "day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}


def run(con: Cursor, q: Cohort, d: Dialect = DIALECT) -> dict[str, Any]:
    c = q.common
    starts = interval_starts(c.start, c.end, q.interval, c.tz)
    size = SIZES[q.interval]
    # Each person's cohort: by arithmetic where the starts are evenly spaced.
    cohort_of, cohort_join = d.bucket("a.t0", starts)
    # The cohort-defining occurrence is not its own return (SPEC §12): when the
    # two events are one, it is one of the occurrences in bucket 0 (at t0, and
    # it passes the same filters), so one is taken off there.
    defining = 1 if q.first_event == q.return_event else 0
    per_person = c.unit == "people" or q.count == "first_time"
    if defining:
        returns, bits, rows = _one_event(c, q, size, cohort_of, cohort_join, d)
    else:
        returns, bits, rows = _two_events(c, q, size, cohort_of, cohort_join, d)
    selects = ["SELECT 'size', bucket, NULL, count(*) FROM ca GROUP BY bucket"]
    if per_person:
        # Each person's buckets with a return, as the bits of one number (bit
        # 0: a return in bucket 0 besides the defining occurrence; a body asks
        # for at most 100 buckets). People are then counted per cohort and set
        # of buckets, and each set spread out into its buckets: grouping a
        # million people once, by person, rather than by person and bucket.
        # A person's first return is in the lowest bucket of the set.
        returns += (
            Sql(", m AS (SELECT bucket, bits, count(*) AS n FROM (") + bits
            + ") WHERE bits <> 0 GROUP BY ALL), "
            + sql("x AS (SELECT bucket, k AS idx, n, bits FROM m, range(?) r(k) ", q.buckets)
            + f"WHERE {d.has_bit('bits', 'k')}), firsts AS (SELECT bucket, idx, sum(n) AS v "
            + f"FROM x WHERE {d.below_bit('bits', 'idx')} = 0 GROUP BY ALL)"
        )  # fmt: skip
        if q.count == "first_time":
            value = "SELECT 'value', bucket, idx, v FROM firsts"
        else:
            value = "SELECT 'value', bucket, idx, sum(n) FROM x GROUP BY ALL"
        selects.append(value)
        if c.unit == "people":
            selects.append("SELECT 'reached', bucket, idx, v FROM firsts")
    else:
        # Every return counted: per cohort and bucket, less the defining
        # occurrence of each person of the cohort in bucket 0 (below).
        returns += Sql(", r AS (") + rows + ")"
        selects.append("SELECT 'value', bucket, idx, count(*) FROM r GROUP BY ALL")
    query = returns + " " + " UNION ALL ".join(selects)
    sizes: dict[int, int] = {}
    values: dict[tuple[int, int], int] = {}
    reached: dict[tuple[int, int], int] = {}
    for what, bucket, idx, count in execute(con, query).fetchall():
        if what == "size":
            sizes[bucket] = count
        elif what == "value":
            values[bucket, idx] = int(count)
        else:
            reached[bucket, idx] = int(count)
    if not per_person and defining:
        for bucket, count in sizes.items():
            values[bucket, 0] -= count
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


def _bits(d: Dialect, defining: int) -> str:
    """Each person's buckets with a return, as the bits of one number, from
    ``j``'s rows (bit 0: a return in bucket 0 besides the defining occurrence)."""
    return (
        "SELECT bucket, coalesce("
        + d.bit_or(f"CASE WHEN idx > 0 THEN {d.bit('idx')} END")
        + f", 0) | CASE WHEN count(*) FILTER (WHERE idx = 0) > {defining} THEN 1 ELSE 0 END "
        "AS bits FROM j GROUP BY person, bucket"
    )


def _two_events(
    c: Common, q: Cohort, size: int, cohort_of: Sql, cohort_join: Sql, d: Dialect
) -> tuple[Sql, Sql, Sql]:
    """``ev``, ``a`` (each person's ``t0``), ``ca`` (and its cohort,
    ``bucket``) and ``j``: every return in the buckets, with its person,
    cohort and bucket ``idx``; with the per-person bits of :func:`_bits` and
    the rows (``bucket``, ``idx``) of every return."""
    # One read of the events: the first event's occurrences in range give each
    # person's t0 and cohort; the return event's, from `from` on (even after
    # `to`), are each in bucket (time - t0) // size; past the last one they
    # count for nothing.
    events = sorted({q.first_event, q.return_event})
    returns = (
        Sql("WITH ev AS (SELECT person, event, time FROM (")
        + events_of(c.product, events, c.start, None, d, filters=c.where)
        + sql(") e), a AS (SELECT person, min(time) AS t0 FROM ev WHERE event = ? AND time < ?",
              q.first_event, c.end)
        + " AND "
        + person_restriction(c, "person", d)
        + " GROUP BY person), ca AS (SELECT a.*, "
        + cohort_of
        + " AS bucket FROM a"
        + cohort_join
        + sql("), j AS (SELECT a.person, a.bucket, (e.time - a.t0) // ? AS idx FROM ev e ", size)
        + sql("JOIN ca a ON e.person = a.person AND e.time >= a.t0 AND e.time < a.t0 + ? ",
              size * q.buckets)
        + sql("WHERE e.event = ?)", q.return_event)
    )  # fmt: skip
    return returns, Sql(_bits(d, 0)), Sql("SELECT bucket, idx FROM j")


#: People with at most this many occurrences have them found without a join
#: (:func:`_one_event`, whose formulas for the second and third are for three).
FEW = 3


def _one_event(
    c: Common, q: Cohort, size: int, cohort_of: Sql, cohort_join: Sql, d: Dialect
) -> tuple[Sql, Sql, Sql]:
    """:func:`_two_events` when the first event is the return event: every
    occurrence of a person is then at or after their t0 (the earliest), and
    one grouping by person gives, beside t0, the count, latest time and sum
    of their times. For the people with at most three occurrences (most of
    them: 671,210 of 860,222 at 10M), these are their times — the first,
    the sum less the first and last, the last — so their buckets are found by
    arithmetic (``few``); only the others' occurrences are joined back to
    their t0 (``j``)."""
    span = size * q.buckets
    # `ev` is read again for each of its two uses rather than kept: the second
    # read is of the joined people's rows alone (DuckDB pushes the join's
    # filter into it), and keeping 2.2 million rows cost more CPU than it
    # saved (docs/benchmarks.md, "Session 12: margins15").
    returns = (
        Sql("WITH ev AS NOT MATERIALIZED (SELECT person, time FROM (")
        + events_of(c.product, [q.first_event], c.start, None, d, filters=c.where)
        + ") e), a AS (SELECT person, min(time) AS t0, max(time) AS t1, count(*) AS n, "
        "sum(time) AS total FROM ev WHERE "
        + person_restriction(c, "person", d)
        # A person is in a cohort if an occurrence is before `to`: the earliest is.
        + sql(" GROUP BY person HAVING min(time) < ?), ca AS (SELECT a.*, ", c.end)
        + cohort_of
        + " AS bucket FROM a"
        + cohort_join
        + sql("), j AS (SELECT a.person, a.bucket, (e.time - a.t0) // ? AS idx FROM ev e ", size)
        + sql("JOIN (SELECT * FROM ca WHERE n > ?) a ON e.person = a.person ", FEW)
        + sql("AND e.time >= a.t0 AND e.time < a.t0 + ?)", span)
    )  # fmt: skip
    # The bucket of each of the few people's second and third occurrences
    # (NULL when they have none, or it is past the last bucket); the first is
    # the defining one, in bucket 0.
    second = "CASE n WHEN 2 THEN t1 WHEN 3 THEN CAST(total - t0 - t1 AS BIGINT) END"
    third = "CASE WHEN n = 3 THEN t1 END"
    returns += (
        sql(f", few AS (SELECT bucket, CASE WHEN {second} < t0 + ? THEN ({second} - t0) // ? END "
            "AS i2, ", span, size)
        + sql(f"CASE WHEN {third} < t0 + ? THEN ({third} - t0) // ? END AS i3 ", span, size)
        + sql("FROM ca WHERE n <= ?)", FEW)
    )  # fmt: skip
    # (A return in bucket 0 is the second occurrence: the third is not before it.)
    few_bits = (
        f"SELECT bucket, coalesce(CASE WHEN i2 > 0 THEN {d.bit('i2')} END, 0) "
        f"| coalesce(CASE WHEN i3 > 0 THEN {d.bit('i3')} END, 0) "
        "| CASE WHEN i2 = 0 THEN 1 ELSE 0 END AS bits FROM few"
    )
    # Every occurrence in the buckets, the defining ones included (taken off
    # by the caller).
    few_rows = (
        "SELECT bucket, 0 AS idx FROM few UNION ALL SELECT bucket, i2 FROM few "
        "WHERE i2 IS NOT NULL UNION ALL SELECT bucket, i3 FROM few WHERE i3 IS NOT NULL"
    )
    return (
        returns,
        Sql(_bits(d, 1) + " UNION ALL " + few_bits),
        Sql("SELECT bucket, idx FROM j UNION ALL " + few_rows),
    )
