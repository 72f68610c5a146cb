"""The store, fed log entries (SPEC §2-§7, §11).

Each case of the tables names the SPEC section it checks: rows that clients
sent (see :mod:`journeys`), applied in one or more batches, then a query and
the rows it must return (sorted; MAPs as sorted item lists).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from journeys import (
    COUNTS_SQL,
    CURRENT_SQL,
    KEY,
    PEOPLE_SQL,
    PRODUCT,
    T0,
    Keys,
    Log,
    Row,
    alias,
    build,
    event,
    revoke,
    rows,
    sets,
    snapshot,
)
from tally.errors import NotFound
from tally.store.store import DEFAULT_CAP, Store
from tally.views.common import resolve_person
from tally.views.person import person_view
from tally.views.status import store_view

NEW_KEY = "f" * 40


def ns(seconds: int, nanos: int = 0) -> int:
    return seconds * 1_000_000_000 + nanos


def params(*pairs: tuple[str, str]) -> str:
    """A reject's ``params`` column: the decoded pairs, in request order."""
    return json.dumps([list(p) for p in pairs], ensure_ascii=False)


@dataclass
class Case:
    spec: str  # "§4 what it shows": the test id
    batches: list[list[Row]]
    sql: str
    expected: list[tuple[Any, ...]]
    cap: int = DEFAULT_CAP
    keys: Keys = field(default_factory=Keys)


def one(spec: str, batch: list[Row], sql: str, expected: list[tuple[Any, ...]], **kw: Any) -> Case:
    return Case(spec, [batch], sql, expected, **kw)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


def apply_batches(store: Store, case: Case) -> None:
    log = Log()
    for batch in case.batches:
        store.apply(log.entries(batch), case.keys, cap=case.cap)


def run(store: Store, case: Case) -> None:
    apply_batches(store, case)
    assert rows(store, case.sql) == sorted(case.expected, key=_none_first), case.spec


def _none_first(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((0, "") if v is None else (1, v) for v in row)


DUPLICATES = "(SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'duplicates')"
COUNTS = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM property_values)"
EVENTS = "SELECT identity, event, time, properties FROM events"
KEPT = f"SELECT identity, time, recv_ns, stream, {DUPLICATES} FROM events"
NAMES = "SELECT kind, key, display FROM names"
REJECTS = "SELECT product, reason, path, params FROM rejects"
ALIASES = "SELECT a, b, status FROM aliases"
IDENTITIES = "SELECT identity, person FROM identities"
PEOPLE = f"SELECT identity, person FROM ({PEOPLE_SQL})"
CURRENT = f"SELECT person, key, value FROM ({CURRENT_SQL}) AS c(product, person, key, value)"
MEMBERS_OF_A = "SELECT identity, NULL FROM identities WHERE person = 'a'"
PER_PERSON = f"SELECT person, event, n FROM ({COUNTS_SQL}) AS c(product, person, event, n)"

# -- §1, §6: events and properties ----------------------------------------------------------

EVENT_CASES = [
    one(
        "§6 /e stores the event with its properties (keys folded)",
        [event("bob", "Signed Up", T0, {"Plan": "pro", "Seats": "3"})],
        EVENTS,
        [("bob", "signed up", T0, [("plan", "pro"), ("seats", "3")])],
    ),
    one(
        "§6 /e sets its properties on the person at the event time",
        [event("bob", "Signed Up", T0 + 5, {"plan": "pro"}, t=T0 - 60, d=True)],
        "SELECT identity, key, value, time FROM property_values",
        [("bob", "plan", "pro", T0 - 60)],
    ),
    one(
        "§3 without _d the event time is the receive second",
        [event("bob", "Signed Up", T0 + 5, t=T0 - 60, ns=999_999_999)],
        EVENTS,
        [("bob", "signed up", T0 + 5, [])],
    ),
    one(
        "§11 _d=1 without _t: the event time is the receive time",
        [event("bob", "Signed Up", T0 + 5, d=True)],
        EVENTS,
        [("bob", "signed up", T0 + 5, [])],
    ),
    one(
        "§1 /e without _n is a /s",
        [("c0", "/e", {"_k": KEY, "_p": "bob", "plan": "pro"}, T0)],
        COUNTS,
        [(0, 1)],
    ),
    one(
        "§11 /e with an empty _n is a /s",
        [("c0", "/e", {"_k": KEY, "_p": "bob", "_n": "", "plan": "pro"}, T0)],
        COUNTS,
        [(0, 1)],
    ),
    one(
        "§11 /e whose _n becomes empty is a /s",
        [("c0", "/e", {"_k": KEY, "_p": "bob", "_n": " ,: ", "plan": "pro"}, T0)],
        COUNTS,
        [(0, 1)],
    ),
    one(
        "§11 /e without _n is a /s in de-duplication too",
        [
            ("c0", "/e", {"_k": KEY, "_p": "bob", "_t": str(T0), "plan": "pro"}, T0),
            sets("bob", T0 + 5, {"plan": "pro"}, t=T0),
        ],
        f"SELECT count(*), {DUPLICATES} FROM property_values",
        [(1, 1)],
    ),
    one(
        "§2 identities are kept verbatim, trimmed",
        [event("  Bob Smith ", "Buy", T0)],
        "SELECT identity FROM events",
        [("Bob Smith",)],
    ),
    one(
        "§2 a 255-character identity is fine",
        [event("x" * 255, "Buy", T0)],
        "SELECT length(identity) FROM events",
        [(255,)],
    ),
]

