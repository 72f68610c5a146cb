"""Metrics and trends (SPEC §9): people, times, averages and sums per interval."""

from __future__ import annotations

from typing import Any

from tally.reports.query import Metrics, Segment
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

NO_SEGMENT = "__all__"
#: The memory that the sets of people of one report's intervals may take
#: (Dialect.people_set: a bit for each person numbered, for each interval);
#: past it, distinct people are counted by hashing (person, interval) pairs,
#: which takes memory as the pairs found do, not as the people numbered do.
PEOPLE_SETS_BUDGET = 64 * 1024 * 1024


def segment_join(
    product: str, segment: Segment, rows: str, d: Dialect = DIALECT, *, at: str = ""
) -> Sql:
    """A join giving each row of ``rows`` (which has ``person``) its segment value
    as ``sv.value`` (SPEC §9): first ever, last ever, or, with ``at``, the value
    at the occurrence whose order key (:meth:`Dialect.order_key`) ``at`` is."""
    values = Sql(f"(SELECT {d.person('v')} AS person, ") + (
        "v.time, v.recv_ns, v.stream, v.position, v.value" if at else ""
    )
    if at:
        # The latest value at or before the occurrence, in the total order: a
        # value sent with the event itself counts (SPEC §6).
        return (
            Sql(" ASOF LEFT JOIN ")
            + values
            + f" FROM property_values v{d.person_join('v')} "
            + sql("WHERE v.product = ? AND v.key = ?) sv", product, segment.property)
            + f" ON sv.person = {rows}.person AND {at} >= {d.order_key('sv')}"
        )
    pick = d.last_by if segment.attribution == "last_ever" else d.first_by
    return (
        Sql(" LEFT JOIN ")
        + values
        + f"{pick('v.value', d.order_key('v'))} AS value "
        + f"FROM property_values v{d.person_join('v')} "
        + sql("WHERE v.product = ? AND v.key = ? GROUP BY 1) sv", product, segment.property)
        + f" ON sv.person = {rows}.person"
    )


def run(con: Cursor, q: Metrics, d: Dialect = DIALECT) -> dict[str, Any]:
    c = q.common
    starts = interval_starts(c.start, c.end, q.interval, c.tz)

    def answer(cells: dict[int | None, tuple[Any, ...]]) -> dict[str, Any]:
        return {
            "series": [
                {"start": iso_local(s, c.tz), "value": _value(q.measure, cells.get(s))}
                for s in starts
            ],
            "total": _value(q.measure, cells.get(None)),
        }

    # Distinct people do not add up across segments: the whole is its own query.
    everything = answer(_cells(con, q, None, starts, d).get(NO_SEGMENT, {}))
    if q.segment is None:
        return everything
    segments = [
        {"value": value, **answer(cells)}
        for value, cells in _cells(con, q, q.segment, starts, d).items()
    ]
    segments.sort(key=lambda s: (-(s["total"] or 0), s["value"] is None, s["value"] or ""))
    return {**everything, "segments": segments}


