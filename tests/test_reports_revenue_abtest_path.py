"""Revenue, A/B test and path reports (SPEC §9, §12; docs/reports.md), on stores
built from what clients sent (:mod:`journeys`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from journeys import T0, Row, alias, build, event, keys, sets
from tally.reports import Product, run_report
from tally.store.store import Store

ACME = Product("acme")
DAY0 = 1_698_796_800  # 2023-11-01T00:00:00Z
RECV = T0 + 40 * 86_400  # every record is received after the event times it carries
HOUR = 3_600
DAY = 86_400


def at(day: int, second: int = 0) -> int:
    """Second ``second`` of day ``day`` of November 2023 (UTC; day 0 is Nov 1)."""
    return DAY0 + day * DAY + second


def did(
    person: str,
    name: str,
    day: int,
    second: int = 0,
    props: dict[str, str] | None = None,
    *,
    ns: int = 0,
) -> Row:
    """``person`` did ``name`` at that event time; ``ns`` orders one second's events."""
    return event(person, name, RECV, props, t=at(day, second), d=True, ns=ns)


def set_on(person: str, day: int, props: dict[str, str], second: int = 0) -> Row:
    return sets(person, RECV, props, t=at(day, second), d=True)


def pay(person: str, day: int, amount: str, second: int = 0) -> Row:
    return set_on(person, day, {"Billing Amount": amount}, second)


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


def load(store: Store, rows: Sequence[Row]) -> Store:
    stats = store.apply(build(rows), keys)
    assert not stats.rejected, stats
    assert not stats.duplicates, stats
    return store


def report(store: Store, kind: str, body: dict[str, Any], product: Product = ACME) -> Any:
    return run_report(store.con, product, kind, body)


def days(first: int, last: int) -> dict[str, str]:
    """The range [day first, day last) of November 2023."""
    return {"from": f"2023-11-{first + 1:02d}", "to": f"2023-11-{last + 1:02d}"}


# -- revenue --------------------------------------------------------------------------------


def column(answer: dict[str, Any], name: str) -> list[Any]:
    return [period[name] for period in answer["series"]]


def test_revenue_counts_refunds_and_only_numeric_values(store: Store) -> None:
    load(store, [
        pay("ann", 0, "100", 10 * HOUR),
        pay("ann", 1, "-30", 10 * HOUR),  # a refund: revenue, but not a paying person
        pay("ann", 1, "$5", 11 * HOUR),  # not numeric (SPEC §2)
        pay("ben", 1, "1e1", 12 * HOUR),
        pay("ben", 2, "abc"),
        pay("ben", 2, "0", HOUR),  # numeric, but not a positive payment
        set_on("cy", 2, {"Plan": "pro"}),
    ])  # fmt: skip
    answer = report(store, "revenue", days(0, 3))
    assert [p["start"] for p in answer["series"]] == [
        "2023-11-01T00:00:00+00:00", "2023-11-02T00:00:00+00:00", "2023-11-03T00:00:00+00:00"
    ]  # fmt: skip
    assert column(answer, "revenue") == [100, -20, 0]
    assert column(answer, "paying") == [1, 1, 0]
    assert column(answer, "new") == [1, 1, 0]
    assert column(answer, "average_per_customer") == [100, -20, None]
    assert answer["total_revenue"] == 80
    assert answer["paying"] == 2
    assert answer["lifetime_value"] is None  # nobody churned (SPEC §12)


def test_revenue_new_is_the_first_positive_payment_ever(store: Store) -> None:
    load(store, [
        pay("ann", 0, "20"),  # before the range
        pay("ann", 3, "20"),
        pay("ben", 2, "-5"),  # a refund first: not yet a customer
        pay("ben", 3, "15"),
        pay("ben", 4, "15"),
        pay("cy", 4, "7"),
    ])  # fmt: skip
    answer = report(store, "revenue", {**days(2, 5), "churn_days": 30})
    assert column(answer, "paying") == [0, 2, 2]
    assert column(answer, "new") == [0, 1, 1]
    assert column(answer, "revenue") == [-5, 35, 22]
    assert column(answer, "average_per_customer") == [None, 17.5, 11]
    assert answer["paying"] == 3  # distinct over the range, not the sum of the series
    assert answer["total_revenue"] == 52