# -- §2, §11: display names ---------------------------------------------------------------

NAME_CASES = [
    one(
        "§2 the display name is the first spelling (later one read first, same batch)",
        [
            event("bob", "signed up", T0 + 1, {"PLAN": "a"}),
            event("amy", "Signed Up", T0, {"Plan": "b"}),
        ],
        NAMES,
        [("event", "signed up", "Signed Up"), ("property", "plan", "Plan")],
    ),
    Case(
        "§2, §11 the display name is the first spelling (later one applied a batch before)",
        [
            [event("bob", "signed up", T0 + 5, {"PLAN": "a"}, stream="c1")],
            [event("amy", "Signed Up", T0 + 1, {"Plan": "b"}, stream="c0")],
        ],
        NAMES,
        [("event", "signed up", "Signed Up"), ("property", "plan", "Plan")],
    ),
    Case(
        "§2 the first spelling stays when a later one arrives",
        [
            [event("amy", "Signed Up", T0 + 1, {"Plan": "b"})],
            [event("bob", "SIGNED UP", T0 + 5, {"PLAN": "a"})],
        ],
        NAMES,
        [("event", "signed up", "Signed Up"), ("property", "plan", "Plan")],
    ),
    Case(
        "§11 same receive time: the stream decides the first spelling",
        [
            [event("bob", "SIGNED UP", T0, stream="c1")],
            [event("amy", "Signed Up", T0, stream="c0")],
        ],
        NAMES,
        [("event", "signed up", "Signed Up")],
    ),
    one(
        "§11 same receive time and stream: the position decides",
        [event("bob", "Signed Up", T0), event("amy", "SIGNED UP", T0)],
        NAMES,
        [("event", "signed up", "Signed Up")],
    ),
    one(
        "§2 ',' and ':' are spaces, white space collapses",
        [event("bob", " Signed,Up:  Now ", T0)],
        NAMES,
        [("event", "signed up now", "Signed Up Now")],
    ),
]

# -- §4: de-duplication --------------------------------------------------------------------

