"""Path (SPEC §9): the most common ways people went from a start event to a conversion.

One set-based query: each person's first start occurrence in range, the
earliest conversion at or after it, the events strictly between the two in the
total order (SPEC §11), runs of one event collapsed (``"Viewed Page 3X"``), and
the first or last ``STEPS`` runs of each person grouped into paths.
"""

from __future__ import annotations

from typing import Any

from tally.reports.query import Path
from tally.reports.sql import DIALECT, Dialect, Sql, event_filters, person_restriction, sql
from tally.reports.statements import execute
from tally.store.contract import Cursor

#: How many (collapsed) steps a path shows.
STEPS = 5
_SLOTS = [f"s{i}" for i in range(1, STEPS + 1)]


def run(con: Cursor, q: Path, d: Dialect = DIALECT) -> dict[str, Any]:
    query = _query(q, d)
    rows = execute(con, query).fetchall()
    paths = [
        {
            "steps": [step for step in row[:STEPS] if step is not None],
            "people": int(row[STEPS]),
            "median_seconds": float(row[STEPS + 1]),
        }
        for row in rows
    ]
    return {"paths": paths, "converted": int(rows[0][STEPS + 2]) if rows else 0}


def _query(q: Path, d: Dialect) -> Sql:
    c = q.common
    key = d.order_key("e")

    def occurrences(event: str) -> Sql:
        """The event's occurrences in range that pass ``where`` (alias ``e``)."""
        return (
            sql("e.product = ? AND e.event = ? AND e.time >= ? AND e.time < ?",
                c.product, event, c.start, c.end)
            + " AND "
            + event_filters("e", c.where, d)
        )  # fmt: skip

    # A path's steps are kept as the columns s1..s5 (NULL past its end): grouping
    # and ordering by them is grouping and ordering by the list.
    slot = "run" if q.direction == "first" else f"run - greatest(runs - {STEPS}, 0)"
    label = (
        "coalesce(nm.display, r.event) || CASE WHEN r.n > 1 "
        "THEN ' ' || CAST(r.n AS VARCHAR) || 'X' ELSE '' END"
    )
    slots = ", ".join(
        f"max(CASE WHEN r.slot = {i} THEN {label} END) AS {name}"
        for i, name in enumerate(_SLOTS, 1)
    )
    return (
        # Only people with a conversion in range can convert: the first start is
        # looked for among theirs (by identity: resolving the person of every
        # start would cost a join more), up to their last conversion.
        Sql(f"WITH conversions AS (SELECT {d.person('e')} AS person, e.time, {key} AS k ")
        + f"FROM events e{d.person_join('e')} WHERE "
        + occurrences(q.conversion)
        + "), converters AS (SELECT person, max(time) AS last FROM conversions GROUP BY person"
        + "), converter_identities AS ("
        + d.with_identities("converters", c.product)
        # Each person's first start in range: its time t0 and order key k0.
        + f"), starts AS (SELECT v.person, min(e.time) AS t0, min({key}) AS k0 FROM events e "
        + "JOIN converter_identities v ON e.ih = v.ih AND e.time <= v.last WHERE "
        + occurrences(q.start_event)
        + " AND "
        + person_restriction(c, "v.person", d)
        + " GROUP BY v.person"
        # The earliest conversion at or after it (the same second counts) that is
        # not the start itself, when the two events are the same: t1, k1.
        + "), ends AS (SELECT s.person, s.t0, s.k0, min(x.time) AS t1, min(x.k) AS k1 "
        + "FROM conversions x JOIN starts s ON x.person = s.person AND x.time >= s.t0 "
        + "AND x.k <> s.k0 GROUP BY s.person, s.t0, s.k0"
        # Every event strictly between the two in the total order, any name.
        + "), spans AS ("
        + d.with_identities("ends", c.product)
        + "), inside AS (SELECT sp.person, e.event, e.time, e.recv_ns, e.stream, e.position "
        + "FROM events e JOIN spans sp ON e.ih = sp.ih "
        + "AND e.time >= sp.t0 AND e.time <= sp.t1"
        + sql(" WHERE e.product = ?", c.product)
        # The whole order key is compared only within the two boundary seconds.
        + f" AND (e.time > sp.t0 OR {key} > sp.k0) AND (e.time < sp.t1 OR {key} < sp.k1)"
        # Runs of one event: a run starts where the event differs from the one
        # before; its length is the distance to the next run's start.
        + "), ranked AS (SELECT person, event, row_number() OVER w AS rn, lag(event) OVER w "
        + "AS previous, count(*) OVER (PARTITION BY person) AS total FROM inside "
        + f"WINDOW w AS (PARTITION BY person ORDER BY {d.order_columns})"
        + "), runs AS (SELECT person, event, coalesce(lead(rn) OVER w, total + 1) - rn AS n, "
        + "row_number() OVER w AS run, count(*) OVER (PARTITION BY person) AS runs "
        + "FROM ranked WHERE previous IS NULL OR previous <> event "
        + "WINDOW w AS (PARTITION BY person ORDER BY rn)"
        + f"), steps AS (SELECT r.person, {slots} FROM (SELECT *, {slot} AS slot FROM runs) r "
        + sql("LEFT JOIN names nm ON nm.product = ? AND nm.kind = 'event' ", c.product)
        + f"AND nm.key = r.event WHERE r.slot BETWEEN 1 AND {STEPS} GROUP BY r.person) "
        + f"SELECT {', '.join(_SLOTS)}, count(*) AS people, {d.median('c.t1 - c.t0')}, "
        + "sum(count(*)) OVER () FROM ends c LEFT JOIN steps p ON p.person = c.person "
        + f"GROUP BY {', '.join(_SLOTS)} ORDER BY people DESC, "
        + ", ".join(f"{name} NULLS FIRST" for name in _SLOTS)
        + sql(" LIMIT ?", q.limit)
    )
