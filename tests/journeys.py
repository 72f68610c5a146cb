"""Declarative log entries for store tests, and a comparable snapshot of a store.

Like PostHog's ``journeys_for``: a test writes what clients sent, as rows
``(stream, path, params, recv_s[, ns])``, and :func:`build` turns them into the
:class:`Entry` objects the processor would read from the log, with positions
increasing per stream (each entry as long as its real frame) and the receive
time ``recv_s`` seconds plus ``ns`` nanoseconds.

``params`` is a dict or a list of pairs (form-urlencoded in that order; a list
can repeat a name), or the raw query as ``str``/``bytes``. A row on the
``/alias/revoke`` path is an operator record (SPEC §5), as
:func:`tally.operations.revocation_record` makes it.

The helpers :func:`event`, :func:`sets`, :func:`alias` and :func:`revoke` write
the usual rows. :func:`snapshot` reads every table of a store, sorted, so that
two stores fed the same records in different orders can be compared with ``==``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tally.beacon import UNKNOWN_KEY, KeyStatus
from tally.log.reader import Entry
from tally.log.record import Record, encode_record
from tally.operations import REVOKE_ALIAS_PATH
from tally.store.store import Store
from tally.views.common import KNOWN_IDENTITIES

#: The API key of the product ``acme`` in every test, unless told otherwise.
KEY = "0123456789abcdef0123456789abcdef01234567"
PRODUCT = "acme"
#: A receive second (2023-11-14T22:13:20Z); rows say ``T0 + n``.
T0 = 1_700_000_000

Params = Mapping[str, str] | Sequence[tuple[str, str]] | str | bytes
Row = tuple[Any, ...]  # (stream, path, params, recv_s) or (stream, path, params, recv_s, ns)


# -- API keys -----------------------------------------------------------------------------


@dataclass
class Keys:
    """A mutable key table, usable as the ``keys`` callable of ``Store.apply``.

    ``revoked_ns`` as the processor's catalog: a revoked key still names its
    product, and rejects only records received at or after its revocation.
    """

    table: dict[str, tuple[str, int | None]] = field(default_factory=lambda: {KEY: (PRODUCT, None)})

    def add(self, key: str, product: str = PRODUCT) -> None:
        self.table[key] = (product, None)

    def revoke(self, key: str, at_ns: int) -> None:
        self.table[key] = (self.table[key][0], at_ns)

    def __call__(self, key: str, recv_ns: int) -> KeyStatus:
        found = self.table.get(key)
        if found is None:
            return UNKNOWN_KEY
        product, revoked_ns = found
        return KeyStatus(product, revoked=revoked_ns is not None and recv_ns >= revoked_ns)


def keys(key: str, recv_ns: int) -> KeyStatus:
    """The fixed key table: ``KEY`` is ``acme``'s, every other key is unknown."""
    return KeyStatus(PRODUCT) if key == KEY else UNKNOWN_KEY


# -- building entries ---------------------------------------------------------------------


def _query(params: Params) -> bytes:
    if isinstance(params, bytes):
        return params
    if isinstance(params, str):
        return params.encode()
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    return urlencode(pairs).encode()


def record(path: str, params: Params, recv_s: int, ns: int = 0, *, method: str = "") -> Record:
    if not method:
        method = "OPERATOR" if path == REVOKE_ALIAS_PATH else "GET"
    return Record(method, path, _query(params), b"", recv_s * 1_000_000_000 + ns)


class Log:
    """Streams that grow as rows are added: positions continue across calls."""

    def __init__(self) -> None:
        self.ends: dict[str, int] = {}

    def entry(self, stream: str, rec: Record) -> Entry:
        position = self.ends.get(stream, 0)
        after = position + len(encode_record(rec))
        self.ends[stream] = after
        return Entry(stream, position, after, rec)

    def entries(self, rows: Iterable[Row]) -> list[Entry]:
        out = []
        for row in rows:
            stream, path, params, recv_s, *rest = row
            out.append(self.entry(stream, record(path, params, recv_s, *rest)))
        return out


def build(rows: Iterable[Row]) -> list[Entry]:
    """Entries for ``rows``, in the order given (positions increase per stream)."""
    return Log().entries(rows)


def total_order(entries: Iterable[Entry]) -> list[Entry]:
    """SPEC §11: receive time (ns), then stream, then position."""
    return sorted(entries, key=lambda e: (e.record.recv_ns, e.stream, e.position))


# -- rows ---------------------------------------------------------------------------------


def _tracking(
    path: str,
    person: str | None,
    name: str | None,
    at: int,
    *,
    stream: str,
    ns: int,
    t: int | str | None,
    d: bool,
    key: str | None,
    props: Mapping[str, str],
) -> Row:
    params: dict[str, str] = {}
    if key is not None:
        params["_k"] = key
    if person is not None:
        params["_p"] = person
    if name is not None:
        params["_n"] = name
    if t is not None:
        params["_t"] = str(t)
    if d:
        params["_d"] = "1"
    params.update(props)
    return (stream, path, params, at, ns)