DEDUP_CASES = [
    one(
        "§4 an exact retry is absorbed and counted",
        [event("bob", "Buy", T0, {"x": "1"}, t=T0), event("bob", "Buy", T0 + 30, {"x": "1"}, t=T0)],
        KEPT,
        [("bob", T0, ns(T0), "c0", 1)],
    ),
    one(
        "§4 another property value is another record",
        [event("bob", "Buy", T0, {"x": "1"}, t=T0), event("bob", "Buy", T0 + 30, {"x": "2"}, t=T0)],
        KEPT,
        [("bob", T0, ns(T0), "c0", 0), ("bob", T0 + 30, ns(T0 + 30), "c0", 0)],
    ),
    one(
        "§4 one more property is another record",
        [event("bob", "Buy", T0, {"x": "1"}, t=T0), event("bob", "Buy", T0 + 30, t=T0)],
        f"SELECT count(*), {DUPLICATES} FROM events",
        [(2, 0)],
    ),
    one(
        "§4 the same call to another product is another record",
        [event("bob", "Buy", T0, t=T0), event("bob", "Buy", T0, t=T0, key=NEW_KEY)],
        f"SELECT product, {DUPLICATES} FROM events",
        [("acme", 0), ("globex", 0)],
        keys=Keys({KEY: (PRODUCT, None), NEW_KEY: ("globex", None)}),
    ),
    one(
        "§2, §4 identities are case-sensitive: Bob and bob are two records",
        [event("bob", "Buy", T0, t=T0), event("Bob", "Buy", T0, t=T0)],
        f"SELECT count(*), {DUPLICATES} FROM events",
        [(2, 0)],
    ),
    one(
        "§2, §4 event names are case-insensitive: Buy and buy are duplicates",
        [event("bob", "Buy", T0, t=T0), event("bob", "buy", T0 + 1, t=T0)],
        f"SELECT n.display, e.identity, e.time, e.recv_ns, e.stream, {DUPLICATES} "
        "FROM events e JOIN names n ON n.kind = 'event' AND n.key = e.event",
        [("Buy", "bob", T0, ns(T0), "c0", 1)],
    ),
    one(
        "§4 without _t the de-duplication time is the receive second: same second",
        [event("bob", "Buy", T0, ns=1), event("bob", "Buy", T0, ns=999_999_999)],
        KEPT,
        [("bob", T0, ns(T0, 1), "c0", 1)],
    ),
    one(
        "§4 without _t the de-duplication time is the receive second: next second",
        [event("bob", "Buy", T0, ns=999_999_999), event("bob", "Buy", T0 + 1)],
        f"SELECT count(*), {DUPLICATES} FROM events",
        [(2, 0)],
    ),
    one(
        "§4 the de-duplication time is the client _t (without _d): another _t, another record",
        [event("bob", "Buy", T0, t=T0 - 1), event("bob", "Buy", T0, t=T0 - 2)],
        f"SELECT count(*), {DUPLICATES} FROM events",
        [(2, 0)],
    ),
    one(
        "§3, §4 a _t in milliseconds is the same second",
        [event("bob", "Buy", T0, t=T0), event("bob", "Buy", T0 + 9, t=T0 * 1000 + 999)],
        KEPT,
        [("bob", T0, ns(T0), "c0", 1)],
    ),
    one(
        "§4 _t with _d=1: a retry is absorbed, the event time is _t",
        [
            event("bob", "Buy", T0, t=T0 - 100, d=True),
            event("bob", "Buy", T0 + 20, t=T0 - 100, d=True),
        ],
        KEPT,
        [("bob", T0 - 100, ns(T0), "c0", 1)],
    ),
    one(
        "§11 _d is not in the key: the earlier (without _d) is kept, with its time",
        [event("bob", "Buy", T0, t=T0 - 100), event("bob", "Buy", T0 + 20, t=T0 - 100, d=True)],
        KEPT,
        [("bob", T0, ns(T0), "c0", 1)],
    ),
    one(
        "§11 _d is not in the key: the earlier (with _d) is kept, with its time",
        [event("bob", "Buy", T0, t=T0 - 100, d=True), event("bob", "Buy", T0 + 20, t=T0 - 100)],
        KEPT,
        [("bob", T0 - 100, ns(T0), "c0", 1)],
    ),
    Case(
        "§4, §11 an earlier duplicate read in a later batch replaces the stored one",
        [
            [event("bob", "Buy", T0 + 20, t=T0 - 100, stream="c1")],
            [event("bob", "Buy", T0 + 2, t=T0 - 100, stream="c0")],
        ],
        KEPT,
        [("bob", T0 + 2, ns(T0 + 2), "c0", 1)],
    ),
    Case(
        "§4, §11 ... and its event time wins (the stored one had _d)",
        [
            [event("bob", "Buy", T0 + 20, t=T0 - 100, d=True, stream="c1")],
            [event("bob", "Buy", T0 + 2, t=T0 - 100, stream="c0")],
        ],
        KEPT,
        [("bob", T0 + 2, ns(T0 + 2), "c0", 1)],
    ),
    Case(
        "§4, §6 ... and so does the property value it set",
        [
            [event("bob", "Buy", T0 + 20, {"plan": "pro"}, t=T0 - 100, d=True, stream="c1")],
            [event("bob", "Buy", T0 + 2, {"plan": "pro"}, t=T0 - 100, stream="c0")],
        ],
        "SELECT identity, key, value, time, recv_ns, stream FROM property_values",
        [("bob", "plan", "pro", T0 + 2, ns(T0 + 2), "c0")],
    ),
    Case(
        "§4 a later duplicate read in a later batch is dropped",
        [
            [event("bob", "Buy", T0 + 2, t=T0 - 100, stream="c1")],
            [event("bob", "Buy", T0 + 20, t=T0 - 100, stream="c0")],
        ],
        KEPT,
        [("bob", T0 + 2, ns(T0 + 2), "c1", 1)],
    ),
    Case(
        "§4 three copies over three batches: one kept, two counted",
        [
            [event("bob", "Buy", T0 + 5, t=T0, stream="c1")],
            [event("bob", "Buy", T0 + 3, t=T0, stream="c2")],
            [event("bob", "Buy", T0 + 4, t=T0, stream="c0")],
        ],
        KEPT,
        [("bob", T0 + 3, ns(T0 + 3), "c2", 2)],
    ),
    one(
        "§4 duplicates within one batch: the earliest in the total order is kept",
        [
            event("bob", "Buy", T0 + 9, t=T0, stream="c0"),
            event("bob", "Buy", T0 + 3, t=T0, stream="c2"),
            event("bob", "Buy", T0 + 3, t=T0, stream="c1"),
            event("bob", "Buy", T0 + 7, t=T0, stream="c0"),
        ],
        KEPT,
        [("bob", T0 + 3, ns(T0 + 3), "c1", 3)],
    ),
    one(
        "§11 same receive time, same stream: the earlier position is kept",
        [event("bob", "Buy", T0, {"n": "1"}, t=T0), event("bob", "Buy", T0, {"n": "1"}, t=T0)],
        "SELECT position, " + DUPLICATES + " FROM events",
        [(0, 1)],
    ),
    one(
        "§4 a retried /s is absorbed",
        [sets("bob", T0, {"plan": "pro"}, t=T0), sets("bob", T0 + 60, {"plan": "pro"}, t=T0)],
        f"SELECT identity, recv_ns, {DUPLICATES} FROM property_values",
        [("bob", ns(T0), 1)],
    ),
    one(
        "§4 a retried /a is absorbed",
        [alias("bob", "anon", T0, t=T0), alias("bob", "anon", T0 + 60, t=T0)],
        f"SELECT a, b, recv_ns, {DUPLICATES} FROM aliases",
        [("bob", "anon", ns(T0), 1)],
    ),
]

