"""People search (SPEC §9, docs/reports.md "people"): conditions, logic,
columns, pages and the CSV export, on stores built from what clients sent."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from journeys import T0, Row, alias, build, event, keys, revoke, sets
from tally.reports import Product, parse, run_report
from tally.reports.people import csv_rows
from tally.store.store import Store

ACME = Product("acme")
DAY0 = 1_698_796_800  # 2023-11-01T00:00:00Z; the searches cover [Nov 1, Nov 15)
RANGE = {"from": "2023-11-01", "to": "2023-11-15"}


def at(day: int, second: int = 0) -> int:
    return DAY0 + day * 86_400 + second


def did(
    person: str, name: str, day: int, props: dict[str, str] | None = None, *, second: int = 0
) -> Row:
    """``person`` did ``name`` at the event time ``day`` (received at T0)."""
    return event(person, name, T0, props, t=at(day, second), d=True)


def set_on(person: str, day: int, props: dict[str, str], *, recv: int = T0) -> Row:
    return sets(person, recv, props, t=at(day), d=True)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


def load(store: Store, rows: Sequence[Row]) -> Store:
    store.apply(build(rows), keys)
    return store


def search(store: Store, product: Product = ACME, **body: Any) -> dict[str, Any]:
    return run_report(store.con, product, "people", {**RANGE, **body})


def who(store: Store, *conditions: dict[str, Any], logic: str = "all") -> list[str]:
    answer = search(store, conditions=list(conditions), logic=logic)
    assert answer["total"] == len(answer["people"])
    return [p["person"] for p in answer["people"]]


VISITS = [
    did("alice", "Viewed", 1, {"url": "/pricing"}),
    did("alice", "Viewed", 2, {"url": "/docs"}),
    did("alice", "Viewed", 3, {"url": "/pricing/team"}),
    did("alice", "Signed Up", 3),
    did("bob", "Viewed", 2, {"url": "/docs"}),
    set_on("carol", 1, {"Plan": "free"}),
    did("dave", "viewed", -5),  # Oct 27: before the search's range
]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"event": "Viewed"}, ["alice", "bob"]),
        ({"event": "VIEWED"}, ["alice", "bob"]),  # a name is matched by its key
        ({"event": "viewed", "did": False}, ["carol", "dave"]),
        ({"event": "viewed", "count": {"op": "at_least", "value": 2}}, ["alice"]),
        # "at most N" includes people who never did it.
        ({"event": "viewed", "count": {"op": "at_most", "value": 1}}, ["bob", "carol", "dave"]),
        ({"event": "viewed", "count": {"op": "exactly", "value": 3}}, ["alice"]),
        ({"event": "viewed", "count": {"op": "exactly", "value": 0}}, ["carol", "dave"]),
        ({"event": "viewed", "from": "2023-10-01", "to": "2023-11-01"}, ["dave"]),
        ({"event": "viewed", "from": "2023-10-01"}, ["alice", "bob", "dave"]),
        (
            {
                "event": "viewed",
                "where": [{"property": "url", "op": "begins_with", "value": "/pricing"}],
                "count": {"op": "at_least", "value": 2},
            },
            ["alice"],
        ),
        (
            {"event": "viewed", "where": [{"property": "URL", "op": "equals", "value": "/docs"}]},
            ["alice", "bob"],
        ),
        ({"event": "never sent"}, []),
    ],
)
def test_event_conditions_count_occurrences_in_their_own_range(
    store: Store, condition: dict[str, Any], expected: list[str]
) -> None:
    load(store, VISITS)
    assert who(store, {"type": "event", **condition}) == expected


PLANS = [
    # alice's latest value by event time is "team", though "pro" arrived later.
    set_on("alice", 5, {"Plan": "team"}, recv=T0),
    set_on("alice", 1, {"Plan": "pro"}, recv=T0 + 1),
    set_on("bob", 1, {"Plan": "free"}),
    set_on("bob-phone", 6, {"Plan": "pro"}),  # bob's other identity: his current value
    alias("bob", "bob-phone", T0 + 2),
    set_on("carol", 1, {"Age": "41"}),
    set_on("dave", 1, {"Age": "forty"}),
]


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ({"op": "equals", "value": "pro"}, ["bob"]),
        ({"op": "equals", "value": "Pro"}, []),  # values are case-sensitive
        ({"op": "not_equals", "value": "pro"}, ["alice", "carol", "dave"]),
        ({"op": "contains", "value": "ea"}, ["alice"]),
        ({"op": "begins_with", "value": "p"}, ["bob"]),
        ({"op": "ends_with", "value": "am"}, ["alice"]),
        ({"op": "has_any_value"}, ["alice", "bob"]),
        ({"op": "has_no_value"}, ["carol", "dave"]),
        ({"property": "age", "op": "gt", "value": 40}, ["carol"]),  # "forty" is not numeric
        ({"property": "age", "op": "lte", "value": "41"}, ["carol"]),
        ({"property": "age", "op": "lt", "value": 41}, []),
    ],
)
def test_property_conditions_test_the_current_value_over_all_identities(
    store: Store, test: dict[str, Any], expected: list[str]
) -> None:
    load(store, PLANS)
    condition = {"type": "property", "property": "plan", **test}
    assert who(store, condition) == expected


def test_identity_condition_is_a_case_sensitive_contains_over_all_identities(
    store: Store,
) -> None:
    load(store, [did("alice", "Viewed", 1), did("bob", "Viewed", 1),
                 alias("alice", "alice@example.com", T0)])  # fmt: skip
    assert who(store, {"type": "identity", "op": "contains", "value": "@example"}) == ["alice"]
    assert who(store, {"type": "identity", "value": "Alice"}) == []
    assert who(store, {"type": "identity", "value": "b"}) == ["bob"]


def test_logic_all_and_any(store: Store) -> None:
    load(store, [*VISITS, set_on("bob", 1, {"Plan": "pro"})])
    viewed_twice = {"type": "event", "event": "viewed", "count": {"op": "at_least", "value": 2}}
    pro = {"type": "property", "property": "plan", "op": "equals", "value": "pro"}
    free = {"type": "property", "property": "plan", "op": "equals", "value": "free"}
    assert who(store, viewed_twice, pro) == []
    assert who(store, viewed_twice, pro, logic="any") == ["alice", "bob"]
    assert who(store, viewed_twice, free, pro, logic="any") == ["alice", "bob", "carol"]
    never_viewed = {"type": "event", "event": "viewed", "did": False}
    assert who(store, never_viewed, free) == ["carol"]
    assert who(store, never_viewed, pro, logic="any") == ["bob", "carol", "dave"]
    # No conditions: everybody, whatever the logic.
    assert who(store, logic="any") == ["alice", "bob", "carol", "dave"]


def test_in_order_chains_occurrences_as_strict_funnel_steps(store: Store) -> None:
    load(
        store,
        [
            did("alice", "Signed Up", 1),
            did("alice", "Viewed", 2),
            did("bob", "Viewed", 1),
            did("bob", "Signed Up", 2),
            # The same second counts, whichever arrived first.
            did("carol", "Viewed", 3, second=5),
            did("carol", "Signed Up", 3, second=5),
            did("dave", "Signed Up", 1),
            did("erin", "Viewed", 1),
            did("erin", "Viewed", 2),
            did("erin", "Signed Up", 4),
        ],
    )
    signed = {"type": "event", "event": "signed up"}
    viewed = {"type": "event", "event": "viewed"}
    assert who(store, signed, viewed, logic="in_order") == ["alice", "carol"]
    assert who(store, viewed, signed, logic="in_order") == ["bob", "carol", "erin"]
    assert who(store, signed, viewed) == ["alice", "bob", "carol", "erin"]
    # Each step is its own occurrence: viewing twice needs two views.
    assert who(store, viewed, viewed, logic="in_order") == ["erin"]
    has_a = {"type": "identity", "value": "a"}
    assert who(store, signed, viewed, has_a, logic="in_order") == ["alice", "carol"]
    # Conditions that need no occurrence must hold, and are not ordered.
    never_viewed = {"type": "event", "event": "viewed", "did": False}
    assert who(store, signed, never_viewed, logic="in_order") == ["dave"]
    # A chain step must be in its own condition's range.
    late_view = {"type": "event", "event": "viewed", "from": "2023-11-04"}
    assert who(store, signed, late_view, logic="in_order") == ["carol"]
    assert who(store, viewed, late_view, logic="in_order") == []  # carol viewed once


def test_columns_show_values_over_all_time_and_events_in_the_range(store: Store) -> None:
    plans = [set_on("alice", -30, {"Plan": "pro"}), set_on("alice", 2, {"Plan": "team"})]
    load(store, [*VISITS, *plans])
    columns = [
        {"type": "property", "property": "plan", "which": "first"},
        {"type": "property", "property": "Plan", "which": "last"},
        {"type": "property", "property": "plan"},  # current, by default
        {"type": "event", "event": "Viewed", "which": "first_time"},
        {"type": "event", "event": "viewed", "which": "last_time"},
        {"type": "event", "event": "viewed"},  # count, by default
    ]
    answer = search(store, Product("acme", timezone="Europe/Paris"), columns=columns)
    assert answer["columns"] == [
        "plan (first)", "Plan (last)", "plan (current)",
        "Viewed (first time)", "viewed (last time)", "viewed (count)",
    ]  # fmt: skip
    by_person = {p["person"]: p["columns"] for p in answer["people"]}
    assert by_person == {
        "alice": ["pro", "team", "team",
                  "2023-11-02T01:00:00+01:00", "2023-11-04T01:00:00+01:00", 3],
        "bob": [None, None, None, "2023-11-03T01:00:00+01:00", "2023-11-03T01:00:00+01:00", 1],
        "carol": ["free", "free", "free", None, None, 0],
        "dave": [None, None, None, None, None, 0],  # dave's view is before the range
    }  # fmt: skip


def test_the_search_where_applies_to_conditions_and_columns(store: Store) -> None:
    load(store, VISITS)
    answer = search(
        store,
        where=[{"property": "url", "op": "contains", "value": "pricing"}],
        conditions=[{"type": "event", "event": "viewed"}],
        columns=[{"type": "event", "event": "viewed"}],
    )
    assert [(p["person"], p["columns"]) for p in answer["people"]] == [("alice", [2])]


def test_pages_are_ordered_by_person_and_total_counts_every_match(store: Store) -> None:
    load(store, [did(name, "Viewed", 1) for name in ("erin", "Bob", "alice", "dave", "carol")])
    pages = [search(store, page=n, page_size=2) for n in (1, 2, 3, 4)]
    assert [[p["person"] for p in page["people"]] for page in pages] == [
        ["Bob", "alice"], ["carol", "dave"], ["erin"], [],
    ]  # fmt: skip
    assert {(page["total"], page["page_size"]) for page in pages} == {(5, 2)}
    assert [page["page"] for page in pages] == [1, 2, 3, 4]
    assert search(store)["page_size"] == 50


def test_aliases_make_one_person_named_by_its_smallest_identity(store: Store) -> None:
    load(
        store,
        [
            did("zoe", "Viewed", 1),
            did("anon-7", "Viewed", 2),
            set_on("anon-7", 1, {"Plan": "pro"}),
            did("mia", "Viewed", 2),
            # Retroactive: the alias arrives after everything it merges.
            alias("zoe", "anon-7", T0 + 10),
            alias("x", "y", T0 + 10),  # known only through an alias
        ],
    )
    answer = search(
        store,
        conditions=[{"type": "event", "event": "viewed", "count": {"op": "exactly", "value": 2}},
                    {"type": "property", "property": "plan", "op": "equals", "value": "pro"}],
    )  # fmt: skip
    assert answer["people"] == [
        {"person": "anon-7", "display": "zoe", "identities": ["anon-7", "zoe"], "columns": []},
    ]
    everyone = search(store)["people"]
    assert [(p["person"], p["identities"]) for p in everyone] == [
        ("anon-7", ["anon-7", "zoe"]), ("mia", ["mia"]), ("x", ["x", "y"]),
    ]  # fmt: skip


def test_person_where_restricts_the_search(store: Store) -> None:
    load(store, PLANS)
    answer = search(store, person_where=[{"property": "plan", "op": "has_any_value"}])
    assert [p["person"] for p in answer["people"]] == ["alice", "bob"]
    answer = search(
        store,
        person_where=[{"property": "plan", "op": "not_equals", "value": "pro"}],
        conditions=[{"type": "property", "property": "age", "op": "has_any_value"},
                    {"type": "identity", "value": "li"}],
        logic="any",
    )  # fmt: skip
    assert [p["person"] for p in answer["people"]] == ["alice", "carol", "dave"]


def test_csv_rows_stream_every_page(store: Store) -> None:
    people = [f"p{n:02}" for n in range(25)]
    load(store, [did(p, "Viewed", 1, second=n) for n, p in enumerate(people)]
         + [alias("p03", "q03", T0), set_on("p04", 1, {"Plan": "a,b"})])  # fmt: skip
    body = {**RANGE, "page": 2, "page_size": 3,
            "columns": [{"type": "property", "property": "plan"},
                        {"type": "event", "event": "viewed", "which": "count"}]}  # fmt: skip
    rows = list(csv_rows(store.con, parse("people", body, ACME), chunk=4))
    assert rows[0] == ["person", "identities", "plan (current)", "viewed (count)"]
    assert [r[0] for r in rows[1:]] == people
    assert rows[4] == ["p03", "p03 q03", "", "1"]
    assert rows[5] == ["p04", "p04", "a,b", "1"]
    assert list(csv_rows(store.con, parse("people", {**RANGE, "conditions": [
        {"type": "event", "event": "other"}]}, ACME))) == [["person", "identities"]]  # fmt: skip


def test_identities_known_only_from_aliases_are_people_with_names(store: Store) -> None:
    """``ann`` ~ ``ann`` joins nobody, and a revoked alias no longer joins its two:
    each identity stays a person of the product, listed under its own name."""
    load(store, [alias("ann", "ann", T0), alias("x", "y", T0), did("bob", "Viewed", 1)])
    load(store, [revoke("x", "y", T0 + 1)])
    answer = search(store, conditions=[])
    assert [(p["person"], p["identities"]) for p in answer["people"]] == [
        ("ann", ["ann"]),
        ("bob", ["bob"]),
        ("x", ["x"]),
        ("y", ["y"]),
    ]
    assert answer["total"] == 4
