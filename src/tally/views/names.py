"""A product's event names and property names with how often each was seen,
for the dashboard's pickers (and anyone who wants to know what was sent)."""

from __future__ import annotations

from typing import Any

import duckdb


def names_view(con: duckdb.DuckDBPyConnection, product: str) -> dict[str, Any]:
    """Event names with their events, property names with the values set on
    people (SPEC §6), most frequent first; shown as first spelled (SPEC §2)."""
    events = con.execute(
        "SELECT coalesce(n.display, e.event), e.event, count(*) AS c FROM events e "
        "LEFT JOIN names n ON n.product = e.product AND n.kind = 'event' AND n.key = e.event "
        "WHERE e.product = ? GROUP BY ALL ORDER BY c DESC, 1",
        [product],
    ).fetchall()
    properties = con.execute(
        "SELECT coalesce(n.display, v.key), v.key, count(*) AS c FROM property_values v "
        "LEFT JOIN names n ON n.product = v.product AND n.kind = 'property' AND n.key = v.key "
        "WHERE v.product = ? GROUP BY ALL ORDER BY c DESC, 1",
        [product],
    ).fetchall()
    return {
        "product": product,
        "events": [{"name": n, "key": k, "count": c} for n, k, c in events],
        "properties": [{"name": n, "key": k, "count": c} for n, k, c in properties],
    }