# -- §7, §11: rejects ----------------------------------------------------------------------

REVOKED_AT = Keys({KEY: (PRODUCT, ns(T0 + 10))})

REJECT_CASES = [
    one(
        "§7 unknown key: listed with no product and its parameters",
        [event("bob", "Buy", T0, {"plan": "pro"}, key="nope")],
        REJECTS,
        [
            (
                None,
                "unknown_key",
                "/e",
                params(("_k", "nope"), ("_p", "bob"), ("_n", "Buy"), ("plan", "pro")),
            )
        ],
    ),
    one(
        "§7 missing key",
        [sets("bob", T0, {"plan": "pro"}, key=None)],
        REJECTS,
        [(None, "unknown_key", "/s", params(("_p", "bob"), ("plan", "pro")))],
    ),
    one(
        "§8, §11 revoked key: records received from its revocation on",
        [event("bob", "Before", T0 + 9, ns=999_999_999), event("bob", "At", T0 + 10)],
        REJECTS,
        [(PRODUCT, "revoked_key", "/e", params(("_k", KEY), ("_p", "bob"), ("_n", "At")))],
        keys=REVOKED_AT,
    ),
    one(
        "§8, §11 revoked key: records received before its revocation apply",
        [event("bob", "Before", T0 + 9, ns=999_999_999), event("bob", "At", T0 + 10)],
        "SELECT event FROM events",
        [("before",)],
        keys=REVOKED_AT,
    ),
    one(
        "§7 missing person",
        [event(None, "Buy", T0)],
        REJECTS,
        [(PRODUCT, "missing_person", "/e", params(("_k", KEY), ("_n", "Buy")))],
    ),
    one(
        "§2 blocked identity (case-insensitive, trimmed)",
        [event(" Undefined ", "Buy", T0)],
        REJECTS,
        [
            (
                PRODUCT,
                "blocked_identity",
                "/e",
                params(("_k", KEY), ("_p", " Undefined "), ("_n", "Buy")),
            )
        ],
    ),
    one(
        "§2 identity longer than 255 characters",
        [sets("x" * 256, T0, {"plan": "pro"})],
        "SELECT reason FROM rejects",
        [("identity_too_long",)],
    ),
    one(
        "§11 event name longer than 255 characters",
        [event("bob", "n" * 256, T0)],
        "SELECT reason FROM rejects",
        [("name_too_long",)],
    ),
    one(
        "§3 _d=1 with a _t before 2009",
        [event("bob", "Buy", T0, t=1_000_000_000, d=True)],
        "SELECT reason FROM rejects",
        [("bad_time",)],
    ),
    one(
        "§3 _d=1 with a _t more than 24 hours after the receive time",
        [event("bob", "Buy", T0, t=T0 + 86_401, d=True)],
        "SELECT reason FROM rejects",
        [("bad_time",)],
    ),
    one(
        "§11 _d=1 with a non-numeric _t",
        [event("bob", "Buy", T0, t="soon", d=True)],
        "SELECT reason FROM rejects",
        [("bad_time",)],
    ),
    one(
        "§11 a non-numeric _t without _d is ignored",
        [event("bob", "Buy", T0, t="soon")],
        "SELECT identity, time, (SELECT count(*) FROM rejects) FROM events",
        [("bob", T0, 0)],
    ),
    one(
        "§11 a record with several faults: the first (key before person)",
        [event("null", "Buy", T0, key="nope")],
        "SELECT reason FROM rejects",
        [("unknown_key",)],
    ),
    one(
        "§2, §11 an alias touching a blocked identity",
        [alias("bob", "NULL", T0)],
        "SELECT product, reason, path, (SELECT count(*) FROM identities) FROM rejects",
        [(PRODUCT, "blocked_identity", "/a", 0)],
    ),
    one(
        "§2 an alias whose _n is longer than 255 characters",
        [alias("bob", "x" * 256, T0)],
        "SELECT reason FROM rejects",
        [("identity_too_long",)],
    ),
    one(
        "§11 an alias without _n",
        [alias("bob", None, T0)],
        "SELECT reason FROM rejects",
        [("missing_alias_identity",)],
    ),
    one(
        "§11 a dropped property is listed with its applied record",
        [event("bob", "Buy", T0, {"plan": "pro", "big": "x" * 9000})],
        "SELECT product, reason, path, detail LIKE 'big%' FROM rejects",
        [(PRODUCT, "property_dropped", "/e", True)],
    ),
    one(
        "§11 ... and the record is applied without it",
        [event("bob", "Buy", T0, {"plan": "pro", "big": "x" * 9000, "n" * 256: "v"})],
        "SELECT properties, (SELECT count(*) FROM property_values) FROM events",
        [([("plan", "pro")], 1)],
    ),
    one(
        "§11 a retried copy of a rejected record is a duplicate, listed once",
        [
            event("bob", "Buy", T0, t=T0 - 5, key="nope"),
            event("bob", "Buy", T0 + 40, t=T0 - 5, key="nope"),
        ],
        f"SELECT reason, recv_ns, {DUPLICATES} FROM rejects",
        [("unknown_key", ns(T0), 1)],
    ),
    Case(
        "§11 ... also when the retry was read first, in an earlier batch",
        [
            [event("bob", "Buy", T0 + 40, t=T0 - 5, key="nope", stream="c1")],
            [event("bob", "Buy", T0, t=T0 - 5, key="nope", stream="c0")],
        ],
        f"SELECT reason, recv_ns, stream, {DUPLICATES} FROM rejects",
        [("unknown_key", ns(T0), "c0", 1)],
    ),
    one(
        "§4, §11 two different rejected calls are two rejects",
        [
            event("bob", "Buy", T0, {"x": "1"}, t=T0 - 5, key="nope"),
            event("bob", "Buy", T0, {"x": "2"}, t=T0 - 5, key="nope"),
        ],
        f"SELECT count(*), {DUPLICATES} FROM rejects",
        [(2, 0)],
    ),
]