def test_revenue_churn_is_counted_where_the_moment_falls(store: Store) -> None:
    load(store, [
        pay("ann", 0, "10", 10 * HOUR),  # churns at day 3 10:00
        pay("ben", 0, "10", 10 * HOUR),
        pay("ben", 3, "10", 10 * HOUR),  # exactly 3 days later: not "more than"
        pay("cy", 0, "10", 10 * HOUR),
        pay("cy", 3, "10", 10 * HOUR + 1),  # a second too late: churned at day 3 10:00
        pay("dee", 0, "10", 10 * HOUR),
        pay("dee", 2, "-10", 10 * HOUR),  # a refund is not a payment that keeps a customer
        pay("eli", 1, "10"),  # churns at day 4 00:00, which is `to`: not counted
    ])  # fmt: skip
    answer = report(store, "revenue", {**days(1, 4), "churn_days": 3})
    # ann, cy and dee, whose payments before the range churn in it.
    assert column(answer, "churned") == [0, 0, 3]
    assert answer["total_revenue"] == 20  # eli's 10, dee's -10, ben's and cy's 10
    assert answer["lifetime_value"] == pytest.approx(20 / 3)
    later = report(store, "revenue", {**days(1, 8), "churn_days": 3})
    # eli at day 4 00:00; ben and cy 3 days after their payments on day 3.
    assert column(later, "churned") == [0, 0, 3, 1, 0, 2, 0]
    assert later["lifetime_value"] == pytest.approx(20 / 5)


def test_revenue_churn_is_per_person_in_a_period(store: Store) -> None:
    load(store, [
        pay("ann", 0, "10", HOUR),
        pay("ann", 2, "10", 2 * HOUR),
    ])  # fmt: skip
    answer = report(store, "revenue", {**days(0, 5), "churn_days": 1})
    assert column(answer, "churned") == [0, 1, 0, 1, 0]  # twice, on days 1 and 3
    # Both in the week of Monday Oct 30: one person churned.
    weekly = report(store, "revenue", {**days(0, 5), "churn_days": 1, "interval": "week"})
    assert [(p["start"], p["churned"]) for p in weekly["series"]] == [
        ("2023-10-30T00:00:00+00:00", 1)
    ]  # fmt: skip
    assert weekly["lifetime_value"] == 20


def test_revenue_periods_are_in_the_products_time_zone(store: Store) -> None:
    load(store, [pay("ann", 1, "10", 3 * HOUR), pay("ben", 1, "5", 6 * HOUR)])
    answer = report(store, "revenue", days(0, 2), Product("acme", timezone="America/New_York"))
    # 03:00Z on Nov 2 is still Nov 1 in New York (UTC-4); 06:00Z is Nov 2.
    assert [(p["start"], p["revenue"]) for p in answer["series"]] == [
        ("2023-11-01T00:00:00-04:00", 10), ("2023-11-02T00:00:00-04:00", 5)
    ]  # fmt: skip


def test_revenue_counts_aliased_identities_as_one_person(store: Store) -> None:
    load(store, [
        pay("anon-1", 0, "10"),
        pay("ann@mail", 1, "10"),
        alias("anon-1", "ann@mail", RECV + 5),  # arrives after both payments
        pay("ben", 1, "10"),
    ])  # fmt: skip
    answer = report(store, "revenue", days(0, 2))
    assert column(answer, "new") == [1, 1]  # ann's second payment is not her first
    assert column(answer, "paying") == [1, 2]
    assert answer["paying"] == 2


def test_revenue_person_where(store: Store) -> None:
    load(store, [
        pay("ann", 0, "10"), set_on("ann", 0, {"Plan": "pro"}),
        pay("ben", 0, "20"), set_on("ben", 0, {"Plan": "free"}),
    ])  # fmt: skip
    body = {**days(0, 1), "person_where": [{"property": "plan", "op": "equals", "value": "pro"}]}
    assert report(store, "revenue", body)["total_revenue"] == 10


# -- A/B test -------------------------------------------------------------------------------


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def experiment(variants: dict[str, tuple[int, int]]) -> list[Row]:
    """For each variant, ``n`` people who saw it on day 1, ``c`` of whom bought on day 2."""
    rows = []
    for variant, (n, c) in variants.items():
        for i in range(n):
            person = f"{variant}{i}"
            rows.append(set_on(person, 1, {"Checkout": variant}))
            if i < c:
                rows.append(did(person, "Bought", 2))
    return rows


