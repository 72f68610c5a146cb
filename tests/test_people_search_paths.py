"""The people search's shorter forms (reports/people.py) against the oracle.

A search whose every match needs an occurrence or a property value names its
people from ``known_identities`` alone (``Dialect.recorded_person_name``); one
event condition without filters counts its occurrences with no flag; one
person property reads its current value with no filter. Each must give the
oracle's answer (tests/oracle.py): people joined by aliases that arrive before
or after their records, identities known only from an alias (which name no
one that has a record), values set in the same second (the receive time, the
stream and the position decide), pages ordered by name, and the forms beside
them (two conditions, filters, ``any``) that take the longer way.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import Alias, Event, Fact, Set, differences, evaluate, loaded
from tally.reports import Product, run_report

IDENTITIES = ("ann", "Ann", "ann@mail", "ben", "ben-phone", "cy", "dee", "zed")
ONLY_ALIASED = ("ghost", "aardvark")  # never in a record of their own
T0 = 1_709_856_000  # 2024-03-08 UTC
DAY = 86_400
PRODUCT = Product("acme", "UTC", "Billing Amount")


@st.composite
def journeys(draw: st.DrawFn) -> list[Fact]:
    when = st.integers(T0, T0 + 3 * DAY).map(lambda t: t - t % 600)  # seconds repeat
    who = st.sampled_from(IDENTITIES)
    facts: list[Any] = []
    for _ in range(draw(st.integers(0, 14))):
        props = draw(st.sampled_from(({}, {"plan": "pro"}, {"Plan": "free"})))
        facts.append(("e", draw(who), draw(st.sampled_from(("Paid", "paid", "Left"))), props))
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.sampled_from(("Plan", "plan", "Country")))
        facts.append(("s", draw(who), None, {key: draw(st.sampled_from(("pro", "free", "fr")))}))
    for _ in range(draw(st.integers(0, 4))):
        a = draw(st.sampled_from(IDENTITIES + ONLY_ALIASED))
        facts.append(("a", a, draw(st.sampled_from(IDENTITIES + ONLY_ALIASED)), None))
    facts = draw(st.permutations(facts))
    out: list[Fact] = []
    for slot, (kind, person, what, props) in enumerate(facts):
        # Two records share each receive second, maybe its nanoseconds too.
        recv, stream = T0 + 10 * DAY + slot // 2, draw(st.sampled_from(("c0", "c1")))
        ns = draw(st.sampled_from((0, 0, 500_000_000)))
        if kind == "e":
            out.append(Event(person, what, draw(when), recv, props, stream=stream, ns=ns))
        elif kind == "s":
            out.append(Set(person, draw(when), recv, props, stream=stream, ns=ns))
        else:
            out.append(Alias(person, what, recv, stream=stream, ns=ns))
    return out


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    paid: dict[str, Any] = {"type": "event", "event": "Paid"}
    shape = draw(st.sampled_from(("plain", "count", "count", "did_not")))
    if shape == "count":
        op = draw(st.sampled_from(("at_least", "at_most", "exactly")))
        paid["count"] = {"op": op, "value": draw(st.integers(0, 3))}
    elif shape == "did_not":
        paid["did"] = False
    if draw(st.integers(0, 3)) == 0:
        paid["where"] = [{"property": "plan", "op": "equals", "value": "pro"}]
    plan = {"type": "property", "property": "Plan", "op": "equals",
            "value": draw(st.sampled_from(("pro", "free")))}  # fmt: skip
    country = {"type": "property", "property": "country", "op": "has_any_value"}
    left = {"type": "event", "event": "Left", "count": {"op": "at_least", "value": 1}}
    conditions = draw(
        st.sampled_from(
            ([paid], [plan], [paid, plan], [plan, country], [paid, left], [paid, plan, country])
        )
    )
    return {
        "from": "2024-03-08",
        "to": "2024-03-12",
        "conditions": conditions,
        "logic": draw(st.sampled_from(("all", "all", "any"))),
        "page": draw(st.sampled_from((1, 2))),
        "page_size": draw(st.sampled_from((1, 2, 50))),
    }


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(facts=journeys(), body=bodies())
def test_people_search_equals_the_oracle(facts: list[Fact], body: dict[str, Any]) -> None:
    expected = evaluate("people", body, facts, PRODUCT)
    with loaded(facts) as store:
        got = run_report(store.con, PRODUCT, "people", body)
    diff = differences(got, expected)
    assert not diff, (diff, got, expected)


def test_people_with_aliases_are_named_by_their_smallest_identity() -> None:
    # ann and ben-phone are one person (named "ann"); ben joins them after his
    # purchase; cy buys alone; dee is aliased to "ghost", known only from the
    # alias; "aardvark" (smaller than every name) is aliased to another
    # identity without records, so neither is anyone of the search.
    facts: list[Fact] = [
        Event("ben-phone", "Paid", T0 + 60, T0 + 10 * DAY, {}),
        Event("ann", "Paid", T0 + 120, T0 + 10 * DAY + 1, {}),
        Alias("ann", "ben-phone", T0 + 10 * DAY + 2),
        Event("ben", "Paid", T0 + 180, T0 + 10 * DAY + 3, {}),
        Alias("ben", "ann", T0 + 10 * DAY + 4),
        Event("cy", "Paid", T0 + 240, T0 + 10 * DAY + 5, {}),
        Event("dee", "Paid", T0 + 300, T0 + 10 * DAY + 6, {}),
        Alias("dee", "ghost", T0 + 10 * DAY + 7),
        Alias("aardvark", "zz-nobody", T0 + 10 * DAY + 8),
        Set("cy", T0 + 60, T0 + 10 * DAY + 9, {"plan": "pro"}),
        # Two values in one second: the later receive time wins.
        Set("dee", T0 + 60, T0 + 10 * DAY + 10, {"plan": "free"}),
        Set("dee", T0 + 60, T0 + 10 * DAY + 11, {"Plan": "pro"}),
    ]
    body: dict[str, Any] = {
        "from": "2024-03-08",
        "to": "2024-03-12",
        "conditions": [{"type": "event", "event": "paid"}],
    }
    with loaded(facts) as store:
        got = run_report(store.con, PRODUCT, "people", body)
        plan = {"type": "property", "property": "plan", "op": "equals", "value": "pro"}
        pro = run_report(store.con, PRODUCT, "people", {**body, "conditions": [plan]})
    assert [p["person"] for p in got["people"]] == ["ann", "cy", "dee"]
    assert [p["identities"] for p in got["people"]] == [
        ["ann", "ben", "ben-phone"],
        ["cy"],
        ["dee", "ghost"],
    ]
    assert not differences(got, evaluate("people", body, facts, PRODUCT))
    assert [p["person"] for p in pro["people"]] == ["cy", "dee"]
