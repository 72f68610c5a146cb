"""Reports over the wire and the CLI (issue 4; docs/reports.md).

One server, a product in New York time, a small shop's story sent as real
tracking calls. The answers' semantics are proven against the oracle in
test_reports_oracle.py; here: the API contract (routes, token, JSON errors
naming the field, CSV), and that the CLI gives the same answers through the
server and straight from the store.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from serverproc import RunningServer
from tally.cli import main
from tally.wire import GIF

T0 = 1_767_268_800  # 2026-01-01T12:00:00Z, 07:00 in New York
DAY = 86_400
RANGE = {"from": "2026-01-01", "to": "2026-01-08"}
SHOP_KEY = "5" * 40


def tally(data_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


class Shop:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.client = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=30,
        )

    def post(self, kind: str, body: Any, **headers: str) -> httpx.Response:
        return self.client.post(f"/api/v1/products/shop/reports/{kind}", json=body,
                                headers=headers)  # fmt: skip

    def ok(self, kind: str, body: dict[str, Any]) -> Any:
        response = self.post(kind, body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()


def feed(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        def send(path: str, **params: str) -> None:
            response = client.get(path, params={"_k": SHOP_KEY, "_d": "1", **params})
            assert response.status_code == 200
            assert response.content == GIF

        # ann: visits as an anonymous id, signs up as ann@…, pays twice.
        send("/e", _p="anon-1", _n="Visited Site", _t=str(T0), Campaign="winter")
        send("/s", _p="anon-1", _t=str(T0 + 5), Experiment="B")
        send("/e", _p="ann@x.example", _n="Signed Up", _t=str(T0 + 60), Plan="pro")
        send("/a", _p="anon-1", _n="ann@x.example")
        send("/e", _p="ann@x.example", _n="Billed", _t=str(T0 + DAY), **{"Billing Amount": "30"})
        send("/e", _p="ann@x.example", _n="Billed", _t=str(T0 + 2 * DAY),
             **{"Billing Amount": "30"})  # fmt: skip
        # bob: visits, signs up, never pays.
        send("/e", _p="bob", _n="visited site", _t=str(T0 + 100))
        send("/s", _p="bob", _t=str(T0 + 101), Experiment="A")
        send("/e", _p="bob", _n="Signed Up", _t=str(T0 + 400), Plan="free")
        # cid: visits on day 2 only.
        send("/e", _p="cid", _n="Visited Site", _t=str(T0 + DAY + 7))
        send("/s", _p="cid", _t=str(T0 + DAY + 8), Experiment="A")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    server = RunningServer(tmp_path_factory.mktemp("reports") / "data").start()
    created = tally(server.data_dir, "products", "create", "shop", "--key", SHOP_KEY,
                    "--timezone", "America/New_York")  # fmt: skip
    assert created.exit_code == 0, created.output
    reader = Shop(server)
    try:
        feed(server)
        deadline = time.monotonic() + 10
        while reader.client.get("/api/v1/status").json()["pipeline"]["lag_records"]:
            assert time.monotonic() < deadline, "the pipeline did not catch up in 10 s"
            time.sleep(0.05)
        yield reader
    finally:
        reader.client.close()
        code = server.stop()
    assert code == 0, server.stderr
    assert "Traceback" not in server.stderr, server.stderr


FUNNEL = {**RANGE, "steps": [{"event": "Visited Site"}, {"event": "signed up"},
                             {"event": "Billed"}]}  # fmt: skip


def test_a_funnel_counts_people_merged_by_an_alias_that_came_later(shop: Shop) -> None:
    answer = shop.ok("funnel", FUNNEL)
    assert [s["event"] for s in answer["steps"]] == ["Visited Site", "Signed Up", "Billed"]
    assert [s["people"] for s in answer["steps"]] == [3, 2, 1]
    assert answer["steps"][1]["conversion_from_previous"] == pytest.approx(2 / 3)
    assert answer["steps"][2]["conversion_from_first"] == pytest.approx(1 / 3)
    assert answer["steps"][1]["median_seconds_from_previous"] == (60 + 300) / 2
    assert answer["steps"][2]["median_seconds_from_previous"] == DAY - 60


def test_days_are_cut_in_the_products_time_zone(shop: Shop) -> None:
    answer = shop.ok("metrics", {**RANGE, "event": "Visited Site", "interval": "day"})
    series = answer["series"]
    assert len(series) == 7
    assert series[0] == {"start": "2026-01-01T00:00:00-05:00", "value": 2}
    assert series[1] == {"start": "2026-01-02T00:00:00-05:00", "value": 1}
    assert answer["total"] == 3


def test_every_kind_answers_with_its_documented_fields(shop: Shop) -> None:
    bodies = {
        "metrics": ({"event": "Billed", "measure": "sum", "property": "Billing Amount"},
                    {"series", "total"}),
        "funnel": (FUNNEL, {"steps"}),
        "cohort": ({"first_event": "Visited Site", "return_event": "Billed"}, {"cohorts"}),
        "revenue": ({}, {"series", "total_revenue", "paying", "lifetime_value"}),
        "abtest": ({"experiment": "Experiment", "conversion": "Signed Up"},
                   {"variants", "baseline", "winner"}),
        "path": ({"start": "Visited Site", "conversion": "Billed"}, {"paths", "converted"}),
        "people": ({"conditions": [{"type": "event", "event": "Signed Up"}]},
                   {"people", "total", "page", "page_size", "columns"}),
    }  # fmt: skip
    for kind, (body, fields) in bodies.items():
        answer = shop.ok(kind, {**RANGE, **body})
        assert set(answer) >= fields, (kind, answer)
    assert shop.ok("metrics", {**RANGE, **bodies["metrics"][0]})["total"] == 60
    assert shop.ok("revenue", RANGE)["total_revenue"] == 60


def error(response: httpx.Response, field: str) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "invalid_input"
    assert body["error"]["field"] == field, body
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("funnel", {"steps": [{"event": "A"}]}, "steps"),
        ("funnel", {"steps": [{"event": "A"}, {"event": " "}]}, "steps[1].event"),
        ("funnel", {"steps": ["A", "B"], "mode": "loose"}, "mode"),
        ("funnel", {"steps": ["A", "B"], "window": -1}, "window"),
        ("metrics", {}, "event"),
        ("metrics", {"event": "A", "measure": "sum"}, "property"),
        ("metrics", {"event": "A", "where": [{"property": "p", "op": "like"}]}, "where[0].op"),
        (
            "metrics",
            {"event": "A", "where": [{"property": "p", "op": "gt", "value": "x"}]},
            "where[0].value",
        ),
        ("metrics", {"event": "A", "from": "yesterday"}, "from"),
        ("metrics", {"event": "A", "from": "2026-02-01", "to": "2026-01-01"}, "from"),
        ("cohort", {"first_event": "A", "return_event": "B", "buckets": 0}, "buckets"),
        ("people", {"page_size": 5000}, "page_size"),
        ("people", {"conditions": [{"type": "mood"}]}, "conditions[0].type"),
        ("abtest", {"experiment": "E", "conversion": "C", "unit": "times"}, "unit"),
        ("sankey", {}, "kind"),
    ],
)
def test_an_invalid_body_is_a_400_naming_its_field(
    shop: Shop, kind: str, body: dict[str, Any], field: str
) -> None:
    assert error(shop.post(kind, body), field)


def test_a_body_that_is_not_an_object_is_a_400(shop: Shop) -> None:
    response = shop.client.post("/api/v1/products/shop/reports/funnel", content=b"[1, 2")
    assert error(response, "body")
    assert error(shop.post("funnel", [1, 2]), "body")


def test_reports_need_a_token_and_an_existing_product(shop: Shop) -> None:
    response = httpx.post(shop.server.base_url + "/api/v1/products/shop/reports/funnel",
                          json=FUNNEL)  # fmt: skip
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    response = shop.client.post("/api/v1/products/nope/reports/funnel", json=FUNNEL)
    assert response.status_code == 404
    assert shop.client.get("/api/v1/products/shop/reports/funnel").status_code == 405


def test_people_search_streams_every_match_as_csv(shop: Shop) -> None:
    body = {
        **RANGE,
        "conditions": [{"type": "event", "event": "Visited Site"}],
        "columns": [{"type": "property", "property": "Plan", "which": "current"}],
        "page_size": 1,
    }
    response = shop.post("people", body, accept="text/csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:2] == ["person", "identities"]
    assert rows[1:] == [
        ["ann@x.example", "ann@x.example anon-1", "pro"],
        ["bob", "bob", "free"],
        ["cid", "cid", ""],
    ]


def test_the_cli_answers_as_the_api_through_the_server_and_from_the_store(shop: Shop) -> None:
    data = shop.server.data_dir
    args = ["report", "funnel", "--product", "shop", "--from", RANGE["from"],
            "--to", RANGE["to"], "Visited Site", "signed up", "Billed"]  # fmt: skip
    through_server = tally(data, *args, "--json")
    assert through_server.exit_code == 0, through_server.output
    assert json.loads(through_server.stdout) == shop.ok("funnel", FUNNEL)

    table = tally(data, *args)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["STEP", "PEOPLE"]
    assert lines[2].split()[:4] == ["Signed", "Up", "2", "66.7%"]
    assert "█" in lines[2]

    as_csv = tally(data, *args, "--csv")
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[1][:2] == ["Visited Site", "3"]

    bad = tally(data, "report", "metrics", "--product", "shop", "Billed", "--where", "plan")
    assert bad.exit_code == 1
    assert bad.output.startswith("error: --where 'plan' is PROPERTY OP VALUE")
    assert len(bad.output.splitlines()) == 1


def test_the_cli_reads_the_store_when_no_server_runs(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    created = tally(server.data_dir, "products", "create", "shop", "--key", SHOP_KEY,
                    "--timezone", "America/New_York")  # fmt: skip
    assert created.exit_code == 0, created.output
    feed(server)
    reader = Shop(server)
    deadline = time.monotonic() + 10
    while reader.client.get("/api/v1/status").json()["pipeline"]["lag_records"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    live = reader.ok("cohort", {**RANGE, "first_event": "Visited Site",
                                "return_event": "Billed"})  # fmt: skip
    reader.client.close()
    assert server.stop() == 0
    args = ["report", "cohort", "--product", "shop", "--from", RANGE["from"], "--to", RANGE["to"]]
    offline = tally(server.data_dir, *args, "Visited Site", "Billed", "--json")
    assert offline.exit_code == 0, offline.output
    assert json.loads(offline.stdout) == live
    assert live["cohorts"][0]["values"][:3] == [0, 1, 1]
