"""The A/B test's variant and exposure: a person's first value of the experiment in range.

reports/abtest.py takes the first value by the time alone for the people who
have the property set once, or twice at different times, and orders the
others' values by SPEC §11's whole order (time, receive time, stream,
position). Both ways must give the oracle's answer (tests/oracle.py): values
set at one second, received at one moment on two streams, before ``from``
and after ``to``, three or more times, with aliases, filters and person
restrictions.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import Alias, Event, Fact, Set, differences, evaluate, loaded
from tally.reports import Product, run_report

DAY = 86_400
IDENTITIES = ("ann", "ben", "ben-phone", "cy", "dee")
VARIANTS = ("a", "b", "c")
FIRST = date(2024, 3, 4)
DAYS = 5


def midnight(day: date) -> int:
    return int(datetime.combine(day, time(), ZoneInfo("UTC")).timestamp())


PRODUCT = Product("acme", "UTC", "Billing Amount")
#: The test of ``Variant`` → ``Bought`` over five days.
ASKED = {
    "from": FIRST.isoformat(),
    "to": (FIRST + timedelta(days=DAYS)).isoformat(),
    "experiment": "Variant",
    "conversion": "Bought",
}


def abtest(facts: list[Fact], **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's answer and the oracle's."""
    with loaded(facts) as store:
        got = run_report(store.con, PRODUCT, "abtest", {**ASKED, **body})
    return got, evaluate("abtest", {**ASKED, **body}, facts, PRODUCT)


def test_ties_are_ordered_by_receive_time_stream_and_position() -> None:
    t = midnight(FIRST) + 3600
    recv = t + 10
    facts: list[Fact] = [
        # ann: two values at one second, received at one moment: the stream decides
        # ("c0" before "c1"), whichever was sent first in the list.
        Set("ann", t, recv, {"Variant": "b"}, stream="c1"),
        Set("ann", t, recv, {"Variant": "a"}, stream="c0"),
        # ben: two at one second, one stream: the receive time decides.
        Set("ben", t, recv, {"Variant": "c"}, ns=5),
        Set("ben", t, recv, {"Variant": "b"}, ns=2),
        # cy: three values, the earliest time last received.
        Set("cy", t + 60, recv, {"Variant": "a"}),
        Set("cy", t + 30, recv, {"Variant": "b"}),
        Set("cy", t, recv + 5, {"Variant": "c"}),
        # dee: two at different times; converts after her exposure.
        Set("dee", t + 5, recv, {"Variant": "a"}),
        Set("dee", t + 2, recv, {"Variant": "c"}),
        Event("dee", "Bought", t + 3, recv + 1),
        # ann converts at her exposure's second (it counts).
        Event("ann", "Bought", t, recv + 1),
    ]
    got, expected = abtest(facts)
    assert not differences(got, expected), (got, expected)
    counts = {v["name"]: (v["participants"], v["conversions"]) for v in got["variants"]}
    # ann a (converted), ben b, cy c, dee c (converted)
    assert counts == {"a": (1, 1), "b": (1, 0), "c": (2, 1)}


@st.composite
def journeys(draw: st.DrawFn) -> list[Fact]:
    low = midnight(FIRST) - DAY
    high = midnight(FIRST + timedelta(days=DAYS)) + DAY
    # Times from a small pool, so that values share a second; receive times
    # shared too, so that the stream and position decide.
    pool = draw(st.lists(st.integers(low, high), min_size=1, max_size=3))
    facts: list[Any] = []
    for who in draw(st.lists(st.sampled_from(IDENTITIES), min_size=1, max_size=6)):
        for _ in range(draw(st.integers(1, 4))):
            props = {"Variant": draw(st.sampled_from(VARIANTS))}
            if draw(st.booleans()):
                props["tier"] = draw(st.sampled_from(("gold", "free")))
            facts.append(("s", who, None, draw(st.sampled_from(pool)), props))
        for _ in range(draw(st.integers(0, 2))):
            props = draw(st.sampled_from(({}, {"plan": "pro"})))
            facts.append(("e", who, "Bought", draw(st.sampled_from(pool)), props))
    for _ in range(draw(st.integers(0, 2))):
        a, b = draw(st.sampled_from(IDENTITIES)), draw(st.sampled_from(IDENTITIES))
        facts.append(("a", a, b, None, None))
    facts = draw(st.permutations(facts))
    recv0 = max(pool) + 60
    out: list[Fact] = []
    for slot, (kind, who, what, t, props) in enumerate(facts):
        recv = recv0 + slot // 3
        stream = draw(st.sampled_from(("c0", "c1")))
        if kind == "s":
            # (a later record in a stream may carry an earlier receive time)
            out.append(Set(who, t, recv, props, stream=stream, ns=draw(st.integers(0, 2))))
        elif kind == "e":
            out.append(Event(who, what, t, recv, props, stream=stream))
        else:
            out.append(Alias(who, what, recv, stream=stream))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    facts=journeys(),
    where=st.sampled_from((None, [{"property": "plan", "op": "equals", "value": "pro"}])),
    person_where=st.sampled_from(
        (
            None,
            [{"property": "tier", "op": "equals", "value": "gold"}],
            [{"property": "tier", "op": "has_no_value"}],
        )
    ),
)
def test_abtest_equals_the_oracle(
    facts: list[Fact],
    where: list[dict[str, str]] | None,
    person_where: list[dict[str, str]] | None,
) -> None:
    body: dict[str, Any] = {}
    if where:
        body["where"] = where
    if person_where:
        body["person_where"] = person_where
    got, expected = abtest(facts, **body)
    diff = differences(got, expected)
    assert not diff, (diff, got, expected)
