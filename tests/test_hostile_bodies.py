"""Hostile report bodies and requests get a 400 in the one JSON error shape,
never a 500 (docs/reports.md "Limits", docs/http-api.md "Errors").

Each case here was once a 500, or a plain-text 400: a body nested 1,000 deep,
a number beyond a double, a lone surrogate, a date past Python's calendar, a
NUL in a header. A real server answers them and must log no traceback; the
edges of each limit are checked in process, every report on a real store.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle import loaded
from serverproc import RunningServer
from tally.errors import InvalidInput
from tally.reports import KINDS, Product, parse, run_report
from tally.reports.query import (
    EARLIEST_DATE,
    FILTER_OPS,
    INTERVALS,
    LATEST_DATE,
    MAX_JSON_DEPTH,
    json_object,
)
from tally.store.store import Store
from wire import Response, connect, get, read_responses, read_until_closed

HUGE = "1" + "0" * 400  # 10**400: JSON allows it, no double holds it
DEEP = b"[" * 1000 + b"]" * 1000
LONE = '"\\ud800"'  # a lone surrogate, as JSON spells it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path_factory.mktemp("hostile") / "data").start()
    yield running
    assert running.stop() == 0, running.stderr
    assert "Traceback" not in running.stderr, running.stderr


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as c:
        yield c


def error(response: httpx.Response | Response, field: str) -> str:
    """The message of the one JSON error shape: a 400 ``invalid_input`` naming ``field``."""
    if isinstance(response, httpx.Response):
        status, content = response.status_code, response.content
    else:
        status, content = response.status, response.body
    assert status == 400, content
    assert response.headers["content-type"] == "application/json"
    body = json.loads(content)
    assert set(body) == {"error"}
    assert body["error"]["code"] == "invalid_input", body
    assert body["error"]["field"] == field, body
    message: str = body["error"]["message"]
    return message


def where(op: str, value: str) -> str:
    return f'[{{"property": "Plan", "op": "{op}", "value": {value}}}]'


# (kind, raw JSON body, the field named, words the message holds)
HOSTILE = [
    pytest.param("metrics", b'{"event": "A", "from": ' + DEEP + b"}", "body", "32",
                 id="a field nested 1,000 deep"),
    pytest.param("funnel", DEEP, "body", "32", id="a body of arrays nested 1,000 deep"),
    pytest.param("metrics", f'{{"event": "A", "where": {where("gt", HUGE)}}}', "where[0].value",
                 "1.8e308", id="gt 10**400"),
    pytest.param("metrics", f'{{"event": "A", "person_where": {where("lte", "-" + HUGE)}}}',
                 "person_where[0].value", "1.8e308", id="person_where lte -10**400"),
    pytest.param("funnel", f'{{"steps": ["A", {{"event": "B", "where": {where("lt", HUGE)}}}]}}',
                 "steps[1].where[0].value", "1.8e308", id="a funnel step's lt 10**400"),
    pytest.param("people", f'{{"conditions": [{{"type": "property", "property": "Plan", '
                 f'"op": "gte", "value": {HUGE}}}]}}', "conditions[0].value", "1.8e308",
                 id="a people property condition gte 10**400"),
    pytest.param("people", f'{{"conditions": [{{"type": "event", "event": "A", '
                 f'"where": {where("gt", HUGE)}}}]}}', "conditions[0].where[0].value", "1.8e308",
                 id="a people event condition's gt 10**400"),
    pytest.param("metrics", '{"event": "\\ud800"}', "event", "surrogate",
                 id="an event name that is a lone surrogate"),
    pytest.param("funnel", '{"steps": ["A", "B\\udfff"]}', "steps[1]", "surrogate",
                 id="a funnel step named with a lone surrogate"),
    pytest.param("metrics", f'{{"event": "A", "where": {where("equals", LONE)}}}',
                 "where[0].value", "surrogate", id="a filter value with a lone surrogate"),
    pytest.param("abtest", '{"experiment": "E", "conversion": "C", "baseline": "\\udc80"}',
                 "baseline", "surrogate", id="an A/B baseline with a lone surrogate"),
    pytest.param("people", b'{"conditions": [{"type": "identity", "value": "\xed\xa0\x80"}]}',
                 "conditions[0].value", "surrogate", id="a surrogate sent as raw bytes"),
    pytest.param("metrics", '{"event": "A", "to": "9999-12-31", "interval": "month"}', "to",
                 "2200-01-01", id="to 9999-12-31 by month"),
    pytest.param("metrics", '{"event": "A", "to": "9999-12-31", "interval": "week"}', "to",
                 "2200-01-01", id="to 9999-12-31 by week"),
    pytest.param("cohort", '{"first_event": "A", "return_event": "B", "from": "9999-12-01", '
                 '"to": "9999-12-31", "interval": "month"}', "from", "2200-01-01",
                 id="a cohort in 9999"),
    pytest.param("metrics", '{"event": "A", "from": "0001-01-01T00:00:00+14:00"}', "from",
                 "1970-01-01", id="from year 1 at +14:00"),
    pytest.param("metrics", '{"event": "A", "from": "1969-12-31T23:59:59Z"}', "from",
                 "1970-01-01", id="from a second before 1970"),
    pytest.param("people", '{"conditions": [{"type": "event", "event": "A", '
                 '"to": "2200-01-01T00:00:01"}]}', "conditions[0].to", "2200-01-01",
                 id="a people condition to a second after 2200"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "body", "field", "words"), HOSTILE)
def test_a_hostile_body_is_a_400_naming_its_field(
    client: httpx.Client, kind: str, body: str | bytes, field: str, words: str
) -> None:
    response = client.post(f"/api/v1/products/default/reports/{kind}", content=body)
    assert words in error(response, field)


def test_a_replay_reason_with_a_lone_surrogate_is_a_400(client: httpx.Client) -> None:
    response = client.post("/api/v1/products/default/rejects/replay",
                           content=b'{"reason": "\\ud800"}')  # fmt: skip
    assert error(response, "reason")


def test_a_nul_in_a_header_is_the_json_400_and_a_tracking_call_still_gets_its_gif(
    server: RunningServer,
) -> None:
    secret = server.token.encode()
    with connect(server.port) as sock:
        sock.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + secret + b"\x00\r\n\r\n")  # fmt: skip
        found = Response.parse(read_until_closed(sock))
    assert found is not None
    response = found[0]
    assert response.status == 400
    assert "NUL" in error(response, "Authorization")
    assert secret not in response.body  # never echoed

    with connect(server.port) as sock:
        sock.sendall(get(f"/e?_k={server.api_key}&_p=bob&_n=Signed+Up",
                         extra=b"X-Odd: a\x00b\r\n"))  # fmt: skip
        assert read_responses(sock, 1)[0].is_gif()


# -- in process: the edges of each limit ------------------------------------------------------


def test_a_body_may_nest_as_deep_as_the_limit() -> None:
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert json_object(f'{{"a": {nested}}}', "body", "the body")
    with pytest.raises(InvalidInput, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        json_object(f'{{"a": [{nested}]}}', "body", "the body")
    # Brackets inside strings are text, not nesting.
    assert json_object('{"a": "' + "[" * 1000 + '"}', "body", "the body")


@given(st.text('[]{}",:\\ 0a', max_size=300) | st.text(max_size=300) | st.binary(max_size=300))
def test_any_text_is_a_json_object_or_an_invalid_input(text: str | bytes) -> None:
    with contextlib.suppress(InvalidInput):
        assert isinstance(json_object(text, "body", "the body"), dict)


# Bodies of the right shape with hostile leaves: any name (lone surrogates
# included), any number, any date or timestamp Python can write.
NAMES = st.sampled_from(["Signed Up", "Plan"]) | st.text(st.characters(codec=None), max_size=3)
NUMBERS = st.integers() | st.floats() | st.sampled_from([10**400, -(10**400), 2**63, -(2**64)])
VALUES = st.none() | st.booleans() | NUMBERS | NAMES | NUMBERS.map(str)
WHEN = (
    st.dates(date(2025, 1, 1), date(2026, 12, 31)) | st.dates()
    | st.datetimes(timezones=st.none() | st.timezones())
).map(lambda when: when.isoformat())  # fmt: skip
FILTERS = st.lists(
    st.fixed_dictionaries({"property": NAMES, "op": st.sampled_from(FILTER_OPS)},
                          optional={"value": VALUES}),
    max_size=2,
)  # fmt: skip
COMMON = {
    "from": WHEN,
    "to": WHEN,
    "where": FILTERS,
    "person_where": FILTERS,
    "interval": st.sampled_from(INTERVALS),
    "unit": st.sampled_from(["people", "times"]),
}
CONDITIONS = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("event"), "event": NAMES},
        optional={
            "where": FILTERS,
            "from": WHEN,
            "to": WHEN,
            "did": VALUES,
            "count": st.fixed_dictionaries({"op": st.just("at_most"), "value": NUMBERS}),
        },
    )
    | st.fixed_dictionaries(
        {"type": st.just("property"), "property": NAMES, "op": st.sampled_from(FILTER_OPS)},
        optional={"value": VALUES},
    )
    | st.fixed_dictionaries({"type": st.just("identity"), "value": VALUES}),
    max_size=2,
)
SHAPES = {
    "metrics": ({"event": NAMES}, {"property": NAMES, "measure": st.just("sum")}),
    "funnel": ({"steps": st.lists(NAMES | st.fixed_dictionaries({"event": NAMES, "where": FILTERS}),
                                  min_size=2, max_size=3)}, {"window": NUMBERS}),
    "cohort": ({"first_event": NAMES, "return_event": NAMES}, {"buckets": NUMBERS}),
    "revenue": ({}, {"churn_days": NUMBERS}),
    "abtest": ({"experiment": NAMES, "conversion": NAMES}, {"baseline": VALUES}),
    "path": ({"start": NAMES, "conversion": NAMES}, {"limit": NUMBERS}),
    "people": ({"conditions": CONDITIONS}, {"page": NUMBERS, "page_size": NUMBERS}),
}  # fmt: skip
BODIES_OF_EVERY_KIND = st.one_of(
    st.tuples(st.just(kind), st.fixed_dictionaries(required, optional={**COMMON, **optional}))
    for kind, (required, optional) in SHAPES.items()
)


@pytest.fixture(scope="module")
def empty_store() -> Iterator[Store]:
    with loaded([]) as store:
        yield store


@settings(max_examples=300, deadline=None)
@given(BODIES_OF_EVERY_KIND)
def test_any_body_is_an_answer_or_an_invalid_input(
    empty_store: Store, asked: tuple[str, dict[str, Any]]
) -> None:
    kind, body = asked
    product = Product("acme", "Pacific/Kiritimati")
    try:
        query = parse(kind, body, product, now=1_767_268_800)
    except InvalidInput:
        return
    if query.common.end - query.common.start <= 400 * 86_400:  # longer ones are slow, not wrong
        run_report(empty_store.con, product, kind, body, now=1_767_268_800)


def test_a_command_line_argument_that_is_not_utf8_is_an_invalid_input() -> None:
    # Python reads argv bytes that are not UTF-8 as lone surrogates: the CLI's
    # bodies reach parse() without passing json_object.
    with pytest.raises(InvalidInput) as raised:
        parse("metrics", {"event": "Signed \udcff Up"}, Product("acme"))
    assert raised.value.field == "event"


EDGES = [("1970-01-01", "1970-01-02"), ("2199-12-31", "2200-01-01"),
         ("1970-01-01T00:00:00", "1970-01-01T06:00:00-14:00")]  # fmt: skip
BODIES: dict[str, dict[str, Any]] = {
    "metrics": {"event": "A", "measure": "sum", "property": "Amount",
                "where": [{"property": "Amount", "op": "gt", "value": -1.7e308}]},
    "funnel": {"steps": ["A", "B"], "window": 10 * 366 * 86_400},
    "cohort": {"first_event": "A", "return_event": "A", "buckets": 100},
    "revenue": {"churn_days": 3650},
    "abtest": {"experiment": "E", "conversion": "A"},
    "path": {"start": "A", "conversion": "B"},
    "people": {"conditions": [{"type": "event", "event": "A", "did": False}],
               "columns": [{"type": "event", "event": "A", "which": "count"}]},
}  # fmt: skip


@pytest.mark.parametrize("timezone", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"])
def test_every_report_answers_at_the_ends_of_the_date_range(timezone: str) -> None:
    assert set(BODIES) == set(KINDS)
    product = Product("acme", timezone)
    with loaded([]) as store:
        for kind, body in BODIES.items():
            for start, end in EDGES:
                for interval in ("hour", "day", "week", "month"):
                    asked = {**body, "from": start, "to": end, "interval": interval}
                    assert isinstance(run_report(store.con, product, kind, asked), dict)


def test_the_limits_are_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "reports.md").read_text()
    assert f"`{EARLIEST_DATE:%Y-%m-%d}`" in docs
    assert f"`{LATEST_DATE:%Y-%m-%d}`" in docs
    assert f"at most {MAX_JSON_DEPTH} levels" in docs