# -- §6: the current value -----------------------------------------------------------------

CURRENT_CASES = [
    one(
        "§6 the current value has the latest event time, not the latest receive time",
        [
            sets("bob", T0, {"plan": "pro"}),
            sets("bob", T0 + 10, {"plan": "free"}, t=T0 - 3600, d=True),
        ],
        CURRENT,
        [("bob", "plan", "pro")],
    ),
    one(
        "§6 same event time: the later receive time",
        [sets("bob", T0 + 1, {"plan": "a"}, ns=5), sets("bob", T0 + 1, {"plan": "b"}, ns=3)],
        CURRENT,
        [("bob", "plan", "a")],
    ),
    one(
        "§6 same receive time: the later position",
        [sets("bob", T0 + 1, {"plan": "a"}), sets("bob", T0 + 1, {"plan": "b"})],
        CURRENT,
        [("bob", "plan", "b")],
    ),
    one(
        "§6 /e properties count as set at the event time",
        [event("bob", "Buy", T0 + 5, {"plan": "pro"}), sets("bob", T0 + 1, {"plan": "free"})],
        CURRENT,
        [("bob", "plan", "pro")],
    ),
    one(
        "§5, §6 the latest value across all identities of the person",
        [
            sets("bob", T0, {"plan": "free"}),
            sets("anon", T0 + 10, {"plan": "pro"}),
            sets("bob", T0 + 5, {"seats": "2"}),
            alias("anon", "bob", T0 + 20),
        ],
        CURRENT,
        [("anon", "plan", "pro"), ("anon", "seats", "2")],
    ),
    one(
        "§6 values are never overwritten: the history keeps all",
        [sets("bob", T0, {"plan": "free"}), sets("bob", T0 + 5, {"plan": "pro"})],
        "SELECT value, time FROM property_values",
        [("free", T0), ("pro", T0 + 5)],
    ),
]

# -- §5, §11: aliases, the cap, revocations --------------------------------------------------

