"""The cohort whose first and return events are one (reports/cohort.py, ``_one_event``).

There, the people with at most three occurrences have their buckets found from
the count, the earliest and latest time and the sum of their times, with no
join; the others' occurrences are joined back to their first. Both ways must
give the oracle's answer (tests/oracle.py), for every unit and count, with
occurrences that share a second, that lie before ``from``, after ``to`` and
past the last bucket, with filters, person restrictions and aliases, in zones
with DST changes.
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
IDENTITIES = ("ann", "ben", "ben-phone", "cy", "dee", "eve", "fay")
NAMES = ("Visited", "visited", "VISITED")  # one event, spelt three ways
FIRST = date(2024, 3, 4)  # a Monday; New York's DST starts on 2024-03-10


def midnight(day: date, tz: str) -> int:
    return int(datetime.combine(day, time(), ZoneInfo(tz)).timestamp())


def cohort(
    facts: list[Fact], tz: str, days: int, **body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's answer and the oracle's to a cohort of ``Visited``."""
    product = Product("acme", tz, "Billing Amount")
    asked = {
        "from": FIRST.isoformat(),
        "to": (FIRST + timedelta(days=days)).isoformat(),
        "first_event": "Visited",
        "return_event": "visited",
        **body,
    }
    with loaded(facts) as store:
        got = run_report(store.con, product, "cohort", asked)
    return got, evaluate("cohort", asked, facts, product)


def test_three_occurrences_each_in_its_own_bucket() -> None:
    # ann: three visits, in weeks 0, 1 and 2 after her first (the middle one is
    # the sum less the first and last); ben: two, in weeks 0 and 3; cy: four,
    # joined (weeks 0, 0, 2, 5; the first two in one second, told apart by a
    # property, not retries); dee: one. Every unit and count.
    t0 = midnight(FIRST, "UTC") + 3600
    visits = {
        "ann": [t0, t0 + 8 * DAY, t0 + 20 * DAY],
        "ben": [t0 + DAY, t0 + 22 * DAY],
        "cy": [t0 + 2 * DAY, t0 + 2 * DAY, t0 + 16 * DAY, t0 + 37 * DAY],
        "dee": [t0 + 3 * DAY],
    }
    facts: list[Fact] = [
        Event(who, "Visited", t, 2_000_000_000 + i * 10 + k, {"n": str(k)})
        for i, (who, times) in enumerate(visits.items())
        for k, t in enumerate(times)
    ]
    for unit in ("people", "times"):
        for count in ("every_time", "first_time"):
            got, expected = cohort(
                facts, "UTC", 14, interval="week", buckets=6, unit=unit, count=count
            )
            assert not differences(got, expected), (unit, count, got, expected)
    got, _ = cohort(facts, "UTC", 14, interval="week", buckets=6)
    week0 = got["cohorts"][0]
    assert week0["people"] == 4
    assert week0["values"] == [1, 1, 2, 1, 0, 1]  # cy in 0; ann 1; ann, cy 2; ben 3; cy 5


@st.composite
def journeys(draw: st.DrawFn) -> tuple[str, int, list[Fact]]:
    tz = draw(st.sampled_from(("UTC", "America/New_York", "Asia/Kolkata")))
    days = draw(st.sampled_from((3, 9, 40)))
    low = midnight(FIRST, tz) - 2 * DAY
    high = midnight(FIRST + timedelta(days=days), tz) + 3 * DAY
    # Times from a small pool (seconds repeat), some a whole number of days or
    # weeks after another (bucket edges), a few far past the range.
    pool = draw(st.lists(st.integers(low, high), min_size=2, max_size=10))
    later = st.tuples(st.sampled_from(pool), st.sampled_from((1, 7, 14, 30, 60, 90)))
    pool += [t + k * DAY + draw(st.sampled_from((-1, 0, 1))) for t, k in draw(st.lists(later))]
    facts: list[Any] = []
    for who in draw(st.lists(st.sampled_from(IDENTITIES), min_size=1, max_size=6)):
        for _ in range(draw(st.integers(1, 7))):  # about three occurrences a person
            # (a record with the same identity, event, time and properties is a retry)
            props = draw(st.sampled_from(({}, {"plan": "pro"}, {"plan": "free"})))
            props = {**props, "k": str(draw(st.integers(0, 3)))}
            name, when = draw(st.sampled_from(NAMES)), draw(st.sampled_from(pool))
            facts.append(("e", who, name, when, props))
    for _ in range(draw(st.integers(0, 3))):
        facts.append(("s", draw(st.sampled_from(IDENTITIES)), None, low, {"tier": "gold"}))
    for _ in range(draw(st.integers(0, 2))):
        a, b = draw(st.sampled_from(IDENTITIES)), draw(st.sampled_from(IDENTITIES))
        facts.append(("a", a, b, None, None))
    if facts:  # exact retries (SPEC §4)
        for index in draw(st.lists(st.integers(0, len(facts) - 1), max_size=2)):
            facts.append(facts[index])
    facts += [("e", "zz-seen", "Visited", low - 40 * DAY, {})]
    facts = draw(st.permutations(facts))
    recv0 = max(pool) + 60
    out: list[Fact] = []
    for slot, (kind, who, what, t, props) in enumerate(facts):
        recv = recv0 + slot // 2
        if kind == "e":
            out.append(Event(who, what, t, recv, props))
        elif kind == "s":
            out.append(Set(who, t, recv, props))
        else:
            out.append(Alias(who, what, recv))
    return tz, days, out


PERSON_WHERE = (
    None,
    [{"property": "tier", "op": "equals", "value": "gold"}],
    [{"property": "tier", "op": "has_no_value"}],
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    journey=journeys(),
    interval=st.sampled_from(("hour", "day", "week", "month")),
    buckets=st.sampled_from((1, 2, 5, 12)),
    unit=st.sampled_from(("people", "times")),
    count=st.sampled_from(("every_time", "first_time")),
    where=st.sampled_from((None, [{"property": "plan", "op": "equals", "value": "pro"}])),
    person_where=st.sampled_from(PERSON_WHERE),
)
def test_one_event_cohort_equals_the_oracle(
    journey: tuple[str, int, list[Fact]],
    interval: str,
    buckets: int,
    unit: str,
    count: str,
    where: list[dict[str, str]] | None,
    person_where: list[dict[str, str]] | None,
) -> None:
    tz, days, facts = journey
    body: dict[str, Any] = {"interval": interval, "buckets": buckets, "unit": unit, "count": count}
    if where:
        body["where"] = where
    if person_where:
        body["person_where"] = person_where
    got, expected = cohort(facts, tz, days, **body)
    diff = differences(got, expected)
    assert not diff, (diff, got, expected)
