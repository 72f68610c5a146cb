"""Keeping the identity tables in step with the alias graph (SPEC §5).

When aliases arrive, are replaced by an earlier duplicate, or are revoked, the
groups they touch are re-derived as a whole by :func:`identity_graph.derive`,
from every edge and revocation stored for them, so the result does not depend
on which of them the processor read first.

Every identity whose person the re-derivation changes, and that rows may
already carry (a known identity: its events and property values), gets its
new person in ``moved``: the rows keep the person they were written with
until the store folds ``moved`` into them (schema.py).
"""

from __future__ import annotations

import json

import duckdb

from tally import identity_graph
from tally.identity_graph import Edge
from tally.store.rows import INT, TEXT, Rows, insert, orders, registered, reject_rows
from tally.store.schema import IDENTITY_HASH

_TOUCHING = "(a IN (SELECT identity FROM _members) OR b IN (SELECT identity FROM _members))"


def rederive(con: duckdb.DuckDBPyConnection, product: str, seeds: set[str], cap: int) -> int:
    """Re-derive the groups of ``seeds``; how many edges the cap rejects."""
    seed_rows = Rows(identity=TEXT)
    for seed in sorted(seeds):
        seed_rows.append(seed)
    with registered(con, "_seeds", seed_rows):
        members = seeds | {
            row[0]
            for row in con.execute(
                "SELECT identity FROM identities WHERE product = ? AND grp IN "
                "(SELECT grp FROM identities JOIN _seeds USING (identity) WHERE product = ?)",
                [product, product],
            ).fetchall()
        }
    member_rows = Rows(identity=TEXT)
    for member in sorted(members):
        member_rows.append(member)
    with registered(con, "_members", member_rows):
        edge_rows = con.execute(
            "SELECT a, b, time, recv_ns, stream, position FROM aliases "
            f"WHERE product = ? AND {_TOUCHING}",
            [product],
        ).fetchall()
        revocation_rows = con.execute(
            "SELECT a, b, recv_ns, stream, position FROM revocations "
            f"WHERE product = ? AND {_TOUCHING}",
            [product],
        ).fetchall()
        before = dict(
            con.execute(
                "SELECT identity, person FROM identities "
                "WHERE product = ? AND identity IN (SELECT identity FROM _members)",
                [product],
            ).fetchall()
        )
        for table in ("identities", "aliases"):
            column = (
                "identity IN (SELECT identity FROM _members)"
                if table == "identities"
                else _TOUCHING
            )
            con.execute(f"DELETE FROM {table} WHERE product = ? AND {column}", [product])
    edges = [Edge(a, b, (r, s, p)) for a, b, _, r, s, p in edge_rows]
    times = {(r, s, p): t for _, _, t, r, s, p in edge_rows}
    revocations = [Edge(a, b, (r, s, p)) for a, b, r, s, p in revocation_rows]
    derived = identity_graph.derive(edges, revocations, cap)

    aliases = Rows(
        product=TEXT, a=TEXT, b=TEXT, time=INT, recv_ns=INT, stream=TEXT, position=INT, status=TEXT
    )
    for edge in edges:
        recv_ns, stream, position = edge.order
        aliases.append(
            product,
            edge.a,
            edge.b,
            times[edge.order],
            recv_ns,
            stream,
            position,
            derived.status[edge.order],
        )
    insert(con, "aliases", aliases, hashes={"ah": "a", "bh": "b"})

    identities = Rows(product=TEXT, identity=TEXT, person=TEXT, grp=TEXT)
    everyone = members | {e.a for e in edges} | {e.b for e in edges}
    for identity in sorted(i for i in everyone if i in derived.group):
        identities.append(
            product, identity, derived.person.get(identity, identity), derived.group[identity]
        )
    insert(con, "identities", identities, hashes={"ih": "identity", "ph": "person"})
    _move(con, product, everyone, before, derived)

    # Capped edges are listed as rejects (SPEC §11 `alias_cap`), as derived now.
    with registered(con, "_edges", orders(e.order[1:] for e in edges)):
        con.execute(
            "DELETE FROM rejects WHERE reason = ? AND (stream, position) IN "
            "(SELECT stream, position FROM _edges)",
            [identity_graph.CAPPED],
        )
    capped = [e for e in edges if derived.status[e.order] == identity_graph.CAPPED]
    rejects = reject_rows()
    for edge in capped:
        recv_ns, stream, position = edge.order
        rejects.append(
            product,
            identity_graph.CAPPED,
            "/a",
            recv_ns,
            stream,
            position,
            json.dumps([["_p", edge.a], ["_n", edge.b]], ensure_ascii=False),
            f"would give a person more than {cap} identities",
        )
    insert(con, "rejects", rejects)
    return len(capped)


def _move(
    con: duckdb.DuckDBPyConnection,
    product: str,
    everyone: set[str],
    before: dict[str, str],
    derived: identity_graph.Derived,
) -> None:
    """Give ``moved`` the new person of every known identity whose person
    changed (an identity outside ``identities`` is its own person)."""
    changed = Rows(identity=TEXT, person=TEXT)
    for identity in sorted(everyone):
        person = derived.person.get(identity, identity) if identity in derived.group else identity
        if person != before.get(identity, identity):
            changed.append(identity, person)
    if not len(changed):
        return
    with registered(con, "_changed", changed):
        con.execute(
            f"INSERT INTO moved SELECT ?, {IDENTITY_HASH.format('c.identity')}, "
            f"{IDENTITY_HASH.format('c.person')} FROM _changed c JOIN known_identities k "
            "ON k.product = ? AND k.identity = c.identity "
            "ON CONFLICT DO UPDATE SET ph = EXCLUDED.ph",
            [product, product],
        )