ALIAS_CASES = [
    one(
        "§5 an alias joins two identities; the person is the smallest",
        [alias("bob", "anon-1", T0)],
        PEOPLE,
        [("anon-1", "anon-1"), ("bob", "anon-1")],
    ),
    one(
        "§5 symmetric: the argument order does not matter",
        [alias("anon-1", "bob", T0)],
        PEOPLE,
        [("anon-1", "anon-1"), ("bob", "anon-1")],
    ),
    one(
        "§5 idempotent: the same alias again changes nothing",
        [
            alias("bob", "anon-1", T0),
            alias("bob", "anon-1", T0 + 5),
            alias("anon-1", "bob", T0 + 9),
        ],
        IDENTITIES,
        [("anon-1", "anon-1"), ("bob", "anon-1")],
    ),
    one(
        "§5 idempotent: every copy is an accepted edge",
        [
            alias("bob", "anon-1", T0),
            alias("bob", "anon-1", T0 + 5),
            alias("anon-1", "bob", T0 + 9),
        ],
        ALIASES,
        [
            ("anon-1", "bob", "accepted"),
            ("bob", "anon-1", "accepted"),
            ("bob", "anon-1", "accepted"),
        ],
    ),
    one(
        "§5 transitive: A~B and A~C make B~C",
        [alias("cat", "bob", T0), alias("cat", "dan", T0 + 1)],
        PEOPLE,
        [("bob", "bob"), ("cat", "bob"), ("dan", "bob")],
    ),
    one(
        "§5 retroactive: events sent under an anonymous id before the alias",
        [
            event("visitor-9", "Viewed", T0),
            event("visitor-9", "Viewed", T0 + 1),
            alias("zoe", "visitor-9", T0 + 10),
            event("zoe", "Bought", T0 + 20),
        ],
        PER_PERSON,
        [("visitor-9", "bought", 1), ("visitor-9", "viewed", 2)],
    ),
    one(
        "§5 merging two people keeps both histories (events)",
        [
            event("amy", "A", T0, {"x": "1"}),
            event("bob", "B", T0 + 1, {"y": "2"}),
            event("bob", "A", T0 + 2),
            alias("amy", "bob", T0 + 5),
        ],
        PER_PERSON,
        [("amy", "a", 2), ("amy", "b", 1)],
    ),
    one(
        "§5, §6 merging two people keeps both histories (properties)",
        [
            sets("amy", T0, {"x": "1", "plan": "free"}),
            sets("bob", T0 + 1, {"y": "2", "plan": "pro"}),
            alias("bob", "amy", T0 + 5),
        ],
        CURRENT,
        [("amy", "plan", "pro"), ("amy", "x", "1"), ("amy", "y", "2")],
    ),
    one(
        "§11 a self-alias is accepted",
        [alias("bob", "bob", T0)],
        "SELECT a, b, status, (SELECT count(*) FROM rejects) FROM aliases",
        [("bob", "bob", "accepted", 0)],
    ),
    one(
        "§11 identities are trimmed first: ' bob ' ~ 'bob' is a self-alias",
        [alias(" bob ", "bob", T0)],
        "SELECT a, b, (SELECT count(*) FROM identities) FROM aliases",
        [("bob", "bob", 0)],
    ),
    one(
        "§11 a self-alias changes nothing",
        [event("bob", "Buy", T0), alias("bob", "bob", T0 + 1)],
        f"SELECT identity, person, (SELECT count(*) FROM identities) FROM ({PEOPLE_SQL}) "
        "AS p(product, identity, person)",
        [("bob", "bob", 0)],
    ),
    one(
        "§5, §11 the cap: the alias that would make 4 is rejected",
        [alias("a", "b", T0), alias("a", "c", T0 + 1), alias("a", "d", T0 + 2)],
        f"{MEMBERS_OF_A} UNION ALL {ALIASES.replace('a, b, status', 'a || b, status')}",
        [
            ("a", None),
            ("b", None),
            ("c", None),
            ("ab", "accepted"),
            ("ac", "accepted"),
            ("ad", "alias_cap"),
        ],
        cap=3,
    ),
    one(
        "§5, §7, §11 the capped alias is listed in rejects as alias_cap",
        [alias("a", "b", T0), alias("a", "c", T0 + 1), alias("d", "a", T0 + 2)],
        REJECTS,
        [(PRODUCT, "alias_cap", "/a", params(("_p", "d"), ("_n", "a")))],
        cap=3,
    ),
    one(
        "§11 an alias between two identities of one person is accepted at the cap",
        [
            alias("a", "b", T0),
            alias("a", "c", T0 + 1),
            alias("a", "d", T0 + 2),
            alias("c", "b", T0 + 3),
        ],
        ALIASES,
        [
            ("a", "b", "accepted"),
            ("a", "c", "accepted"),
            ("a", "d", "alias_cap"),
            ("c", "b", "accepted"),
        ],
        cap=3,
    ),
    one(
        "§5 the cap applies to merging two people",
        [alias("a", "b", T0), alias("c", "d", T0 + 1), alias("b", "c", T0 + 2)],
        PEOPLE,
        [("a", "a"), ("b", "a"), ("c", "c"), ("d", "c")],
        cap=3,
    ),
    Case(
        "§11 the cap is applied in the total order, not the read order",
        [
            [alias("a", "b", T0 + 1), alias("a", "c", T0 + 3)],
            [alias("a", "d", T0 + 2, stream="c1")],
        ],
        f"{MEMBERS_OF_A} UNION ALL SELECT reason, params FROM rejects",
        [("a", None), ("b", None), ("d", None), ("alias_cap", params(("_p", "a"), ("_n", "c")))],
        cap=3,
    ),
    one(
        "§5 a revocation splits the person again",
        [alias("a", "b", T0), revoke("a", "b", T0 + 5)],
        f"{PEOPLE} UNION ALL {ALIASES.replace('a, b, status', 'a || b, status')}",
        [("a", "a"), ("ab", "revoked"), ("b", "b")],
    ),
    Case(
        "§5 a revocation read before the alias it revokes",
        [[revoke("b", "a", T0 + 5)], [alias("a", "b", T0)]],
        f"{PEOPLE} UNION ALL {ALIASES.replace('a, b, status', 'a || b, status')}",
        [("a", "a"), ("ab", "revoked"), ("b", "b")],
    ),
    one(
        "§5 a revocation revokes only earlier aliases",
        [revoke("a", "b", T0), alias("a", "b", T0 + 5)],
        PEOPLE,
        [("a", "a"), ("b", "a")],
    ),
    one(
        "§5 the same alias after a revocation joins them again",
        [alias("a", "b", T0), revoke("b", "a", T0 + 5), alias("b", "a", T0 + 9)],
        f"{PEOPLE} UNION ALL {ALIASES.replace('a, b, status', 'a || b, status')}",
        [("a", "a"), ("ab", "revoked"), ("b", "a"), ("ba", "accepted")],
    ),
    one(
        "§5 a revoked edge does not split a person joined by another path",
        [
            alias("a", "b", T0),
            alias("b", "c", T0 + 1),
            alias("c", "a", T0 + 2),
            revoke("a", "b", T0 + 5),
        ],
        PEOPLE,
        [("a", "a"), ("b", "a"), ("c", "a")],
    ),
    one(
        "§5 a revocation splits off the far side of a chain",
        [alias("a", "b", T0), alias("b", "c", T0 + 1), revoke("a", "b", T0 + 5)],
        PEOPLE,
        [("a", "a"), ("b", "b"), ("c", "b")],
    ),
    one(
        "§5, §11 a revocation makes room under the cap for later aliases",
        [
            alias("a", "b", T0),
            alias("a", "c", T0 + 1),
            revoke("a", "b", T0 + 2),
            alias("a", "d", T0 + 3),
        ],
        PEOPLE,
        [("a", "a"), ("b", "b"), ("c", "a"), ("d", "a")],
        cap=3,
    ),
    one(
        "§5 a revocation in another product changes nothing",
        [alias("a", "b", T0), revoke("a", "b", T0 + 5, product="globex")],
        PEOPLE,
        [("a", "a"), ("b", "a")],
    ),
]