def event(
    person: str | None,
    name: str | None,
    at: int,
    props: Mapping[str, str] | None = None,
    *,
    stream: str = "c0",
    ns: int = 0,
    t: int | str | None = None,
    d: bool = False,
    key: str | None = KEY,
) -> Row:
    """``/e``: ``person`` did ``name``, received at second ``at`` (+ ``ns``)."""
    return _tracking(
        "/e", person, name, at, stream=stream, ns=ns, t=t, d=d, key=key, props=props or {}
    )


def sets(
    person: str | None,
    at: int,
    props: Mapping[str, str] | None = None,
    *,
    stream: str = "c0",
    ns: int = 0,
    t: int | str | None = None,
    d: bool = False,
    key: str | None = KEY,
) -> Row:
    """``/s``: set ``props`` on ``person``."""
    return _tracking(
        "/s", person, None, at, stream=stream, ns=ns, t=t, d=d, key=key, props=props or {}
    )


def alias(
    person: str | None,
    other: str | None,
    at: int,
    *,
    stream: str = "c0",
    ns: int = 0,
    t: int | str | None = None,
    key: str | None = KEY,
) -> Row:
    """``/a``: ``person`` and ``other`` are one person."""
    return _tracking("/a", person, other, at, stream=stream, ns=ns, t=t, d=False, key=key, props={})


def revoke(a: str, b: str, at: int, *, ns: int = 0, product: str = PRODUCT) -> Row:
    """An operator's revocation of the alias ``a``~``b``, on the operator stream."""
    return ("op", REVOKE_ALIAS_PATH, {"product": product, "a": a, "b": b}, at, ns)


# -- reading a store ----------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A MAP (a dict in Python) as its sorted items, so rows compare and sort."""
    if isinstance(value, dict):
        return sorted(value.items())
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((0, "") if v is None else (1, v) for v in row)


def rows(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The result of ``sql``, MAPs as sorted item lists, rows sorted (NULL first)."""
    result = [tuple(plain(v) for v in row) for row in store.con.execute(sql, params).fetchall()]
    return sorted(result, key=_sort_key)


def tables(store: Store) -> list[str]:
    return [
        name
        for (name,) in store.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1"
        ).fetchall()
    ]


#: The tables whose rows store a person (``ph``) as it was when they were written.
PERSONS_STORED = ("events", "property_values")


def content(name: str) -> str:
    """SQL for a table's content: a stored person as the person it stands for
    now, ``coalesce(moved.ph, ph)`` (store/schema.py); which of the two holds
    it depends on the order records arrived in and when ``moved`` was folded,
    as where a sorted block begins does, and is not content. Nor is which
    number a person has (schema 5, ``persons``): in its place, whether the
    row's number, ``coalesce(moved.pn, pn)``, is its person's in ``persons``
    (always true), and of ``persons``, whether its numbers are 0 to n - 1,
    one for each hash."""
    if name == "persons":
        return (
            "SELECT count(*) = count(DISTINCT pn) AND count(*) = count(DISTINCT ph) "
            "AND coalesce(max(pn) + 1, 0) = count(*) FROM persons"
        )
    if name not in PERSONS_STORED:
        return f'SELECT * FROM "{name}"'
    return (
        f"SELECT t.* REPLACE (coalesce(m.ph, t.ph) AS ph, coalesce(m.pn, t.pn) IS NOT DISTINCT "
        "FROM (SELECT p.pn FROM persons p WHERE p.ph = coalesce(m.ph, t.ph)) AS pn) "
        f'FROM "{name}" t LEFT JOIN moved m ON m.product = t.product AND m.ih = t.ih'
    )


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted: events, property values, aliases with their
    status, identities, known identities, names, rejects, revocations, counters,
    de-duplication keys, positions, meta; ``moved`` is in the persons of the
    rows of events and property values (:func:`content`)."""
    return {name: rows(store, content(name)) for name in tables(store) if name != "moved"}


PEOPLE_SQL = f"""
    SELECT k.product, k.identity, coalesce(i.person, k.identity) AS person
    FROM ({KNOWN_IDENTITIES}) k LEFT JOIN identities i USING (product, identity)
"""

CURRENT_SQL = """
    SELECT v.product, coalesce(i.person, v.identity) AS person, v.key,
           arg_max(v.value, (v.time, v.recv_ns, v.stream, v.position))
    FROM property_values v LEFT JOIN identities i USING (product, identity)
    GROUP BY ALL
"""

COUNTS_SQL = """
    SELECT e.product, coalesce(i.person, e.identity) AS person, e.event, count(*)
    FROM events e LEFT JOIN identities i USING (product, identity)
    GROUP BY ALL
"""


def people(store: Store) -> list[tuple[Any, ...]]:
    """(product, identity, person) for every identity an applied record names."""
    return rows(store, PEOPLE_SQL)


def current(store: Store) -> list[tuple[Any, ...]]:
    """(product, person, property key, current value) — SPEC §6."""
    return rows(store, CURRENT_SQL)


def counts(store: Store) -> list[tuple[Any, ...]]:
    """(product, person, event key, times) for every event."""
    return rows(store, COUNTS_SQL)
