"""Records as they are applied (SPEC §9 "Live"): a product's events, property
sets and aliases that the processor applied between two sets of log positions.

The processor moves each stream's applied position (the ``positions`` table)
in the transaction that applies the records before it, so the records between
two readings of the positions are exactly those applied in between, whatever
their order across streams. A cursor is those positions, written
``c0:1234,c1:5678``.
"""

from __future__ import annotations

import re
from typing import Any

from tally.errors import InvalidInput
from tally.store.contract import Cursor
from tally.views.common import iso, iso_ns

LIMIT = 500
CURSOR = re.compile(r"([A-Za-z0-9_.-]{1,64}:\d{1,18})(,[A-Za-z0-9_.-]{1,64}:\d{1,18}){0,255}")

_PARTS = """
    SELECT 'event' AS kind, coalesce(n.display, e.event) AS name, e.identity AS identity,
           NULL AS value, e.time AS time, e.recv_ns AS recv_ns, e.stream AS stream,
           e.position AS position
    FROM events e LEFT JOIN names n
      ON n.product = e.product AND n.kind = 'event' AND n.key = e.event
    WHERE e.product = ? AND ({e})
    UNION ALL
    SELECT 'set', coalesce(n.display, v.key), v.identity, v.value, v.time, v.recv_ns,
           v.stream, v.position
    FROM property_values v LEFT JOIN names n
      ON n.product = v.product AND n.kind = 'property' AND n.key = v.key
    WHERE v.product = ? AND ({v})
    UNION ALL
    SELECT 'alias', x.b, x.a, NULL, x.time, x.recv_ns, x.stream, x.position
    FROM aliases x WHERE x.product = ? AND x.status = 'accepted' AND ({x})
"""


def applied_positions(con: Cursor) -> dict[str, int]:
    return dict(con.execute("SELECT stream, position FROM positions").fetchall())


def format_cursor(positions: dict[str, int]) -> str:
    return ",".join(f"{stream}:{position}" for stream, position in sorted(positions.items()))


def parse_cursor(text: str) -> dict[str, int]:
    if not CURSOR.fullmatch(text):
        raise InvalidInput("after is a cursor of the feed, like c0:1234,c1:5678", field="after")
    pairs = (part.rsplit(":", 1) for part in text.split(","))
    return {stream: int(position) for stream, position in pairs}


def live_between(
    con: Cursor,
    product: str,
    since: dict[str, int],
    until: dict[str, int],
    limit: int = LIMIT,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The records applied between ``since`` and ``until`` (positions), oldest
    first, at most ``limit``; and the positions reached (``until``, or where
    the records returned end when there were more)."""
    moved = {s: (since.get(s, 0), p) for s, p in until.items() if p > since.get(s, 0)}
    if not moved:
        return dict(until), []

    def where(t: str) -> str:
        return " OR ".join(f"({t}.stream = ? AND {t}.position >= ? AND {t}.position < ?)"
                           for _ in moved)  # fmt: skip

    params: list[Any] = [x for s, (a, b) in moved.items() for x in (s, a, b)]
    parts = _PARTS.format(e=where("e"), v=where("v"), x=where("x"))
    sql = f"SELECT * FROM ({parts}) ORDER BY recv_ns, stream, position LIMIT ?"
    rows = con.execute(
        sql, [product, *params, product, *params, product, *params, limit + 1]
    ).fetchall()
    reached = dict(until)
    if len(rows) > limit:  # more than one answer holds: stop each stream after what is sent
        rows = rows[:limit]
        reached = {**since}
        for row in rows:
            reached[row[6]] = max(reached.get(row[6], 0), row[7] + 1)
    records = [
        {"kind": kind, "name": name, "identity": identity, "value": value, "time": iso(time),
         "received": iso_ns(recv_ns)}
        for kind, name, identity, value, time, recv_ns, _stream, _position in rows
    ]  # fmt: skip
    return reached, records