def abtest(store: Store, **body: Any) -> Any:
    return report(store, "abtest", {**days(0, 5), "experiment": "checkout",
                                    "conversion": "bought", **body})  # fmt: skip


def test_abtest_certainty_is_the_normal_approximation(store: Store) -> None:
    load(store, experiment({"A": (4, 1), "B": (4, 3), "C": (2, 0)}))
    answer = abtest(store)
    # B against A: p_b = 1/4, p_v = 3/4, n = 4 each.
    spread = math.sqrt(0.25 * 0.75 / 4 + 0.75 * 0.25 / 4)
    assert spread == pytest.approx(0.306186, abs=1e-6)
    b_certainty = phi((0.75 - 0.25) / spread)
    assert b_certainty == pytest.approx(0.948, abs=1e-3)  # Φ(1.633): just below 0.95
    c_certainty = phi((0 - 0.25) / math.sqrt(0.25 * 0.75 / 4))
    assert answer == {
        "variants": [
            {"name": "A", "participants": 4, "conversions": 1, "rate": 0.25,
             "improvement": 0.0, "certainty": None},
            {"name": "B", "participants": 4, "conversions": 3, "rate": 0.75,
             "improvement": pytest.approx(2.0), "certainty": pytest.approx(b_certainty)},
            {"name": "C", "participants": 2, "conversions": 0, "rate": 0.0,
             "improvement": pytest.approx(-1.0), "certainty": pytest.approx(c_certainty)},
        ],
        "baseline": "A",
        "winner": None,  # no certainty above 0.95
    }  # fmt: skip


def test_abtest_winner_has_the_highest_certainty_above_095(store: Store) -> None:
    load(store, experiment({"A": (10, 2), "B": (10, 8), "C": (10, 6)}))
    answer = abtest(store)
    certainty = {v["name"]: v["certainty"] for v in answer["variants"]}
    assert certainty["B"] == pytest.approx(phi(0.6 / math.sqrt(0.016 + 0.016)))
    assert certainty["C"] == pytest.approx(phi(0.4 / math.sqrt(0.016 + 0.024)))
    assert certainty["C"] > 0.95
    assert answer["winner"] == "B"
    # Against B as the baseline, nobody is better.
    answer = abtest(store, baseline="B")
    assert answer["baseline"] == "B"
    assert [v["certainty"] is None for v in answer["variants"]] == [False, True, False]
    assert answer["variants"][0]["improvement"] == pytest.approx((0.2 - 0.8) / 0.8)
    assert answer["winner"] is None


def test_abtest_certainty_is_null_when_the_spread_is_zero(store: Store) -> None:
    load(store, experiment({"A": (3, 0), "B": (2, 0)}))
    variants = abtest(store)["variants"]
    assert [(v["rate"], v["improvement"], v["certainty"]) for v in variants] == [
        (0, None, None), (0, None, None)  # the baseline's rate is 0: no improvement either
    ]  # fmt: skip


def test_abtest_exposure_is_the_first_value_set_in_range(store: Store) -> None:
    load(store, [
        set_on("ann", 0, {"Checkout": "B"}),  # before the range: not an exposure
        set_on("ann", 2, {"Checkout": "A"}, 10),
        set_on("ann", 3, {"Checkout": "B"}),  # a later value does not move her
        did("ann", "Bought", 2, 5),  # before her exposure
        set_on("ben", 2, {"Checkout": "B"}, 10),
        did("ben", "Bought", 2, 10),  # the same second counts
        set_on("cy", 2, {"Checkout": "B"}),
        did("cy", "Bought", 5),  # at `to`: not counted
        set_on("dee", 6, {"Checkout": "A"}),  # after the range: not a participant
        did("eli", "Bought", 2),  # never exposed
    ])  # fmt: skip
    answer = abtest(store, **days(1, 5))
    assert [(v["name"], v["participants"], v["conversions"]) for v in answer["variants"]] == [
        ("A", 1, 0), ("B", 2, 1)
    ]  # fmt: skip
    assert answer["variants"][1]["improvement"] is None  # A's rate is 0
    assert answer["variants"][1]["certainty"] == pytest.approx(phi(0.5 / math.sqrt(0.25 / 2)))


