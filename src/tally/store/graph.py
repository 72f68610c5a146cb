"""Keeping the identity tables in step with the alias graph (SPEC §5).

When aliases arrive, are replaced by an earlier duplicate, or are revoked, the
groups they touch are re-derived as a whole by :func:`identity_graph.derive`,
from every edge and revocation stored for them, so the result does not depend
on which of them the processor read first.

The look-ups find the stored rows of those groups without comparing text
across whole tables, so that their cost does not grow with ``identities`` and
``aliases`` (issue 12): a seed's row by its hash (``ih``), an edge by the
hashes of its ends (``ah``, ``bh``), the text compared only on the rows the
hashes matched, so that two identities sharing a hash (schema.py gives the
odds) never bring in a group that is not theirs. The rows found are deleted
by row id, not looked up a second time.

Every identity whose person the re-derivation changes, and that rows may
already carry (a known identity: its events and property values), gets its
new person in ``moved``: the rows keep the person they were written with
until the store folds ``moved`` into them (schema.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import duckdb

from tally import identity_graph
from tally.identity_graph import Edge
from tally.store.rows import HASH, INT, NUMBER, TEXT, Rows, insert, orders, registered, reject_rows
from tally.store.schema import IDENTITY_HASH

#: The distinct hashes of the identities of a registered view (its ``identity``).
_HASHES = f"SELECT DISTINCT {IDENTITY_HASH.format('identity')} AS h FROM {{}}"


def _texts(values: set[str]) -> Rows:
    rows = Rows(identity=TEXT)
    for value in sorted(values):
        rows.append(value)
    return rows


def _delete(con: duckdb.DuckDBPyConnection, table: str, rowids: list[int]) -> None:
    """Delete rows of ``table`` by the row ids a look-up of this transaction found."""
    if rowids:
        rows = Rows(r=INT)
        for rowid in rowids:
            rows.append(rowid)
        with registered(con, "_rowids", rows):
            con.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT r FROM _rowids)")


def _groups(
    con: duckdb.DuckDBPyConnection, product: str, seeds: set[str]
) -> list[tuple[int, str, str, str]]:
    """The rows in ``identities`` of the groups of ``seeds`` (``grp``), as
    (row id, identity, person, group)."""
    with registered(con, "_seeds", _texts(seeds)):
        found = con.execute(
            "SELECT identity, grp FROM identities "
            f"WHERE product = ? AND ih IN ({_HASHES.format('_seeds')})",
            [product],
        ).fetchall()
    groups = {grp for identity, grp in found if identity in seeds}  # the text confirms
    if not groups:
        return []
    with registered(con, "_groups", _texts(groups)):
        return con.execute(
            "SELECT rowid, identity, person, grp FROM identities "
            "WHERE product = ? AND grp IN (SELECT identity FROM _groups)",
            [product],
        ).fetchall()


def _edges(
    con: duckdb.DuckDBPyConnection, product: str, members: set[str]
) -> tuple[
    list[tuple[int, str, str, int, int, str, int, str]], list[tuple[str, str, int, str, int]]
]:
    """The rows in ``aliases`` touching ``members``, as (row id, a, b, time,
    recv_ns, stream, position, status), and the revocations touching them."""
    hashes = _HASHES.format("_members")
    with registered(con, "_members", _texts(members)):
        found = con.execute(
            "SELECT rowid, a, b, time, recv_ns, stream, position, status FROM aliases "
            f"WHERE product = ? AND (ah IN ({hashes}) OR bh IN ({hashes}))",
            [product],
        ).fetchall()
        # Revocations are the operator's few: no hashes, read by their text.
        revocations = con.execute(
            "SELECT a, b, recv_ns, stream, position FROM revocations WHERE product = ? AND "
            "(a IN (SELECT identity FROM _members) OR b IN (SELECT identity FROM _members))",
            [product],
        ).fetchall()
    return [row for row in found if row[1] in members or row[2] in members], revocations


#: The number of each person hash, numbering new ones (Store._numbers, schema.py).
Numbers = Callable[[Sequence[int]], list[int]]


def rederive(
    con: duckdb.DuckDBPyConnection, product: str, seeds: set[str], cap: int, numbers: Numbers
) -> int:
    """Re-derive the groups of ``seeds``; how many edges the cap rejects.

    Only the rows that the derivation changes are deleted and written again:
    an edge whose status changed, an identity whose person or group did (the
    rest stay as they are, so that the indexes on their hashes, and the
    checkpoints that write those out, see only what changed)."""
    stored = _groups(con, product, seeds)
    members = seeds | {identity for _, identity, _, _ in stored}
    before = {identity: person for _, identity, person, _ in stored}  # for moved (_move)
    edge_rows, revocation_rows = _edges(con, product, members)
    edges = [Edge(a, b, (r, s, p)) for _, a, b, _, r, s, p, _ in edge_rows]
    revocations = [Edge(a, b, (r, s, p)) for a, b, r, s, p in revocation_rows]
    derived = identity_graph.derive(edges, revocations, cap)

    aliases = Rows(
        product=TEXT, a=TEXT, b=TEXT, time=INT, recv_ns=INT, stream=TEXT, position=INT, status=TEXT
    )
    stale: list[int] = []
    for rowid, a, b, time, recv_ns, stream, position, status in edge_rows:
        now = derived.status[(recv_ns, stream, position)]
        if now != status:
            stale.append(rowid)
            aliases.append(product, a, b, time, recv_ns, stream, position, now)
    _delete(con, "aliases", stale)
    insert(con, "aliases", aliases, hashes={"ah": "a", "bh": "b"})

    identities = Rows(product=TEXT, identity=TEXT, person=TEXT, grp=TEXT)
    was: dict[str, list[tuple[int, str, str]]] = {}
    for rowid, identity, person, grp in stored:
        was.setdefault(identity, []).append((rowid, person, grp))
    stale = []
    everyone = members | {e.a for e in edges} | {e.b for e in edges}
    for identity in sorted(i for i in everyone if i in derived.group):
        person, grp = derived.person.get(identity, identity), derived.group[identity]
        rows = was.pop(identity, [])
        if [(p, g) for _, p, g in rows] != [(person, grp)]:
            stale.extend(rowid for rowid, _, _ in rows)
            identities.append(product, identity, person, grp)
    stale.extend(rowid for rows in was.values() for rowid, _, _ in rows)  # in no group now
    _delete(con, "identities", stale)
    insert(con, "identities", identities, hashes={"ih": "identity", "ph": "person"})
    _move(con, product, everyone, before, derived, numbers)

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
    numbers: Numbers,
) -> None:
    """Give ``moved`` the new person of every known identity whose person
    changed (an identity outside ``identities`` is its own person), with
    the person's number (schema.py)."""
    changed = Rows(identity=TEXT, person=TEXT)
    for identity in sorted(everyone):
        person = derived.person.get(identity, identity) if identity in derived.group else identity
        if person != before.get(identity, identity):
            changed.append(identity, person)
    if not len(changed):
        return
    # Known by the hash alone: the narrow ``ih`` column is scanned, never the
    # text of every known identity (its cost grew with them, issue 12). An
    # identity that is not known but has a known one's hash is one person with
    # it in reports already (schema.py gives the odds); no row carries it but
    # the other's.
    with registered(con, "_changed", changed):
        found = con.execute(
            f"SELECT c.ih, c.ph FROM (SELECT {IDENTITY_HASH.format('identity')} AS ih, "
            f"{IDENTITY_HASH.format('person')} AS ph FROM _changed) c "
            "WHERE c.ih IN (SELECT ih FROM known_identities WHERE product = ?)",
            [product],
        ).fetchall()
    rows = Rows(product=TEXT, ih=HASH, ph=HASH, pn=NUMBER)
    for (ih, ph), pn in zip(found, numbers([ph for _, ph in found]), strict=True):
        rows.append(product, ih, ph, pn)
    insert(con, "moved", rows, "ON CONFLICT DO UPDATE SET ph = EXCLUDED.ph, pn = EXCLUDED.pn")
