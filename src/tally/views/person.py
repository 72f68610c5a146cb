"""One person (SPEC §9 "Person"): identities, properties, why, and events."""

from __future__ import annotations

from typing import Any

import duckdb

from tally import identity_graph
from tally.identity_graph import Edge
from tally.views.common import identities_of, iso, iso_ns, paging, resolve_person
from tally.views.events import property_names

HISTORY_LIMIT = 100


def person_view(
    con: duckdb.DuckDBPyConnection,
    product: str,
    identity: str,
    *,
    page: Any = 1,
    page_size: Any = 50,
) -> dict[str, Any]:
    page_number, size = paging(page, page_size)
    person = resolve_person(con, product, identity)
    identities = identities_of(con, product, person)
    return {
        "product": product,
        "person": person,
        "identity": identity.strip(),
        "identities": identities,
        "properties": _properties(con, product, identities),
        "aliases": _aliases(con, product, identities, identity.strip()),
        "events": _events(con, product, identities, page_number, size),
    }


def _properties(
    con: duckdb.DuckDBPyConnection, product: str, identities: list[str]
) -> list[dict[str, Any]]:
    rows = con.execute(
        """
        WITH v AS (
            SELECT * FROM property_values
            WHERE product = ? AND identity IN (SELECT unnest(?::VARCHAR[]))
        )
        SELECT v.key, coalesce(n.display, v.key),
               arg_max(v.value, (v.time, v.recv_ns, v.stream, v.position)),
               arg_min(v.value, (v.time, v.recv_ns, v.stream, v.position)),
               min(v.time), max(v.time), count(*),
               list({'value': v.value, 'time': v.time, 'identity': v.identity}
                    ORDER BY v.time DESC, v.recv_ns DESC, v.stream DESC, v.position DESC)
        FROM v LEFT JOIN names n ON n.product = v.product AND n.kind = 'property' AND n.key = v.key
        GROUP BY v.key, n.display ORDER BY coalesce(n.display, v.key)
        """,
        [product, identities],
    ).fetchall()
    return [
        {
            "name": display,
            "key": key,
            # SPEC §6: the current value has the latest (event time, receive time, position).
            "value": current,
            "first_value": first,
            "first_time": iso(first_time),
            "last_value": current,
            "last_time": iso(last_time),
            "values": count,
            "history": [
                {"value": h["value"], "time": iso(h["time"]), "identity": h["identity"]}
                for h in history[:HISTORY_LIMIT]
            ],
        }
        for key, display, current, first, first_time, last_time, count, history in rows
    ]


def _aliases(
    con: duckdb.DuckDBPyConnection, product: str, identities: list[str], asked: str
) -> dict[str, Any]:
    rows = con.execute(
        "SELECT a, b, time, recv_ns, stream, position, status FROM aliases "
        "WHERE product = ? AND (a IN (SELECT unnest(?::VARCHAR[])) "
        "OR b IN (SELECT unnest(?::VARCHAR[]))) ORDER BY recv_ns, stream, position",
        [product, identities, identities],
    ).fetchall()
    edges = [Edge(a, b, (r, s, p)) for a, b, _, r, s, p, _ in rows]
    status = {(r, s, p): st for _, _, _, r, s, p, st in rows}
    times = {(r, s, p): t for _, _, t, r, s, p, _ in rows}

    def describe(edge: Edge) -> dict[str, Any]:
        return {
            "a": edge.a,
            "b": edge.b,
            "time": iso(times[edge.order]),
            "received": iso_ns(edge.order[0]),
            "status": status[edge.order],
        }

    return {
        "edges": [describe(e) for e in edges],
        # Why each identity is this person: the alias path from the one asked for.
        "explanations": [
            {
                "identity": other,
                "path": [describe(e) for e in identity_graph.explain(edges, status, asked, other)],
            }
            for other in identities
            if other != asked
        ],
    }


def _events(
    con: duckdb.DuckDBPyConnection, product: str, identities: list[str], page: int, size: int
) -> dict[str, Any]:
    (total,) = con.execute(
        "SELECT count(*) FROM events "
        "WHERE product = ? AND identity IN (SELECT unnest(?::VARCHAR[]))",
        [product, identities],
    ).fetchone() or (0,)
    rows = con.execute(
        """
        SELECT coalesce(n.display, e.event), e.event, e.identity, e.time, e.recv_ns,
               map_entries(e.properties)
        FROM events e
        LEFT JOIN names n ON n.product = e.product AND n.kind = 'event' AND n.key = e.event
        WHERE e.product = ? AND e.identity IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY e.time DESC, e.recv_ns DESC, e.stream DESC, e.position DESC
        LIMIT ? OFFSET ?
        """,
        [product, identities, size, (page - 1) * size],
    ).fetchall()
    names = property_names(con, product)
    return {
        "total": total,
        "page": page,
        "page_size": size,
        "items": [
            {
                "event": display,
                "key": key,
                "identity": identity,
                "time": iso(time),
                "received": iso_ns(recv_ns),
                "properties": {names.get(p["key"], p["key"]): p["value"] for p in props},
            }
            for display, key, identity, time, recv_ns, props in rows
        ],
    }