ALL_CASES = EVENT_CASES + NAME_CASES + DEDUP_CASES + REJECT_CASES + CURRENT_CASES + ALIAS_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.spec for c in ALL_CASES])
def test_store(store: Store, case: Case) -> None:
    run(store, case)


# -- the same records, read in another order ----------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [c for c in ALL_CASES if len(c.batches) > 1],
    ids=[c.spec for c in ALL_CASES if len(c.batches) > 1],
)
def test_batches_equal_one_batch_in_total_order(case: Case) -> None:
    """§5, §11: every multi-batch case above gives the store that one batch in the
    total order gives."""
    split, whole = Store(":memory:"), Store(":memory:")
    try:
        apply_batches(split, case)
        log = Log()
        entries = [entry for batch in case.batches for entry in log.entries(batch)]
        entries.sort(key=lambda e: (e.record.recv_ns, e.stream, e.position))
        whole.apply(entries, case.keys, cap=case.cap)
        assert snapshot(split) == snapshot(whole)
    finally:
        split.close()
        whole.close()


# -- §6 through the person page --------------------------------------------------------------


def test_person_page_current_values_across_identities(store: Store) -> None:
    """§6, §9 "Person": the page shows the latest value of any identity."""
    store.apply(
        build(
            [
                sets("bob", T0, {"Plan": "free"}),
                sets("anon", T0 + 10, {"plan": "pro"}),
                sets("bob", T0 + 20, {"plan": "team"}, t=T0 - 600, d=True),
                alias("anon", "bob", T0 + 30),
            ]
        ),
        Keys(),
    )
    page = person_view(store.con, PRODUCT, "bob")
    assert page["person"] == "anon"
    assert page["identities"] == ["anon", "bob"]
    [plan] = page["properties"]
    assert (plan["name"], plan["value"], plan["first_value"], plan["values"]) == (
        "Plan",
        "pro",
        "team",
        3,
    )


def test_an_identity_seen_only_in_rejected_records_is_unknown(store: Store) -> None:
    """§11: "An identity seen only in rejected records is unknown (404)"."""
    store.apply(build([event("bob", "Buy", T0, key="nope"), alias("amy", "null", T0)]), Keys())
    for identity in ("bob", "amy"):
        with pytest.raises(NotFound):
            resolve_person(store.con, PRODUCT, identity)