def _cells(
    con: Cursor,
    q: Metrics,
    segment: Segment | None,
    starts: list[int],
    d: Dialect,
) -> dict[Any, dict[int | None, tuple[Any, ...]]]:
    """segment value -> interval start (None: the whole range) -> aggregates."""
    c = q.common
    numeric = d.numeric(d.prop("e.properties", q.property)) if q.property else Sql("NULL")
    if segment is None:
        seg_expr, join = f"'{NO_SEGMENT}'", Sql("")
    else:
        seg_expr = "sv.value"
        at = d.order_key("x") if segment.attribution == "at_event" else ""
        join = segment_join(c.product, segment, "x", d, at=at)
    # Only the columns used: DuckDB materialises this (a map column costs most).
    order = ", recv_ns, stream, position" if segment and segment.attribution == "at_event" else ""
    # Times, sums and averages of the whole product are of occurrences, not
    # people: they never resolve a person (events_of).
    of_people = q.measure in ("people", "average_per_person") or segment is not None
    # Distinct people per interval as sets of their numbers, one bit a person,
    # where the sets fit the budget: a third of the time of hashing the
    # (person, interval) pairs, which are nearly all distinct (docs/benchmarks.md,
    # "Session 12: persons15"). A segment's values are not known beforehand,
    # nor so how many sets it would take: segments hash.
    sets = (
        q.measure == "people"
        and segment is None
        and (len(starts) + 1) * (d.people_numbered(con) // 8 + 1) <= PEOPLE_SETS_BUDGET
    )
    occurrences = events_of(
        c.product, [q.event], c.start, c.end, d, extra=numeric, filters=c.where,
        people=of_people or bool(c.person_where), numbers=sets,
    )  # fmt: skip
    number = ", number" if sets else ""
    query = (
        Sql(f"WITH x AS (SELECT person{number}, time, n{order} FROM (")
        + occurrences
        + ") WHERE "
        + person_restriction(c, "person", d)
        + ")"
    )
    # The interval of each row, by arithmetic where the starts are evenly
    # spaced, else by a join (Dialect.bucket).
    # Where it is found by arithmetic, grouped by the interval's index, a
    # small range, and its start taken from ``starts`` (Dialect.bucket_number).
    number_of = d.bucket_number("x.time", starts)
    bucket, buckets = (number_of, Sql("")) if number_of is not None else d.bucket("x.time", starts)
    # Without a segment, no segment column to group by (a constant one cost
    # daily people on ten million events a fifth of its time).
    seg_column, seg = (f", {seg_expr} AS seg", "seg") if segment else ("", seg_expr)
    pairs = Sql("SELECT DISTINCT x.person, ") + bucket + f" AS bucket{seg_column} FROM x"
    rows_of = Sql("SELECT x.person, x.n, ") + bucket + f" AS bucket{seg_column} FROM x"
    # Only what the measure needs; for distinct people, the distinct (person,
    # interval) pairs first, which the two groupings then count.
    if sets:
        query += (
            Sql(", xb AS (SELECT ")
            + bucket
            + f" AS bucket, {d.people_set('x.number')} AS people FROM x"
            + buckets
            # (grouped by constants alone, no rows are one row, of no set: NULL)
            + f" GROUP BY ALL) SELECT bucket, {seg}, coalesce({d.people_count('people')}, 0), "
            + f"0, NULL, 0, NULL, 0 FROM xb UNION ALL SELECT NULL, {seg}, "
            + f"coalesce({d.people_count(d.people_union('people'))}, 0), 0, NULL, 0, NULL, 1 "
            + "FROM xb"
        )
    elif q.measure == "people":
        query += (
            Sql(", xb AS (")
            + pairs
            + join
            + buckets
            + f") SELECT bucket, {seg}, count(*), 0, NULL, 0, NULL, 0 FROM xb GROUP BY ALL"
            + f" UNION ALL SELECT NULL, {seg}, count(DISTINCT person), 0, NULL, 0, NULL, 1 "
            + "FROM xb GROUP BY ALL"
        )
    else:
        people = "count(DISTINCT person)" if q.measure == "average_per_person" else "0"
        numbers = "sum(n), count(n), avg(n)" if q.property else "NULL, 0, NULL"
        query += (
            Sql(", xb AS (")
            + rows_of
            + join
            + buckets
            + f") SELECT bucket, {seg}, {people}, count(*), {numbers}, grouping(bucket) FROM xb"
            + (" GROUP BY GROUPING SETS ((bucket, seg), (seg))" if segment
               else " GROUP BY GROUPING SETS ((bucket), ())")
        )  # fmt: skip
    rows = execute(con, query).fetchall()
    out: dict[Any, dict[int | None, tuple[Any, ...]]] = {}
    for found, seg, people, times, total, count, average, grouped in rows:
        cell = (people, times, total, count, average)
        if grouped:
            out.setdefault(seg, {})[None] = cell
        else:
            out.setdefault(seg, {})[starts[found] if number_of is not None else found] = cell
    return out


def _value(measure: str, cell: tuple[Any, ...] | None) -> float | int | None:
    people, times, total, count, average = cell or (0, 0, None, 0, None)
    if measure == "people":
        return int(people)
    if measure == "times":
        return int(times)
    if measure == "average_per_person":
        return times / people if people else None
    if measure == "sum":
        return float(total) if count else 0
    return float(average) if count else None
