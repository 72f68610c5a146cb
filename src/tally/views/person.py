"""One person (SPEC §9 "Person"): identities, properties, why, and events."""

from __future__ import annotations

from typing import Any

from tally import identity_graph
from tally.display import display_name
from tally.identity_graph import Edge
from tally.store.contract import Cursor
from tally.store.schema import IDENTITY_HASH
from tally.views.common import (
    hashed_in,
    identities_of,
    identity_hashes,
    iso,
    iso_ns,
    paging,
    resolve_person,
)
from tally.views.events import property_names

HISTORY_LIMIT = 100
HASHED = IDENTITY_HASH.format("?::VARCHAR")


def person_view(
    con: Cursor,
    product: str,
    identity: str,
    *,
    page: Any = 1,
    page_size: Any = 50,
) -> dict[str, Any]:
    page_number, size = paging(page, page_size)
    # One snapshot for every part of the page, while the processor writes.
    con.begin()
    try:
        person = resolve_person(con, product, identity)
        identities = identities_of(con, product, person)
        hashes = identity_hashes(con, identities)
        return {
            "product": product,
            "person": person,
            "display": display_name(person, identities),
            "identity": identity.strip(),
            "identities": identities,
            "properties": _properties(con, product, hashes),
            "aliases": _aliases(con, product, identities, hashes, identity.strip()),
            "events": _events(con, product, hashes, page_number, size),
        }
    finally:
        con.rollback()


def _properties(con: Cursor, product: str, hashes: list[int]) -> list[dict[str, Any]]:
    condition, params = hashed_in("ih", hashes, indexed=False)
    rows = con.execute(
        """
        WITH found AS MATERIALIZED (
            SELECT rowid AS r FROM property_values WHERE product = ? AND {condition}
        ), v AS (
            -- Rows by rowid: DuckDB reads the wide columns of these rows only.
            SELECT * FROM property_values WHERE rowid IN (SELECT r FROM found)
        )
        SELECT v.key, coalesce(n.display, v.key),
               arg_max(v.value, (v.time, v.recv_ns, v.stream, v.position)),
               arg_min(v.value, (v.time, v.recv_ns, v.stream, v.position)),
               min(v.time), max(v.time), count(*),
               list({'value': v.value, 'time': v.time, 'identity': v.identity}
                    ORDER BY v.time DESC, v.recv_ns DESC, v.stream DESC, v.position DESC)
        FROM v LEFT JOIN names n ON n.product = v.product AND n.kind = 'property' AND n.key = v.key
        GROUP BY v.key, n.display ORDER BY coalesce(n.display, v.key)
        """.replace("{condition}", condition),
        [product, *params],
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


def _unaliased(con: Cursor, product: str, identities: list[str]) -> bool:
    """Whether no alias, revoked or not, names this one-identity person: then
    its page need not read the aliases. Every identity an alias names is in
    ``identities`` (capped ones too) unless revoked, and revocations are few."""
    if len(identities) != 1:
        return False
    row = con.execute(
        f"SELECT EXISTS (SELECT 1 FROM identities WHERE product = ? AND ih = {HASHED} "
        "AND identity = ?) OR EXISTS (SELECT 1 FROM revocations WHERE product = ? "
        "AND (a = ? OR b = ?))",
        [product, identities[0], identities[0], product, identities[0], identities[0]],
    ).fetchone()
    return row == (False,)


def _aliases(
    con: Cursor,
    product: str,
    identities: list[str],
    hashes: list[int],
    asked: str,
) -> dict[str, Any]:
    rows: list[Any] = []
    if not _unaliased(con, product, identities):
        of_a, _ = hashed_in("ah", hashes)
        of_b, _ = hashed_in("bh", hashes)
        # Each end by its hash (indexed); then exactly, by its text.
        columns = "a, b, time, recv_ns, stream, position, status"
        found = con.execute(
            f"SELECT {columns} FROM aliases WHERE product = ? AND {of_a} UNION "
            f"SELECT {columns} FROM aliases WHERE product = ? AND {of_b} "
            "ORDER BY recv_ns, stream, position",
            [product, *hashes, product, *hashes],
        ).fetchall()
        mine = set(identities)
        rows = [row for row in found if row[0] in mine or row[1] in mine]
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


def _events(con: Cursor, product: str, hashes: list[int], page: int, size: int) -> dict[str, Any]:
    condition, params = hashed_in("ih", hashes, indexed=False)
    # The person's events by a scan of the narrow columns (events has no index
    # on ``ih``: docs/store.md): their count, and the page's row ids.
    total, keys = con.execute(
        """
        WITH found AS MATERIALIZED (
            SELECT time, recv_ns, stream, position, rowid AS r FROM events
            WHERE product = ? AND {condition}
        )
        SELECT (SELECT count(*) FROM found), list(r)
        FROM (SELECT * FROM found ORDER BY time DESC, recv_ns DESC, stream DESC, position DESC
              LIMIT ? OFFSET ?)
        """.replace("{condition}", condition),
        [product, *params, size, (page - 1) * size],
    ).fetchone() or (0, [])
    rows: list[Any] = []
    if keys:
        # Then the page's rows whole, by row id (in the same snapshot): DuckDB
        # reads the wide columns of those rows only.
        found = con.execute(
            "SELECT event, identity, time, recv_ns, map_entries(properties), stream, position "
            "FROM events WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
            [keys],
        ).fetchall()
        rows = sorted(found, key=lambda r: (r[2], r[3], r[5], r[6]), reverse=True)
    events = dict(
        con.execute(
            "SELECT key, display FROM names WHERE product = ? AND kind = 'event'", [product]
        ).fetchall()
    )
    names = property_names(con, product)
    return {
        "total": total,
        "page": page,
        "page_size": size,
        "items": [
            {
                "event": events.get(key, key),
                "key": key,
                "identity": identity,
                "time": iso(time),
                "received": iso_ns(recv_ns),
                "properties": {names.get(p["key"], p["key"]): p["value"] for p in props},
            }
            for key, identity, time, recv_ns, props, _, _ in rows
        ],
    }
