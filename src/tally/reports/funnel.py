"""Funnels (SPEC §9, §12): strict and skip modes, a window, segments.

The whole funnel is one query: a chain of ``f1 … fN`` relations with one row
per person who did step 1, each adding the earliest occurrence of its step at
or after the cursor (the previous matched step's time; in skip mode the last
matched one). An occurrence is its order key ``(time, recv_ns, stream,
position)``, so the same occurrence never fills two steps.
"""

from __future__ import annotations

from typing import Any

from tally.reports.metrics import NO_SEGMENT, segment_join
from tally.reports.query import Funnel
from tally.reports.sql import (
    DIALECT,
    Dialect,
    Sql,
    display_names,
    events_of,
    join,
    person_restriction,
    sql,
)
from tally.reports.statements import execute
from tally.store.contract import Cursor


def run(con: Cursor, q: Funnel, d: Dialect = DIALECT) -> dict[str, Any]:
    seen = display_names(con, q.common.product, [s.event for s in q.steps])
    labels = [seen.get(s.event, s.label) for s in q.steps]
    whole = _counts(con, q, segmented=False, d=d).get(NO_SEGMENT)
    answer: dict[str, Any] = {"steps": _steps(labels, whole)}
    if q.segment is not None:
        per_value = _counts(con, q, segmented=True, d=d)
        segments = [{"value": v, "steps": _steps(labels, row)} for v, row in per_value.items()]
        segments.sort(key=lambda s: (-s["steps"][0]["people"], s["value"] is None,
                                     s["value"] or ""))  # fmt: skip
        answer["segments"] = segments
    return answer


def _steps(labels: list[str], row: tuple[Any, ...] | None) -> list[dict[str, Any]]:
    n = len(labels)
    people = [int(x) for x in row[:n]] if row else [0] * n
    medians = list(row[n:]) if row else [None] * n
    out = []
    for i, label in enumerate(labels):
        previous = people[i - 1] if i else people[0]
        out.append(
            {
                "event": label,
                "people": people[i],
                "conversion_from_previous": people[i] / previous if previous else None,
                "conversion_from_first": people[i] / people[0] if people[0] else None,
                "median_seconds_from_previous": _seconds(medians[i]) if i else None,
            }
        )
    return out


def _counts(con: Cursor, q: Funnel, *, segmented: bool, d: Dialect) -> dict[Any, tuple[Any, ...]]:
    """segment value -> (people at step 1..n, median gap at step 1..n)."""
    if q.mode == "strict":
        return _strict(con, q, segmented=segmented, d=d)
    c = q.common
    n = len(q.steps)
    parts = _occurrences(q, d)
    parts.append(
        Sql("f1 AS (SELECT person, min(k) AS k1, ")
        + f"{d.first_by('time', 'k')} AS t1, {d.first_by('time', 'k')} AS c1 "
        + "FROM s1 GROUP BY person)"
    )
    carried = ["k1", "t1"]
    for i in range(2, n + 1):
        same = [j for j in range(1, i) if q.steps[j - 1].event == q.steps[i - 1].event]
        on = ["s.person = f.person", f"s.time >= f.c{i - 1}"]
        on += [f"s.k IS DISTINCT FROM f.k{j}" for j in same]
        window = sql(" AND s.time <= f.t1 + ?", q.window) if q.window is not None else Sql("")
        cursor = f"t{i}" if q.mode == "strict" else f"coalesce(t{i}, c{i - 1})"
        keep = ", ".join(f"any_value(f.{col}) AS {col}" for col in carried)
        parts.append(
            Sql(f"f{i} AS (SELECT *, {cursor} AS c{i}, t{i} - c{i - 1} AS g{i} FROM (")
            + f"SELECT f.person, {keep}, any_value(f.c{i - 1}) AS c{i - 1}, "
            + f"min(s.k) AS k{i}, {d.first_by('s.time', 's.k')} AS t{i} "
            + f"FROM f{i - 1} f LEFT JOIN s{i} s ON "
            + " AND ".join(on)
            + window
            + " GROUP BY f.person))"
        )
        carried += [f"k{i}", f"t{i}", f"g{i}"]
    if segmented:
        assert q.segment is not None
        at = "x.k1" if q.segment.attribution == "at_step_1" else ""
        seg_expr, seg = "sv.value", segment_join(c.product, q.segment, "x", d, at=at)
    else:
        seg_expr, seg = f"'{NO_SEGMENT}'", Sql("")
    counts = ", ".join(f"count(x.k{i})" for i in range(1, n + 1))
    medians = ", ".join(["NULL"] + [d.median(f"x.g{i}") for i in range(2, n + 1)])
    query = (
        Sql("WITH ")
        + join(parts, ", ")
        + f" SELECT {seg_expr} AS seg, {counts}, {medians} FROM f{n} x"
        + seg
        + " GROUP BY seg"
    )
    rows = execute(con, query).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _occurrences(q: Funnel, d: Dialect) -> list[Sql]:
    """``s<i>``: the occurrences of step i in range, with their order key ``k``."""
    c = q.common
    key = d.order_key("e")
    return [
        Sql(f"s{i} AS (SELECT person, time, {key} AS k FROM (")
        + events_of(c.product, [step.event], c.start, c.end, d, filters=step.where)
        + ") e WHERE "
        + person_restriction(c, "person", d)
        + ")"
        for i, step in enumerate(q.steps, 1)
    ]


