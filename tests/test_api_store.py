"""The read API over the store (issue 3; SPEC §5 to §7, §9 "Person").

One server, fed once with Bob's story: events under an anonymous id, then an
alias, then events and properties under his e-mail and a device id; plus other
people, an exact retry and rejected records. The tests read it back through
``/api/v1/status``, ``…/people/{identity}``, ``…/events`` and ``…/rejects``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner

from serverproc import RunningServer
from tally.cli import main
from tally.wire import GIF

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
T1 = T0 + 86_400
BOB = "bob@example.com"
ANON = "anon-7f3a"
PHONE = "Bob.Phone-42"  # the smallest identity, so the person's name
ZOE = "Zoë/山田@x.example"
ODD = "100%/x?y#z"
UNKNOWN_KEY = "a" * 40
ISO_SECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ISO_MILLI = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Api:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.client = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=10,
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get("/api/v1" + path, params=params)

    def ok(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()

    def person(self, identity: str, **params: Any) -> Any:
        return self.ok("/products/default/people/" + quote(identity, safe=""), **params)


def error(response: httpx.Response, status: int, code: str, field: str | None = None) -> str:
    """Assert the one JSON error shape; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    expected = {"code", "message"} | ({"field"} if field else set())
    assert set(body["error"]) == expected, body
    assert body["error"]["code"] == code, body
    if field:
        assert body["error"]["field"] == field, body
    message: str = body["error"]["message"]
    assert message
    return message


