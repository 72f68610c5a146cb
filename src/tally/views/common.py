"""Small pieces every view needs: paging, times, resolving a person."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field

from tally.errors import InvalidInput, NotFound
from tally.store.contract import Cursor
from tally.store.schema import IDENTITY_HASH
from tally.validation import Params, validated

MAX_PAGE_SIZE = 1000
MAX_PAGE = 10**9

#: Every identity an applied record names: the ``_p`` of events and property
#: sets, and both ends of aliases that the cap did not reject.
KNOWN_IDENTITIES = (
    "SELECT product, identity FROM known_identities "
    "UNION SELECT product, a FROM aliases WHERE status <> 'alias_cap' "
    "UNION SELECT product, b FROM aliases WHERE status <> 'alias_cap'"
)


def known_identities_hashed(hashes: str) -> str:
    """``ih, identity``, once each, of the known identities (as
    ``KNOWN_IDENTITIES``) of one product (a ``?`` in each of the three parts)
    whose hash (schema.IDENTITY_HASH) is one of the subquery ``hashes``.

    The hashes narrow each table before anything is combined: a UNION of the
    three whole tables, to join a page of people with, cost the people search
    a third of its time on ten million events (docs/benchmarks.md). (An
    identity known from a record and from an alias comes twice: its hash is
    one, so is its text.)"""
    return (
        "SELECT ih, min(identity) AS identity FROM ("
        f"SELECT ih, identity FROM known_identities WHERE product = ? AND ih IN ({hashes}) "
        f"UNION ALL SELECT ah, a FROM aliases WHERE product = ? AND ah IN ({hashes}) "
        "AND status <> 'alias_cap' "
        f"UNION ALL SELECT bh, b FROM aliases WHERE product = ? AND bh IN ({hashes}) "
        "AND status <> 'alias_cap') GROUP BY ih"
    )


def identity_hashes(con: Cursor, identities: list[str]) -> list[int]:
    """The hashes (schema.py) of ``identities``, as the store keeps them."""
    row = con.execute(
        f"SELECT list({IDENTITY_HASH.format('x')}) FROM unnest(?::VARCHAR[]) t(x)", [identities]
    ).fetchone()
    return list(row[0]) if row and row[0] else []


def hashed_in(column: str, hashes: list[int], *, indexed: bool = True) -> tuple[str, list[Any]]:
    """A condition that ``column`` is one of ``hashes``, and its parameters.

    The hashes go in as constants, which DuckDB tests in the scan itself (or by
    an index), so that ten million rows narrow to a few by comparing integers
    (comparing the identity text too would read every string of the vectors
    they are in: 15 times slower). The hash is exact while no two identities
    of a product share one, which the processor checks as it stores them."""
    if indexed or len(hashes) < 2:
        marks = ", ".join("?::UBIGINT" for _ in hashes) or "NULL"
        return f"{column} IN ({marks})", hashes
    # A column without an index (events, property values) is scanned: not
    # `IN (?, ?)`, which DuckDB makes an OR it tests after the scan (26 ms for
    # two hashes on ten million events, against 14 ms for ANY, 7 for one).
    return f"{column} = ANY(?::UBIGINT[])", [hashes]


def iso(seconds: int | float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def iso_ns(ns: int) -> str:
    return (
        datetime.fromtimestamp(ns / 1e9, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Page(Params):
    """Which page of a list: the API's query parameters, the CLI's options."""

    page: Annotated[int, Field(ge=1, le=MAX_PAGE, description="From 1.")] = 1
    page_size: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 50


def paging(page: Any, page_size: Any) -> tuple[int, int]:
    given = {"page": page, "page_size": page_size}
    checked = validated(Page, {k: v for k, v in given.items() if v not in (None, "")})
    return checked.page, checked.page_size


def resolve_person(con: Cursor, product: str, identity: str) -> str:
    """The person an identity belongs to; 404 for identities that no applied
    record names (SPEC §11: one seen only in rejected records is unknown)."""
    identity = identity.strip()
    # By hash first (indexed, schema.py), the text then makes it exact; the
    # aliases are read only for an identity that no event or property names.
    # Materialised: tested in the scan with the hash, the product and the
    # text made DuckDB scan the whole table (8 ms on 1.2M known identities,
    # against 0.6 by the index: docs/benchmarks.md, people12).
    hashed = IDENTITY_HASH.format("?::VARCHAR")
    row = con.execute(
        "WITH k AS MATERIALIZED (SELECT product, identity FROM known_identities "
        f"WHERE ih = {hashed}), i AS MATERIALIZED (SELECT product, identity, person "
        f"FROM identities WHERE ih = {hashed}) "
        "SELECT EXISTS (SELECT 1 FROM k WHERE product = ? AND identity = ?), "
        "(SELECT person FROM i WHERE product = ? AND identity = ?)",
        [identity, identity, product, identity, product, identity],
    ).fetchone()
    known, person = row if row else (False, None)
    if not known:
        known = con.execute(
            "SELECT EXISTS (SELECT 1 FROM aliases WHERE product = ? "
            "AND status <> 'alias_cap' AND (a = ? OR b = ?))",
            [product, identity, identity],
        ).fetchone() == (True,)
    if not known:
        raise NotFound(f"no person with identity {identity!r} in {product!r}", field="identity")
    return str(person or identity)


@dataclass(frozen=True)
class Person:
    """One person as a page shows it: ``person``, its ``identities`` in order
    with their ``hashes`` (schema.IDENTITY_HASH), ``ph``, the hash of the
    person (what ``events.ph`` holds for it, docs/store.md), and ``moved``, the
    hashes of its identities that are in ``moved`` (their rows' ``ph`` may be
    stale). ``unaliased``: no alias row names it (it is not in
    ``identities``) and no revocation does; ``names``: the product's display
    names, ``(kind, key)`` -> display (SPEC §2)."""

    person: str
    identities: list[str]
    hashes: dict[str, int]
    ph: int
    moved: list[int]
    unaliased: bool
    names: dict[tuple[str, str], str]


def find_person(con: Cursor, product: str, identity: str) -> Person:
    """The person of ``identity`` (as :func:`resolve_person`, 404 for an
    unknown one) with its identities, in two statements."""
    person = resolve_person(con, product, identity)
    hashed = IDENTITY_HASH.format("?::VARCHAR")
    row = con.execute(
        # By the person's hash (indexed) first; product and text then make it
        # exact on the few rows found (testing them in the same scan as the
        # hash made DuckDB scan the table: docs/benchmarks.md, people12).
        f"WITH g AS MATERIALIZED (SELECT product, identity, person, ih FROM identities "
        f"WHERE ph = {hashed}) "
        "SELECT (SELECT list((identity, ih) ORDER BY identity) FROM g "
        f"WHERE product = ? AND person = ?), {hashed}, "
        f"(SELECT list(ih ORDER BY ih) FROM moved WHERE product = ? AND ph = {hashed}), "
        "EXISTS (SELECT 1 FROM revocations WHERE product = ? AND (a = ? OR b = ?)), "
        "(SELECT list((kind, key, display)) FROM names WHERE product = ?)",
        [person, product, person, person, product, person, product, person, person, product],
    ).fetchone()
    assert row is not None
    members, ph, moved, revoked, names = row
    if members:
        identities = [m[0] for m in members]
        hashes = {m[0]: int(m[1]) for m in members}
    else:  # outside the alias graph: the person is its one identity
        identities, hashes = [person], {person: int(ph)}
    return Person(
        person=person,
        identities=identities,
        hashes=hashes,
        ph=int(ph),
        moved=list(moved or []),
        unaliased=not members and not revoked,
        names={(n[0], n[1]): n[2] for n in names or []},
    )


def identities_of(con: Cursor, product: str, person: str) -> list[str]:
    rows = con.execute(
        "SELECT identity FROM identities WHERE product = ? AND ph = "
        f"{IDENTITY_HASH.format('?::VARCHAR')} AND person = ? ORDER BY identity",
        [product, person, person],
    ).fetchall()
    return [r[0] for r in rows] or [person]


def parse_time(value: Any, field: str) -> int | None:
    """Unix seconds from an ISO date/timestamp (UTC unless it says otherwise) or a number."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        return int(float(text))
    except OverflowError as exc:
        raise InvalidInput(f"{field} is out of range: {text!r}", field=field) from exc
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(
            f"{field} is not an ISO date or timestamp: {text!r}", field=field
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