def _strict(con: Cursor, q: Funnel, *, segmented: bool, d: Dialect) -> dict[Any, tuple[Any, ...]]:
    """Strict mode: ``f<i>`` holds only the people who reached step i (inner
    joins), and carries only what a later step needs: the previous step's
    time, step 1's time for a window, and an occurrence's key ``k<j>`` when a
    later step is the same event (so that it takes another occurrence)."""
    c = q.common
    n = len(q.steps)
    events = [s.event for s in q.steps]
    needs_key = {j for j in range(1, n + 1) if events[j - 1] in events[j:]}
    if segmented and q.segment is not None and q.segment.attribution == "at_step_1":
        needs_key.add(1)
    parts = _occurrences(q, d)
    keys = ", min(k) AS k1" if 1 in needs_key else ""
    parts.append(Sql(f"f1 AS (SELECT person, min(time) AS t1{keys} FROM s1 GROUP BY person)"))
    carried = ["t1"] + (["k1"] if 1 in needs_key else [])
    for i in range(2, n + 1):
        on = ["s.person = f.person", f"s.time >= f.t{i - 1}"]
        on += [f"s.k <> f.k{j}" for j in range(1, i) if events[j - 1] == events[i - 1]]
        window = sql(" AND s.time <= f.t1 + ?", q.window) if q.window is not None else Sql("")
        # The earliest occurrence: by time; its key only when a later step needs it.
        mine = f", {d.first_by('s.k', 's.k')} AS k{i}" if i in needs_key else ""
        kept = ", ".join(f"f.{col}" for col in carried)
        parts.append(
            Sql(f"f{i} AS (SELECT f.person, {kept}, min(s.time) AS t{i}{mine} ")
            + f"FROM f{i - 1} f JOIN s{i} s ON "
            + " AND ".join(on)
            + window
            + f" GROUP BY f.person, {kept})"
        )
        carried = sorted({"t1", f"t{i}", *(f"k{j}" for j in needs_key if j <= i)})
    if segmented:
        assert q.segment is not None
        at = "f1.k1" if q.segment.attribution == "at_step_1" else ""
        parts.append(
            Sql("sg AS (SELECT f1.person, sv.value FROM f1")
            + segment_join(c.product, q.segment, "f1", d, at=at)
            + ")"
        )
    per_step = []
    for i in range(1, n + 1):
        gap = "NULL" if i == 1 else d.median(f"x.t{i} - x.t{i - 1}")
        if segmented:
            per_step.append(
                f"SELECT {i} AS step, sg.value AS seg, count(*) AS people, {gap} AS gap "
                f"FROM f{i} x JOIN sg ON sg.person = x.person GROUP BY sg.value"
            )
        else:
            per_step.append(
                f"SELECT {i} AS step, '{NO_SEGMENT}' AS seg, count(*) AS people, {gap} AS gap "
                f"FROM f{i} x"
            )
    query = Sql("WITH ") + join(parts, ", ") + " " + " UNION ALL ".join(per_step)
    rows = execute(con, query).fetchall()
    people: dict[Any, list[int]] = {}
    gaps: dict[Any, list[Any]] = {}
    for step, seg, count, gap in rows:
        people.setdefault(seg, [0] * n)[step - 1] = count
        gaps.setdefault(seg, [None] * n)[step - 1] = gap
    return {seg: (*people[seg], *gaps[seg]) for seg in people if people[seg][0]}
