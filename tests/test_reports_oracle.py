"""Every report of the SQL engine equals the oracle's on generated journeys.

Issue: "an independent, deliberately simple pure-Python evaluator of every
report lives in the tests, and hypothesis compares it with the SQL engine on
generated journeys". The oracle is ``tests/oracle.py``; here a journey is a few
people with several identities each (joined by aliases that arrive before,
during or after their events), three or four event names in several spellings,
events that share a second, exact retries (duplicates, SPEC §4), person
properties (some numeric, some not), a product time zone and a range that
crosses a DST change, a month or a year. Each report kind gets its own generated
bodies; the engine's answer must equal the oracle's (floats approximately).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import Alias, Event, Fact, Set, differences, evaluate, loaded
from tally.reports import Product, run_report

TIMEZONES = ("UTC", "America/New_York", "Asia/Kolkata")
# (first day, days): a DST start in New York (2024-03-10), a DST end (2024-11-03)
# and a month, year and ISO-week change.
RANGES = ((date(2024, 3, 8), 5), (date(2024, 10, 30), 6), (date(2024, 12, 28), 6))
IDENTITIES = ("ann", "Ann", "ann@mail", "ben", "ben-phone", "cy", "dee", "dee@mail")
EVENT_NAMES = ("Signed Up", "signed up", "Signed,Up", "Viewed Page", "Paid", "PAID", "Left")
ASKED_NAMES = ("Signed Up", "SIGNED UP", "viewed page", "paid", "Left")
PROPERTIES = {
    "Plan": ("free", "pro", "Pro", ""),
    "Amount": ("10", "2.5", "-3", "1e1", ".5", "+2", "abc", " 5", "1e999"),
    "Billing Amount": ("20", "-5", "0", "12.5", "$3"),
    "Variant": ("A", "B", "C"),
}
STREAMS = ("c0", "c1")
STRING_OPS = ("equals", "not_equals", "contains", "begins_with", "ends_with")

MAIN = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time(), tz).timestamp())


# -- journeys --------------------------------------------------------------------------------


@st.composite
def properties(draw: st.DrawFn, min_size: int = 0) -> dict[str, str]:
    """Up to two properties; a name may come in another spelling (``plan`` and
    ``Plan`` in one record are one property: the later wins, SPEC §11)."""
    names = draw(st.lists(st.sampled_from(sorted(PROPERTIES)), min_size=min_size, max_size=2))
    spelt = [draw(st.sampled_from([n, n, n.lower(), n.upper()])) for n in names]
    return {s: draw(st.sampled_from(PROPERTIES[n])) for n, s in zip(names, spelt, strict=True)}


@st.composite
def journeys(draw: st.DrawFn) -> tuple[Product, date, date, list[Fact]]:
    """A product, a range ``[first, last)`` of days, and facts in log order."""
    tz_name = draw(st.sampled_from(TIMEZONES))
    tz = ZoneInfo(tz_name)
    first, days = draw(st.sampled_from(RANGES))
    last = first + timedelta(days=days)
    # Event times: just around local midnights, or anywhere from a day before
    # the range to a day after it, drawn from a small pool so that seconds repeat.
    midnights = [midnight(first + timedelta(days=i), tz) for i in range(-1, days + 2)]
    edges = [m + d for m in midnights for d in (-1, 0, 1)]
    low, high = midnights[0], midnights[-1]
    moment = st.one_of(st.sampled_from(edges), st.integers(low, high))
    pool = draw(st.lists(moment, min_size=1, max_size=8))
    # ... and some whole days after another (a funnel window, a cohort bucket or
    # a churn period away).
    later = st.tuples(st.sampled_from(pool), st.integers(1, 3))
    pool += [t + k * 86_400 for t, k in draw(st.lists(later, max_size=4))]
    when = st.sampled_from(pool)
    person = st.sampled_from(IDENTITIES)

    facts: list[Any] = []  # with recv filled in below
    for _ in range(draw(st.integers(0, 24))):
        facts.append(
            ("e", draw(person), draw(st.sampled_from(EVENT_NAMES)), draw(when), draw(properties()))
        )
    for _ in range(draw(st.integers(0, 5))):
        facts.append(("s", draw(person), None, draw(when), draw(properties(min_size=1))))
    revenue = draw(st.sampled_from(["Billing Amount", "Billing Amount", "amount"]))
    payer = st.sampled_from(IDENTITIES[:3])  # few payers: several payments each
    for _ in range(draw(st.integers(0, 6))):  # payments, mostly positive (SPEC §9 revenue)
        amount = draw(st.sampled_from(["20", "12.5", "20", "-5", "0", "$3"]))
        facts.append(("s", draw(payer), None, draw(when), {revenue: amount}))
    for _ in range(draw(st.integers(0, 4))):
        facts.append(("a", draw(person), draw(person), None, None))
    if facts:  # retries of some records, an event's name maybe spelt otherwise (SPEC §4)
        for index in draw(st.lists(st.integers(0, len(facts) - 1), max_size=3)):
            kind, who, what, t, props = facts[index]
            if kind == "e" and draw(st.booleans()):
                what = what.upper()
            facts.append((kind, who, what, t, props))
    # Someone did every event long before the range, so that every name asked
    # has been seen and answers show its first spelling (an unseen name is a
    # case of its own in test_reports_golden.py).
    facts += [("e", "zz-seen", name, low - 30 * 86_400, {}) for name in EVENT_NAMES]
    facts = draw(st.permutations(facts))
    # Receive times after every event time: two records share each receive
    # second (maybe its nanoseconds too), so that the stream and the position
    # decide as well.
    recv0 = max(pool) + 60
    receive = draw(st.permutations(range(len(facts))))
    out: list[Fact] = []
    for (kind, who, what, t, props), slot in zip(facts, receive, strict=True):
        recv, stream = recv0 + slot // 2, draw(st.sampled_from(STREAMS))
        ns = draw(st.sampled_from([0, 0, 500_000_000]))
        if kind == "e":
            out.append(Event(who, what, t, recv, props, stream=stream, ns=ns))
        elif kind == "s":
            out.append(Set(who, t, recv, props, stream=stream, ns=ns))
        else:
            out.append(Alias(who, what, recv, stream=stream, ns=ns))
    return Product("acme", tz_name, revenue), first, last, out


# -- bodies ----------------------------------------------------------------------------------

EVENT = st.sampled_from(ASKED_NAMES)
PROPERTY_NAME = st.sampled_from([*PROPERTIES, "plan", "billing amount"])


@st.composite
def a_filter(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(PROPERTY_NAME)
    op = draw(
        st.sampled_from([*STRING_OPS, "has_any_value", "has_no_value", "gt", "gte", "lt", "lte"])
    )
    f: dict[str, Any] = {"property": name, "op": op}
    if op in ("gt", "gte", "lt", "lte"):
        f["value"] = draw(st.sampled_from([0, 2.5, 10, -3, "5"]))
    elif op not in ("has_any_value", "has_no_value"):
        values = [v for vs in PROPERTIES.values() for v in vs if v]
        f["value"] = draw(st.one_of(st.sampled_from(values), st.sampled_from(["r", "1", 10])))
    return f


def filters(max_size: int = 1) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.one_of(st.just([]), st.lists(a_filter(), max_size=max_size))


@st.composite
def common(draw: st.DrawFn, first: date, last: date, *, where: bool = True) -> dict[str, Any]:
    """``from``, ``to`` (dates, or a timestamp with or without an offset) and filters."""
    body: dict[str, Any] = {"from": first.isoformat(), "to": last.isoformat()}
    if draw(st.integers(0, 4)) == 0:
        body["from"] = draw(
            st.sampled_from(
                [f"{first.isoformat()}T06:30:00", f"{first.isoformat()}T00:00:00Z",
                 f"{first.isoformat()}T12:00:00+05:30"]
            )
        )  # fmt: skip
    if draw(st.integers(0, 4)) == 0:
        body["to"] = f"{last.isoformat()}T00:00:00-05:00"
    if where and (w := draw(filters())):
        body["where"] = w
    if pw := draw(filters(max_size=2)):
        body["person_where"] = pw
    return body


INTERVALS = ("hour", "day", "week", "month")
INTERVAL = st.sampled_from(INTERVALS)


def segment(attributions: Sequence[str]) -> st.SearchStrategy[dict[str, Any] | None]:
    return st.one_of(
        st.none(),
        st.builds(
            lambda p, a: {"property": p, "attribution": a},
            st.sampled_from(["Plan", "Variant", "amount"]),
            st.sampled_from(list(attributions)),
        ),
    )


def _set(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


@st.composite
def metrics_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    measure = draw(
        st.sampled_from([None, "people", "times", "average_per_person", "sum", "average"])
    )
    return _set(
        draw(common(first, last)),
        event=draw(EVENT),
        measure=measure,
        unit=draw(st.sampled_from([None, "people", "times"])),
        property=draw(st.sampled_from(["Amount", "billing amount"]))
        if measure in ("sum", "average")
        else None,
        interval=draw(INTERVAL),
        segment=draw(segment(["first_ever", "last_ever", "at_event"])),
    )


@st.composite
def funnel_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    step = st.one_of(EVENT, st.builds(lambda e, w: {"event": e, "where": w}, EVENT, filters()))
    return _set(
        draw(common(first, last)),
        steps=draw(st.lists(step, min_size=2, max_size=4)),
        mode=draw(st.sampled_from([None, "strict", "skip"])),
        window=draw(st.sampled_from([None, 0, 1, 3600, 86_400, 2 * 86_400])),
        segment=draw(segment(["first_ever", "last_ever", "at_step_1"])),
    )


@st.composite
def cohort_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    return _set(
        draw(common(first, last)),
        first_event=draw(EVENT),
        return_event=draw(EVENT),
        interval=draw(st.sampled_from([None, *INTERVALS])),
        count=draw(st.sampled_from([None, "every_time", "first_time"])),
        buckets=draw(st.sampled_from([None, 1, 3, 8])),
        unit=draw(st.sampled_from([None, "people", "times"])),
    )


@st.composite
def revenue_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    return _set(
        draw(common(first, last, where=False)),
        interval=draw(st.sampled_from([None, *INTERVALS])),
        churn_days=draw(st.sampled_from([None, 1, 2, 3])),
    )


@st.composite
def abtest_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    return _set(
        draw(common(first, last)),
        experiment=draw(st.sampled_from(["Variant", "variant", "Plan"])),
        conversion=draw(EVENT),
    )


@st.composite
def path_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    return _set(
        draw(common(first, last)),
        start=draw(EVENT),
        conversion=draw(EVENT),
        direction=draw(st.sampled_from([None, "first", "last"])),
        limit=draw(st.sampled_from([None, 1, 2, 50])),
    )


@st.composite
def condition(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    kind = draw(st.sampled_from(["event", "event", "property", "identity"]))
    if kind == "identity":
        return {
            "type": "identity",
            "op": "contains",
            "value": draw(st.sampled_from(["@", "n", "x"])),
        }
    if kind == "property":
        return {"type": "property", **draw(a_filter())}
    c: dict[str, Any] = {"type": "event", "event": draw(EVENT)}
    shape = draw(st.sampled_from(["plain", "did_not", "count", "count"]))
    if shape == "did_not":
        c["did"] = False
    elif shape == "count":
        op = draw(st.sampled_from(["at_least", "at_most", "exactly"]))
        c["count"] = {"op": op, "value": draw(st.integers(0, 3))}
    if w := draw(filters()):
        c["where"] = w
    if draw(st.booleans()):
        c["from"] = (first + timedelta(days=1)).isoformat()
        c["to"] = (last + timedelta(days=1)).isoformat()
    return c


@st.composite
def column(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        which = draw(st.sampled_from([None, "first", "last", "current"]))
        return _set({"type": "property", "property": draw(PROPERTY_NAME)}, which=which)
    which = draw(st.sampled_from([None, "first_time", "last_time", "count"]))
    return _set({"type": "event", "event": draw(EVENT)}, which=which)


@st.composite
def people_body(draw: st.DrawFn, first: date, last: date) -> dict[str, Any]:
    return _set(
        draw(common(first, last)),
        conditions=draw(st.lists(condition(first, last), max_size=3)),
        logic=draw(st.sampled_from([None, "all", "any", "in_order"])),
        columns=draw(st.lists(column(), max_size=3)),
        page=draw(st.sampled_from([None, 1, 2])),
        page_size=draw(st.sampled_from([None, 1, 3])),
    )


BODIES = {
    "metrics": metrics_body,
    "funnel": funnel_body,
    "cohort": cohort_body,
    "revenue": revenue_body,
    "abtest": abtest_body,
    "path": path_body,
    "people": people_body,
}


# -- comparing -------------------------------------------------------------------------------

# How much an answer shows, to steer generation away from empty answers
# (``pytest --hypothesis-show-statistics`` tells how often each kind was rich).
RICHNESS: dict[str, Callable[[dict[str, Any]], int]] = {
    "metrics": lambda x: int(bool(x["total"])) + len(x.get("segments", [])),
    "funnel": lambda x: sum(s["people"] for s in x["steps"][1:]),
    "cohort": lambda x: sum(sum(c["values"]) for c in x["cohorts"]),
    "revenue": lambda x: x["paying"] + sum(s["churned"] for s in x["series"]),
    "abtest": lambda x: sum(v["certainty"] is not None for v in x["variants"]),
    "path": lambda x: sum(len(p["steps"]) for p in x["paths"]),
    "people": lambda x: x["total"] * (x["total"] < 9) + len(x["columns"]),
}


# -- running -------------------------------------------------------------------------------


def check(kind: str, data: st.DataObject) -> None:
    product, first, last, facts = data.draw(journeys(), "journey")
    body = data.draw(BODIES[kind](first, last), "body")
    expected = evaluate(kind, body, facts, product)
    with loaded(facts) as store:
        got = run_report(store.con, product, kind, body)
    richness = RICHNESS[kind](expected)
    hypothesis.event(f"{kind}: {'rich' if richness else 'poor'} answer")
    hypothesis.target(float(richness), label=f"{kind} richness")
    diff = differences(got, expected)
    assert not diff, (diff, got, expected)


@pytest.mark.parametrize("kind", list(BODIES))
@MAIN
@given(data=st.data())
def test_report_equals_the_oracle(kind: str, data: st.DataObject) -> None:
    check(kind, data)