def test_abtest_where_filters_the_conversion_and_person_where_the_people(store: Store) -> None:
    load(store, [
        set_on("ann", 1, {"Checkout": "A", "Country": "NZ"}),
        did("ann", "Bought", 2, props={"Plan": "pro"}),
        set_on("ben", 1, {"Checkout": "A", "Country": "NZ"}),
        did("ben", "Bought", 2, props={"Plan": "free"}),
        set_on("cy", 1, {"Checkout": "A", "Country": "AU"}),
        did("cy", "Bought", 2, props={"Plan": "pro"}),
    ])  # fmt: skip
    answer = abtest(
        store,
        where=[{"property": "plan", "op": "equals", "value": "pro"}],
        person_where=[{"property": "country", "op": "equals", "value": "NZ"}],
    )
    assert answer["variants"] == [
        {"name": "A", "participants": 2, "conversions": 1, "rate": 0.5, "improvement": 0.0,
         "certainty": None}
    ]  # fmt: skip


def test_abtest_merges_aliased_identities(store: Store) -> None:
    load(store, [
        set_on("anon", 1, {"Checkout": "B"}),
        set_on("ann", 2, {"Checkout": "A"}),
        did("ann", "Bought", 1),  # in the second of the (merged) person's exposure
        did("anon", "Bought", 3),
        alias("anon", "ann", RECV + 1),
    ])  # fmt: skip
    answer = abtest(store)
    assert [(v["name"], v["participants"], v["conversions"]) for v in answer["variants"]] == [
        ("B", 1, 1)
    ]  # fmt: skip
    assert abtest(store, baseline="A")["variants"][0]["certainty"] is None


def test_abtest_without_participants(store: Store) -> None:
    load(store, [did("ann", "Bought", 1)])
    assert abtest(store) == {"variants": [], "baseline": None, "winner": None}


# -- path -----------------------------------------------------------------------------------


def path(store: Store, **body: Any) -> Any:
    return report(store, "path", {**days(0, 10), "start": "signed up",
                                  "conversion": "bought", **body})  # fmt: skip


def journey(person: str, names: Sequence[str], day: int = 1, step: int = 60) -> list[Row]:
    """``person`` did ``names`` in order on day ``day``, ``step`` seconds apart."""
    return [did(person, name, day, i * step) for i, name in enumerate(names)]


def test_path_collapses_runs_and_uses_display_names(store: Store) -> None:
    load(store, [
        did("zed", "Viewed Page", 0),  # the first spelling seen
        *journey("ann", ["Signed Up", "viewed page", "VIEWED PAGE", "Viewed,Page", "Clicked",
                         "viewed page", "Bought"]),
    ])  # fmt: skip
    assert path(store) == {
        "paths": [{"steps": ["Viewed Page 3X", "Clicked", "Viewed Page"], "people": 1,
                   "median_seconds": 360.0}],
        "converted": 1,
    }  # fmt: skip


def test_path_first_or_last_five(store: Store) -> None:
    names = ["Signed Up", "A", "B", "B", "C", "D", "E", "F", "F", "F", "Bought"]
    load(store, journey("ann", names))
    first = path(store)["paths"][0]["steps"]
    last = path(store, direction="last")["paths"][0]["steps"]
    assert first == ["A", "B 2X", "C", "D", "E"]
    assert last == ["B 2X", "C", "D", "E", "F 3X"]


def test_path_direct_conversion_and_grouping(store: Store) -> None:
    load(store, [
        *journey("ann", ["Signed Up", "Bought"], step=10),
        *journey("ben", ["Signed Up", "Bought"], step=30),
        *journey("cy", ["Signed Up", "Viewed", "Bought"], step=100),
        *journey("dee", ["Signed Up", "Viewed", "Bought"], step=200),
        *journey("eli", ["Signed Up", "Viewed", "Bought"], step=1000),
        *journey("fay", ["Signed Up", "Clicked", "Bought"]),
        *journey("gus", ["Signed Up", "Asked", "Bought"]),
        *journey("hal", ["Signed Up", "Viewed"]),  # never converted
    ])  # fmt: skip
    answer = path(store)
    assert answer == {
        "paths": [
            {"steps": ["Viewed"], "people": 3, "median_seconds": 400.0},
            {"steps": [], "people": 2, "median_seconds": 20.0},  # the mean of the middle two
            {"steps": ["Asked"], "people": 1, "median_seconds": 120.0},  # ties by steps
            {"steps": ["Clicked"], "people": 1, "median_seconds": 120.0},
        ],
        "converted": 7,
    }
    limited = path(store, limit=2)
    assert [p["steps"] for p in limited["paths"]] == [["Viewed"], []]
    assert limited["converted"] == 7


