"""One person (SPEC §9 "Person"): identities, properties, why, and events."""

from __future__ import annotations

from typing import Any

from tally import identity_graph
from tally.display import display_name
from tally.identity_graph import Edge
from tally.reports.sql import DIALECT
from tally.store.contract import Cursor
from tally.views.common import Person, find_person, hashed_in, iso, iso_ns, paging

HISTORY_LIMIT = 100


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
        found = find_person(con, product, identity)
        identities = found.identities
        return {
            "product": product,
            "person": found.person,
            "display": display_name(found.person, identities),
            "identity": identity.strip(),
            "identities": identities,
            "properties": _properties(con, product, found),
            "aliases": _aliases(con, product, found, identity.strip()),
            "events": _events(con, product, found, page_number, size),
        }
    finally:
        con.rollback()


def _theirs(alias: str, found: Person) -> tuple[str, list[Any]]:
    """A condition that the rows of ``alias`` (events or property values) are
    the person's, and its parameters: the rows whose person (``moved``'s, else
    their own ``ph``: Dialect.person) is ``found``'s. Its ``ph`` is tested in
    the scan, one integer a row (testing ``ih`` against a list of its
    identities cost twice as long); the rows of its identities in ``moved``,
    whose ``ph`` may be stale, are read by ``ih`` too, and ``moved`` then
    drops the rows of identities moved away from it since they were written
    (SPEC §5: a late merge and a revoked alias show at once)."""
    wanted = f"{alias}.ph = ?::UBIGINT"
    params: list[Any] = [found.ph]
    if found.moved:
        wanted = f"({wanted} OR {alias}.ih = ANY(?::UBIGINT[]))"
        params.append(found.moved)
    return (
        f"{alias}.product = ? AND {wanted} AND {DIALECT.person(alias)} = ?::UBIGINT",
        [*params, found.ph],
    )


def _properties(con: Cursor, product: str, found: Person) -> list[dict[str, Any]]:
    condition, params = _theirs("v", found)
    rows = con.execute(
        """
        WITH found AS MATERIALIZED (
            SELECT v.rowid AS r FROM property_values v{join} WHERE {condition}
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
        """.replace("{condition}", condition).replace("{join}", DIALECT.person_join("v")),
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


def _aliases(con: Cursor, product: str, found: Person, asked: str) -> dict[str, Any]:
    rows: list[Any] = []
    identities = found.identities
    # Not read for a one-identity person that no alias, revoked or not,
    # names: every identity an alias names is in ``identities`` (capped ones
    # too) unless revoked, and revocations are few.
    if not found.unaliased:
        hashes = [found.hashes[i] for i in identities]
        of_a, _ = hashed_in("ah", hashes)
        of_b, _ = hashed_in("bh", hashes)
        # Each end by its hash (indexed); then exactly, by its text.
        columns = "a, b, time, recv_ns, stream, position, status"
        found_rows = con.execute(
            f"SELECT {columns} FROM aliases WHERE product = ? AND {of_a} UNION "
            f"SELECT {columns} FROM aliases WHERE product = ? AND {of_b} "
            "ORDER BY recv_ns, stream, position",
            [product, *hashes, product, *hashes],
        ).fetchall()
        mine = set(identities)
        rows = [row for row in found_rows if row[0] in mine or row[1] in mine]
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


def _events(con: Cursor, product: str, found: Person, page: int, size: int) -> dict[str, Any]:
    condition, params = _theirs("e", found)
    # The person's events by a scan of the narrow columns (events has no index:
    # docs/store.md): their count, and the page's order keys and names.
    rows = con.execute(
        f"""
        WITH found AS MATERIALIZED (
            SELECT e.event, e.ih, e.time, e.recv_ns, e.stream, e.position, e.rowid AS r
            FROM events e{DIALECT.person_join("e")} WHERE {condition}
        )
        SELECT t.total, p.* FROM (SELECT count(*) AS total FROM found) t LEFT JOIN (
            SELECT * FROM found ORDER BY time DESC, recv_ns DESC, stream DESC, position DESC
            LIMIT ? OFFSET ?
        ) p ON true ORDER BY p.time DESC, p.recv_ns DESC, p.stream DESC, p.position DESC
        """,
        [product, *params, size, (page - 1) * size],
    ).fetchall()
    total = int(rows[0][0]) if rows else 0
    shown = [row[1:] for row in rows if row[1] is not None]
    properties: dict[int, Any] = {}
    if shown:
        # Then the page's properties, by row id (in the same snapshot): DuckDB
        # reads the wide column of those rows only. The identity as sent is
        # the one of the row's hash (no two of a product share one).
        properties = dict(
            con.execute(
                "SELECT rowid, map_entries(properties) FROM events WHERE rowid = ANY(?::BIGINT[])",
                [[row[-1] for row in shown]],
            ).fetchall()
        )
    identity_of = {h: i for i, h in found.hashes.items()}
    names = found.names
    return {
        "total": total,
        "page": page,
        "page_size": size,
        "items": [
            {
                "event": names.get(("event", key), key),
                "key": key,
                "identity": identity_of[ih],
                "time": iso(time),
                "received": iso_ns(recv_ns),
                "properties": {
                    names.get(("property", p["key"]), p["key"]): p["value"] for p in properties[r]
                },
            }
            for key, ih, time, recv_ns, _, _, r in shown
        ],
    }