def feed(server: RunningServer) -> None:
    """Bob's story and the rest, one call at a time (so in this receive order)."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        def send(path: str, key: str = server.api_key, **params: str) -> None:
            response = client.get(path, params={"_k": key, **params})
            assert response.status_code == 200
            assert response.content == GIF

        at = {"_d": "1"}
        send("/e", _p=ANON, _n="Viewed Pricing", _t=str(T0), page="pricing", **at)
        send("/s", _p=ANON, _t=str(T0 + 10), Plan="free", Referrer="google", **at)
        send("/a", _p=ANON, _n=BOB)
        for _ in range(2):  # the second is an exact retry
            send("/e", _p=BOB, _n="Signed Up", _t=str(T0 + 60), Plan="pro", **at)
        send("/s", _p=BOB, _t=str(T0 + 120), Plan="enterprise", **at)
        send("/e", _p=BOB, _n="SIGNED  UP", _t=str(T0 + 200), **at)  # same event key
        send("/a", _p=BOB, _n=PHONE)
        send("/e", _p=PHONE, _n="Opened App", _t=str(T0 + 300), **at)
        send("/e", _p=ZOE, _n="viewed pricing", _t=str(T0 + 30), **at)
        send("/e", _p=ODD, _n="Viewed Pricing", _t=str(T0 + 40), **at)
        for k in range(5):
            send("/e", _p="dave", _n="Purchased", _t=str(T1 + 60 * k), Amount=str(10 * k), **at)
        send("/e", key=UNKNOWN_KEY, _p="mallory", _n="Stole")
        send("/e", _p="null", _n="Blocked")
        send("/e", _p="carol", _n="Too Early", _t="1000", **at)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = RunningServer(tmp_path_factory.mktemp("api") / "data").start()
    reader = Api(server)
    try:
        feed(server)
        fed = time.monotonic()
        # "Within seconds" of the last call, everything is readable.
        deadline = fed + 5
        while reader.ok("/status")["pipeline"]["lag_records"]:
            assert time.monotonic() < deadline, "the pipeline did not catch up in 5 s"
            time.sleep(0.05)
        yield reader
    finally:
        reader.client.close()
        code = server.stop()
    assert code == 0, server.stderr
    assert "Traceback" not in server.stderr, server.stderr


# -- person -----------------------------------------------------------------------------------


def test_bob_is_one_person_with_all_his_identities_properties_and_events(api: Api) -> None:
    bob = api.person(BOB)
    assert bob["product"] == "default"
    assert bob["person"] == PHONE
    assert bob["identity"] == BOB
    assert bob["identities"] == [PHONE, ANON, BOB]

    properties = {p["name"]: p for p in bob["properties"]}
    assert list(properties) == ["Plan", "Referrer", "page"]
    assert properties["Plan"] == {
        "name": "Plan",
        "key": "plan",
        "value": "enterprise",
        "first_value": "free",
        "first_time": iso(T0 + 10),
        "last_value": "enterprise",
        "last_time": iso(T0 + 120),
        "values": 3,  # the exact retry added none
        "history": [
            {"value": "enterprise", "time": iso(T0 + 120), "identity": BOB},
            {"value": "pro", "time": iso(T0 + 60), "identity": BOB},
            {"value": "free", "time": iso(T0 + 10), "identity": ANON},
        ],
    }
    assert properties["Referrer"]["value"] == properties["Referrer"]["first_value"] == "google"
    assert properties["page"]["history"] == [
        {"value": "pricing", "time": iso(T0), "identity": ANON}
    ]

    events = bob["events"]
    assert (events["total"], events["page"], events["page_size"]) == (4, 1, 50)
    # Newest first, including what was sent under the anonymous id before the alias.
    assert [(e["event"], e["key"], e["identity"], e["time"], e["properties"])
            for e in events["items"]] == [
        ("Opened App", "opened app", PHONE, iso(T0 + 300), {}),
        ("Signed Up", "signed up", BOB, iso(T0 + 200), {}),  # the first spelling seen
        ("Signed Up", "signed up", BOB, iso(T0 + 60), {"Plan": "pro"}),
        ("Viewed Pricing", "viewed pricing", ANON, iso(T0), {"page": "pricing"}),
    ]  # fmt: skip
    assert all(ISO_MILLI.match(e["received"]) for e in events["items"])


def test_every_identity_of_bob_shows_the_same_person(api: Api) -> None:
    bob = api.person(BOB)
    for identity in (ANON, PHONE, f"  {BOB} "):
        other = api.person(identity)
        assert other["identity"] == identity.strip()
        for part in ("person", "identities", "properties", "events"):
            assert other[part] == bob[part], (identity, part)


def test_the_person_explains_why_identities_are_one_person(api: Api) -> None:
    asked = api.person(ANON)["aliases"]
    edges = asked["edges"]
    assert [(e["a"], e["b"], e["status"]) for e in edges] == [
        (ANON, BOB, "accepted"),
        (BOB, PHONE, "accepted"),
    ]
    for edge in edges:
        assert ISO_SECOND.match(edge["time"])
        assert ISO_MILLI.match(edge["received"])
        assert edge["received"].startswith(edge["time"][:-1])
    assert edges[0]["received"] < edges[1]["received"]
    # From the anonymous id to the device: through the e-mail, with the times.
    assert asked["explanations"] == [
        {"identity": PHONE, "path": [edges[0], edges[1]]},
        {"identity": BOB, "path": [edges[0]]},
    ]
    from_bob = api.person(BOB)["aliases"]["explanations"]
    assert from_bob == [
        {"identity": PHONE, "path": [edges[1]]},
        {"identity": ANON, "path": [edges[0]]},
    ]


def test_a_person_alone_has_no_aliases(api: Api) -> None:
    dave = api.person("dave")
    assert dave["identities"] == ["dave"]
    assert dave["person"] == "dave"
    assert dave["aliases"] == {"edges": [], "explanations": []}
    assert dave["events"]["total"] == 5
    [amount] = dave["properties"]
    assert (amount["value"], amount["first_value"], amount["values"]) == ("40", "0", 5)


@pytest.mark.parametrize("identity", [ZOE, ODD])
def test_identities_with_slash_at_percent_and_unicode_work_url_encoded(
    api: Api, identity: str
) -> None:
    person = api.person(identity)
    assert person["identity"] == identity
    assert person["identities"] == [identity]
    [event] = person["events"]["items"]
    assert event["identity"] == identity
    assert event["event"] == "Viewed Pricing"  # display: the first spelling in the order
    events = api.ok("/products/default/events", identity=identity)
    assert [e["identity"] for e in events["items"]] == [identity]


def test_the_person_timeline_is_paginated(api: Api) -> None:
    everything = api.person(BOB)["events"]["items"]
    pages = [api.person(BOB, page=n, page_size=3)["events"] for n in (1, 2, 3)]
    assert [len(p["items"]) for p in pages] == [3, 1, 0]
    assert all(p["total"] == 4 and p["page_size"] == 3 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3]
    assert pages[0]["items"] + pages[1]["items"] == everything


@pytest.mark.parametrize(
    "identity",
    [
        "nobody",
        "mallory",  # only in a record with an unknown key
        "carol",  # only in a record rejected for its time
        "null",  # blocked
        "BOB@EXAMPLE.COM",  # identities are case-sensitive
        " ",
    ],
)
def test_an_unknown_identity_is_404(api: Api, identity: str) -> None:
    response = api.get("/products/default/people/" + quote(identity, safe=""))
    assert identity.strip() in error(response, 404, "not_found", "identity")


def test_an_unknown_product_is_404(api: Api) -> None:
    for path in ("/people/" + quote(BOB, safe=""), "/events", "/rejects"):
        response = api.get("/products/nope" + path)
        assert "nope" in error(response, 404, "not_found", "product")
    replay = api.client.post("/api/v1/products/nope/rejects/replay")
    error(replay, 404, "not_found", "product")


# -- events ------------------------------------------------------------------------------------


def test_events_of_a_product_newest_first_and_paginated(api: Api) -> None:
    everything = api.ok("/products/default/events", page_size=1000)
    assert everything["total"] == 11
    times = [e["time"] for e in everything["items"]]
    assert times == sorted(times, reverse=True)
    assert [e["identity"] for e in everything["items"][:5]] == ["dave"] * 5
    assert {e["person"] for e in everything["items"] if e["identity"] in (BOB, ANON, PHONE)} == {
        PHONE
    }
    pages = [api.ok("/products/default/events", page=n, page_size=4) for n in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [4, 4, 3, 0]
    assert all(p["total"] == 11 for p in pages)
    assert [item for p in pages for item in p["items"]] == everything["items"]
    default = api.ok("/products/default/events")
    assert (default["page"], default["page_size"]) == (1, 50)


@pytest.mark.parametrize(
    "name", ["Signed Up", "signed up", "SIGNED UP", "Signed,Up", " signed  up"]
)
def test_events_by_name_in_any_spelling(api: Api, name: str) -> None:
    found = api.ok("/products/default/events", event=name)
    assert found["total"] == 2
    assert {(e["event"], e["identity"]) for e in found["items"]} == {("Signed Up", BOB)}


def test_events_of_an_event_nobody_sent_are_none(api: Api) -> None:
    assert api.ok("/products/default/events", event="Never Happened")["total"] == 0


def test_events_by_identity_are_the_whole_person(api: Api) -> None:
    found = api.ok("/products/default/events", identity=ANON)
    assert found["total"] == 4
    assert {e["identity"] for e in found["items"]} == {ANON, BOB, PHONE}
    assert {e["person"] for e in found["items"]} == {PHONE}
    both = api.ok("/products/default/events", identity=PHONE, event="viewed pricing")
    assert [(e["identity"], e["time"]) for e in both["items"]] == [(ANON, iso(T0))]
    missing = api.get("/products/default/events", identity="nobody")
    error(missing, 404, "not_found", "identity")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (iso(T0 + 60), iso(T0 + 300)),
        (str(T0 + 60), str(T0 + 300)),  # Unix seconds
        ("2023-11-14T23:14:20+01:00", "2023-11-14T22:18:20"),  # an offset; UTC when none
    ],
)
def test_events_in_a_time_range_from_inclusive_to_exclusive(api: Api, start: str, end: str) -> None:
    found = api.ok("/products/default/events", **{"from": start, "to": end})
    assert [(e["event"], e["time"]) for e in found["items"]] == [
        ("Signed Up", iso(T0 + 200)),
        ("Signed Up", iso(T0 + 60)),
    ]


def test_events_from_a_date(api: Api) -> None:
    assert api.ok("/products/default/events", **{"from": "2023-11-15"})["total"] == 5
    assert api.ok("/products/default/events", to="2023-11-15")["total"] == 6


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "x"}, "page"),
        ({"page": "1.5"}, "page"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "1001"}, "page_size"),
        ({"page_size": "ten"}, "page_size"),
        ({"from": "yesterday"}, "from"),
        ({"to": "31/12/2023"}, "to"),
        ({"from": "nan"}, "from"),
    ],
)
def test_bad_events_parameters_are_400_naming_the_field(
    api: Api, params: dict[str, str], field: str
) -> None:
    error(api.get("/products/default/events", **params), 400, "invalid_input", field)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"page": "0"}, "page"), ({"page_size": "5000"}, "page_size")],
)
def test_bad_person_parameters_are_400(api: Api, params: dict[str, str], field: str) -> None:
    response = api.get("/products/default/people/" + quote(BOB, safe=""), **params)
    error(response, 400, "invalid_input", field)


# -- status ------------------------------------------------------------------------------------


def test_status_shows_positions_lag_and_counts(api: Api) -> None:
    status = api.ok("/status")
    assert status["log"]["records"] == 19
    pipeline = status["pipeline"]
    assert pipeline["lag_records"] == 0
    assert pipeline["lag_seconds"] == 0.0
    assert pipeline["processor"]["error"] is None
    assert pipeline["processor"]["waiting_for_ingest"] is False  # an idle machine
    for stream in pipeline["streams"]:
        assert set(stream) == {
            "name",
            "log_position",
            "applied_position",
            "applied_records",
            "lag_records",
            "lag_seconds",
            "records",
        }
        assert stream["applied_position"] == stream["log_position"]
        assert stream["applied_records"] == stream["records"]
        assert stream["lag_records"] == 0
    assert status["log"]["damage"] == []
    assert sum(s["log_position"] for s in pipeline["streams"]) == status["log"]["bytes"]
    assert sum(s["records"] for s in pipeline["streams"]) == status["log"]["records"]
    assert status["store"] == {
        "events": 11,
        "people": 4,  # Bob, Zoë, the odd one, Dave
        "property_values": 10,
        "aliases": 2,
        "duplicates": 1,
        "rejected": 3,
        "rejects": {"bad_time": 1, "blocked_identity": 1, "unknown_key": 1},
        "properties_dropped": 0,
    }


# -- rejects -----------------------------------------------------------------------------------


def test_rejects_are_listed_with_reason_and_original_parameters(api: Api) -> None:
    listed = api.ok("/products/default/rejects")
    assert listed["total"] == 3
    assert listed["by_reason"] == {"bad_time": 1, "blocked_identity": 1, "unknown_key": 1}
    items = listed["items"]
    assert [(r["reason"], r["product"], r["path"]) for r in items] == [  # newest first
        ("bad_time", "default", "/e"),
        ("blocked_identity", "default", "/e"),
        ("unknown_key", None, "/e"),
    ]
    key = api.server.api_key
    assert [r["params"] for r in items] == [
        [["_k", key], ["_p", "carol"], ["_n", "Too Early"], ["_t", "1000"], ["_d", "1"]],
        [["_k", key], ["_p", "null"], ["_n", "Blocked"]],
        [["_k", UNKNOWN_KEY], ["_p", "mallory"], ["_n", "Stole"]],
    ]
    for item in items:
        assert ISO_MILLI.match(item["received"])
        assert set(item["log"]) == {"stream", "position"}

    only = api.ok("/products/default/rejects", reason="unknown_key")
    assert [r["params"][1] for r in only["items"]] == [["_p", "mallory"]]
    assert only["total"] == 1
    assert only["by_reason"] == listed["by_reason"]
    second = api.ok("/products/default/rejects", page=2, page_size=1)
    assert second["items"] == [items[1]]
    error(api.get("/products/default/rejects", page="0"), 400, "invalid_input", "page")


def test_replaying_a_reject_that_still_fails_keeps_it(api: Api) -> None:
    before = api.ok("/products/default/rejects")
    replayed = api.client.post(
        "/api/v1/products/default/rejects/replay", json={"reason": "bad_time"}
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {
        "replayed": 1,
        "applied": 0,
        "duplicates": 0,
        "rejected": {"bad_time": 1},
    }
    assert api.ok("/products/default/rejects") == before
    assert api.ok("/status")["store"]["rejects"] == before["by_reason"]


@pytest.mark.parametrize(
    ("body", "field"), [(b"not json", "body"), (b"[1]", "body"), (b'{"reason": 3}', "reason")]
)
def test_replay_with_a_bad_body_is_400(api: Api, body: bytes, field: str) -> None:
    response = api.client.post("/api/v1/products/default/rejects/replay", content=body)
    error(response, 400, "invalid_input", field)


# -- operator token ----------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/products/default/people/" + quote(BOB, safe="")),
    ("GET", "/api/v1/products/default/events"),
    ("GET", "/api/v1/products/default/rejects"),
    ("POST", "/api/v1/products/default/rejects/replay"),
    ("GET", "/api/v1/products/nope/events"),  # no hint that a product does not exist
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_read_needs_an_operator_token(api: Api, method: str, path: str) -> None:
    url = api.server.base_url + path
    for headers, code in [
        ({}, "unauthorized"),
        ({"Authorization": "Basic b3A6b3A="}, "unauthorized"),
        ({"Authorization": "Bearer"}, "unauthorized"),
        ({"Authorization": "Bearer not-a-token"}, "invalid_token"),
        ({"Authorization": f"Bearer {api.server.api_key}"}, "invalid_token"),  # a tracking key
    ]:
        response = httpx.request(method, url, headers=headers)
        error(response, 401, code)
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_token_created_while_the_server_runs_is_accepted(api: Api) -> None:
    created = CliRunner().invoke(
        main, ["tokens", "create", "--name", "ci", "--data-dir", str(api.server.data_dir)]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    response = httpx.get(
        api.server.base_url + "/api/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


def test_unknown_api_paths_answer_json(api: Api) -> None:
    error(api.get("/nope"), 404, "not_found")
    response = api.client.get("/api/v1/products/default/rejects/replay")
    error(response, 405, "method_not_allowed")


# -- numbers out of range are 400s, not 500s -----------------------------------------------


def test_out_of_range_numbers_are_400_not_500(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    reader = Api(server)
    try:
        response = httpx.get(server.base_url + "/e", params={"_k": server.api_key, "_p": "bob"})
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while reader.ok("/status")["store"]["people"] == 0:  # a page past the end needs data
            assert time.monotonic() < deadline
            time.sleep(0.05)
        huge = str(10**20)
        for path, params, field in [
            ("/products/default/events", {"from": "inf"}, "from"),
            ("/products/default/events", {"to": "1e400"}, "to"),
            ("/products/default/events", {"page": huge}, "page"),
            ("/products/default/people/bob", {"page": huge}, "page"),
        ]:
            error(reader.get(path, **params), 400, "invalid_input", field)
    finally:
        reader.client.close()
        server.stop()