def test_path_start_is_the_first_in_range_and_conversion_at_or_after_it(store: Store) -> None:
    load(store, [
        did("ann", "Signed Up", 0),  # before the range
        did("ann", "Bought", 2),  # before her first start in range
        did("ann", "Signed Up", 3),
        did("ann", "Viewed", 3, 5),
        did("ann", "Signed Up", 3, 10),  # a later start is a step
        did("ann", "Bought", 3, 20),
        did("ann", "Viewed", 3, 30),  # after the conversion
        did("ann", "Bought", 3, 40),
        # ben's conversion shares the start's second but arrived first: the same
        # second counts, and nothing lies between the two.
        did("ben", "Bought", 4, ns=1),
        did("ben", "Signed Up", 4, ns=2),
        did("ben", "Viewed", 4, ns=3),
        did("ben", "Bought", 4, 5),
        # cy converts only after `to`.
        did("cy", "Signed Up", 5),
        did("cy", "Bought", 9),
    ])  # fmt: skip
    answer = path(store, **days(1, 9))
    assert answer == {
        "paths": [
            {"steps": [], "people": 1, "median_seconds": 0.0},
            {"steps": ["Viewed", "Signed Up"], "people": 1, "median_seconds": 20.0},
        ],
        "converted": 2,
    }


def test_path_when_start_and_conversion_are_one_event(store: Store) -> None:
    load(store, [
        *journey("ann", ["Viewed", "Viewed", "Clicked", "Viewed"]),
        did("ben", "Viewed", 1, 0, {"n": "1"}, ns=1),
        did("ben", "Viewed", 1, 0, {"n": "2"}, ns=2),  # the same second, another occurrence
    ])  # fmt: skip
    answer = path(store, start="viewed", conversion="viewed")
    assert answer["paths"] == [
        {"steps": [], "people": 2, "median_seconds": pytest.approx(30.0)},
    ]  # fmt: skip
    assert answer["converted"] == 2


def test_path_where_applies_to_start_and_conversion(store: Store) -> None:
    load(store, [
        did("ann", "Signed Up", 1, 0, {"src": "ad"}),
        did("ann", "Signed Up", 1, 10, {"src": "web"}),
        did("ann", "Bought", 1, 20, {"src": "web"}),
        did("ann", "Bought", 1, 30, {"src": "ad"}),
    ])  # fmt: skip
    answer = path(store, where=[{"property": "src", "op": "equals", "value": "ad"}])
    # Steps are any events between, whatever their properties.
    assert answer["paths"] == [
        {"steps": ["Signed Up", "Bought"], "people": 1, "median_seconds": 30.0}
    ]  # fmt: skip


def test_path_merges_aliased_identities(store: Store) -> None:
    load(store, [
        did("anon", "Signed Up", 1),
        did("anon", "Viewed", 1, 10),
        did("ann", "Viewed", 1, 20),
        did("ann", "Clicked", 1, 30),
        did("ann", "Bought", 1, 40),
        alias("ann", "anon", RECV + 9),  # after every event
        did("ben", "Signed Up", 1),
        did("ben", "Bought", 1, 40),
    ])  # fmt: skip
    answer = path(store)
    assert answer == {
        "paths": [
            {"steps": [], "people": 1, "median_seconds": 40.0},
            {"steps": ["Viewed 2X", "Clicked"], "people": 1, "median_seconds": 40.0},
        ],
        "converted": 2,
    }


def test_path_person_where(store: Store) -> None:
    load(store, [
        *journey("ann", ["Signed Up", "Bought"]),
        *journey("ben", ["Signed Up", "Viewed", "Bought"]),
        set_on("ben", 0, {"Plan": "pro"}),
    ])  # fmt: skip
    answer = path(store, person_where=[{"property": "plan", "op": "equals", "value": "pro"}])
    assert answer["paths"] == [{"steps": ["Viewed"], "people": 1, "median_seconds": 120.0}]
    assert answer["converted"] == 1