def test_an_identity_seen_only_in_a_capped_alias_is_unknown(store: Store) -> None:
    """§5, §11: an alias over the cap is *rejected* (listed as ``alias_cap``), so an
    identity that only it names is seen only in a rejected record: unknown (404),
    and not counted as a person."""
    store.apply(
        build([alias("a", "b", T0), alias("a", "c", T0 + 1), alias("a", "d", T0 + 2)]),
        Keys(),
        cap=3,
    )
    assert rows(store, "SELECT reason FROM rejects") == [("alias_cap",)]
    assert resolve_person(store.con, PRODUCT, "c") == "a"
    with pytest.raises(NotFound):
        resolve_person(store.con, PRODUCT, "d")
    assert store_view(store.con)["people"] == 1


# -- §7: replay ----------------------------------------------------------------------------


def test_replay_after_adding_the_key_applies_and_unlists() -> None:
    """§7: a reject replayed after its key was added is applied and leaves the list."""
    keys = Keys()
    store = Store(":memory:")
    entries = build([event("bob", "Buy", T0, {"plan": "pro"}, key=NEW_KEY)])
    store.apply(entries, keys)
    assert rows(store, "SELECT reason FROM rejects") == [("unknown_key",)]

    keys.add(NEW_KEY)
    stats = store.replay(entries, keys)
    assert (stats.applied, stats.duplicates, dict(stats.rejected)) == (1, 0, {})
    assert rows(store, "SELECT * FROM rejects") == []
    assert rows(store, EVENTS) == [("bob", "buy", T0, [("plan", "pro")])]
    assert rows(store, CURRENT) == [("bob", "plan", "pro")]
    assert rows(store, "SELECT identity FROM known_identities") == [("bob",)]


def test_replay_that_still_fails_is_listed_once() -> None:
    """§7: a replayed record that still fails is rejected again, once."""
    store = Store(":memory:")
    entries = build([event("bob", "Buy", T0, key=NEW_KEY)])
    store.apply(entries, Keys())
    before = snapshot(store)
    store.replay(entries, Keys())
    store.replay(entries, Keys())
    assert snapshot(store) == before


def test_replay_with_the_reason_as_it_is_now() -> None:
    """§7: replayed after its key was revoked, the reject's reason is the new one."""
    keys = Keys()
    store = Store(":memory:")
    entries = build([event("bob", "Buy", T0, key=NEW_KEY)])
    store.apply(entries, keys)
    keys.add(NEW_KEY)
    keys.revoke(NEW_KEY, ns(T0 - 1))
    store.replay(entries, keys)
    assert rows(store, "SELECT product, reason FROM rejects") == [(PRODUCT, "revoked_key")]


def test_replay_gives_the_store_as_if_the_key_had_always_been_there() -> None:
    """§4, §7: replayed rejects take their own place in the total order: a retry
    stays a duplicate, and an applied later duplicate is replaced."""
    rows_sent = [
        # Rejected (unknown key), then retried: one reject, one duplicate.
        event("bob", "Buy", T0, {"plan": "pro"}, t=T0, key=NEW_KEY),
        event("bob", "Buy", T0 + 30, {"plan": "pro"}, t=T0, key=NEW_KEY, stream="c1"),
        # The same call with the good key, received later: applied for now.
        event("bob", "Buy", T0 + 60, {"plan": "pro"}, t=T0),
        # An alias under the new key, and an event under the old one.
        alias("anon", "bob", T0 + 70, key=NEW_KEY),
        event("anon", "Viewed", T0 + 80),
    ]
    keys = Keys()
    replayed = Store(":memory:")
    entries = build(rows_sent)
    replayed.apply(entries, keys)
    assert rows(replayed, "SELECT reason, count(*) FROM rejects GROUP BY 1") == [("unknown_key", 2)]
    keys.add(NEW_KEY)
    listed = rows(replayed, "SELECT stream, position FROM rejects")
    replayed.replay([e for e in entries if (e.stream, e.position) in set(listed)], keys)

    always = Store(":memory:")
    always.apply(build(rows_sent), keys)
    try:
        assert rows(replayed, PEOPLE) == [("anon", "anon"), ("bob", "anon")]
        assert rows(replayed, "SELECT recv_ns FROM events WHERE event = 'buy'") == [(ns(T0),)]
        assert snapshot(replayed) == snapshot(always)
    finally:
        replayed.close()
        always.close()


# -- positions -----------------------------------------------------------------------------


def test_positions_reach_the_end_of_each_stream(store: Store) -> None:
    """DESIGN §3: the applied positions are stored with the batch, rejects and
    duplicates included, operator records too."""
    entries = build(
        [
            event("bob", "Buy", T0, stream="c0"),
            event("bob", "Buy", T0, stream="c0"),
            event("null", "Buy", T0, stream="c1"),
            revoke("a", "b", T0),
        ]
    )
    store.apply(entries, Keys())
    ends = {e.stream: e.next_position for e in entries}
    assert store.positions() == ends
