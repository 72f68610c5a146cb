"""What the dashboard added to the JSON API, and its pages' answers to bad
input, over HTTP without a browser (docs/http-api.md, docs/dashboard.md)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from dashboard_site import ADMIN, BODIES, KEY, PASSWORD, PRODUCT, VIEWER, api, site
from serverproc import RunningServer
from tally.web.tables import Unit, cell


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from site(tmp_path_factory.mktemp("dashboard-http") / "data")


def signed_in(server: RunningServer, name: str = ADMIN) -> tuple[httpx.Client, str]:
    """A client with a session, and the session's CSRF token."""
    client = httpx.Client(base_url=server.base_url, timeout=30)
    form = client.get("/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = client.post("/sign-in", data={"csrf": token.group(1), "name": name,
                                           "password": PASSWORD, "next": "/"})  # fmt: skip
    assert answer.status_code == 303, answer.text
    page = client.get(f"/products/{PRODUCT}/events").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return client, csrf.group(1)


# -- the API ------------------------------------------------------------------------------


def test_names_with_counts_for_the_pickers(server: RunningServer) -> None:
    with api(server) as client:
        names = client.get(f"/api/v1/products/{PRODUCT}/names").json()
    events = {e["name"]: e["count"] for e in names["events"]}
    assert events == {"Visited Site": 23, "Signed Up": 9, "Viewed Page": 9, "Billed": 6}
    assert next(e["name"] for e in names["events"]) == "Visited Site"  # most frequent first
    properties = {p["name"] for p in names["properties"]}
    assert {"Plan", "Experiment", "Billing Amount", "Campaign"} <= properties


def test_the_overview_counts_the_last_30_days(server: RunningServer) -> None:
    with api(server) as client:
        overview = client.get(f"/api/v1/products/{PRODUCT}/overview").json()
    assert len(overview["days"]) == 30
    assert overview["events"] == sum(d["events"] for d in overview["days"]) == 47
    assert overview["top_events"][0] == {"event": "Visited Site", "events": 23}
    assert overview["health"]["rejects"] == {"unknown_key": 1}
    assert overview["health"]["disk_free_bytes"] > 0


def test_products_keys_and_tokens_are_managed_and_audited(server: RunningServer) -> None:
    with api(server) as client:
        made = client.post("/api/v1/products", json={"name": "blog", "timezone": "Europe/Paris"})
        assert made.status_code == 200, made.text
        assert made.json()["timezone"] == "Europe/Paris"
        again = client.post("/api/v1/products", json={"name": "blog"})
        assert again.status_code == 409
        bad = client.post("/api/v1/products/blog/settings", json={"timezone": "Mars/Olympus"})
        assert (bad.status_code, bad.json()["error"]["field"]) == (400, "timezone")
        changed = client.post("/api/v1/products/blog/settings",
                              json={"revenue_property": "Amount"}).json()  # fmt: skip
        assert changed["revenue_property"] == "Amount"
        keys = client.post("/api/v1/products/blog/keys", json={}).json()["keys"]
        assert len(keys) == 2
        revoked = client.post(f"/api/v1/keys/{keys[1]['key']}/revoke").json()
        assert [k["revoked"] for k in revoked["keys"]] == [False, True]
        token = client.post("/api/v1/tokens", json={"name": "robot"}).json()
        assert token["token"].startswith("tally_")
        entries = client.get("/api/v1/audit", params={"limit": 5}).json()["entries"]
    assert [e["action"] for e in entries] == ["token.create", "key.revoke", "key.add",
                                              "product.update", "product.create"]  # fmt: skip
    with httpx.Client(base_url=server.base_url) as client:
        fresh = client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {token['token']}"})
    assert fresh.status_code == 200


def test_saved_reports_are_checked_as_the_report_checks_its_body(server: RunningServer) -> None:
    with api(server) as client:
        url = f"/api/v1/products/{PRODUCT}/saved"
        refused = client.post(url, json={"name": "x", "kind": "funnel", "body": {"steps": []}})
        assert refused.status_code == 400
        assert refused.json()["error"]["field"] == "steps"
        unknown = client.post(url, json={"name": "x", "kind": "pie", "body": {}})
        assert (unknown.status_code, unknown.json()["error"]["field"]) == (400, "kind")
        made = client.post(url, json={"name": "Buyers", "kind": "funnel",
                                      "body": BODIES["funnel"]}).json()  # fmt: skip
        assert client.get(f"{url}/{made['id']}").json()["body"] == BODIES["funnel"]
        assert client.post(f"{url}/{made['id']}/delete").status_code == 200
        assert client.get(f"{url}/{made['id']}").status_code == 404
        assert client.get(f"{url}/nine").status_code == 404


def test_the_live_feed_streams_a_record_sent_now(server: RunningServer) -> None:
    with (
        api(server) as client,
        client.stream("GET", f"/api/v1/products/{PRODUCT}/live", params={"seconds": 10}) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 1000"
        assert next(lines) == "event: ready"
        sent = time.monotonic()
        httpx.get(server.base_url + "/e", params={"_k": KEY, "_p": "sse-sam", "_n": "Streamed"})
        for line in lines:
            if line.startswith("data: ") and "sse-sam" in line:
                record = json.loads(line[len("data: ") :])
                break
        assert time.monotonic() - sent < 2
    assert (record["kind"], record["name"], record["identity"]) == ("event", "Streamed",
                                                                     "sse-sam")  # fmt: skip


def test_an_alias_is_revoked_through_the_api(server: RunningServer) -> None:
    with api(server) as client:
        pair = {"a": "09f0c1d2e3a4b5c6d7e8", "b": "buyer9@shop.example"}
        done = client.post(f"/api/v1/products/{PRODUCT}/aliases/revoke", json=pair)
        assert done.json() == {"product": PRODUCT, **pair}
        same = client.post(f"/api/v1/products/{PRODUCT}/aliases/revoke", json={"a": "x", "b": "x"})
        assert same.status_code == 400
        deadline = time.monotonic() + 10
        while len(client.get(f"/api/v1/products/{PRODUCT}/people/buyer9@shop.example")
                  .json()["identities"]) != 1:  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_people_are_shown_by_a_recognisable_identity_in_every_answer(
    server: RunningServer,
) -> None:
    with api(server) as client:
        person = client.get(f"/api/v1/products/{PRODUCT}/people/buyer0@shop.example").json()
        events = client.get(f"/api/v1/products/{PRODUCT}/events",
                            params={"identity": "buyer0@shop.example"}).json()  # fmt: skip
        found = client.post(f"/api/v1/products/{PRODUCT}/reports/people",
                            json=BODIES["people"]).json()  # fmt: skip
    # Named by its smallest identity, an anonymous id; shown by its e-mail.
    assert (person["person"], person["display"]) == ("00f0c1d2e3a4b5c6d7e8", "buyer0@shop.example")
    assert {e["display"] for e in events["items"]} == {"buyer0@shop.example"}
    shown = {p["display"] for p in found["people"]}
    assert {"ann@shop.example", "bob", "buyer0@shop.example"} <= shown


# -- pages and bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        pytest.param(f"/products/{PRODUCT}/reports/funnel?q=%7Bnope", 400, "is not JSON",
                     id="malformed q"),
        pytest.param(f"/products/{PRODUCT}/reports/funnel?q=%5B1%5D", 400, "JSON object",
                     id="q not an object"),
        pytest.param("/products/nope/", 404, "no product named", id="unknown product"),
        pytest.param(f"/products/{PRODUCT}/reports/pie", 404, "no report called 'pie'",
                     id="unknown kind"),
        pytest.param(f"/products/{PRODUCT}/people/nobody-here", 404, "no person",
                     id="unknown person"),
        pytest.param(f"/products/{PRODUCT}/saved/12345", 404, "no saved report",
                     id="unknown saved report"),
        pytest.param(f"/products/{PRODUCT}/events?page=0", 400, "page", id="bad page"),
        pytest.param("/no/such/page", 404, "no page at this address", id="no such page"),
    ],
)  # fmt: skip
def test_bad_input_is_a_page_that_says_what_is_wrong_and_links_back(
    server: RunningServer, path: str, status: int, words: str
) -> None:
    client, _ = signed_in(server)
    answer = client.get(path, headers={"Referer": f"{server.base_url}/products/{PRODUCT}/"})
    client.close()
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert words.lower() in answer.text.replace("&#39;", "'").lower()
    assert f'<a href="/products/{PRODUCT}/">Go back</a>' in answer.text
    assert "Traceback" not in answer.text


def test_a_form_without_its_csrf_token_is_refused_in_words(server: RunningServer) -> None:
    client, csrf = signed_in(server)
    missing = client.post("/admin/tokens", data={"name": "sneaky"})
    wrong = client.post("/admin/tokens", data={"name": "sneaky", "csrf": csrf[::-1]})
    fine = client.post("/admin/tokens", data={"name": "honest", "csrf": csrf})
    client.close()
    assert missing.status_code == wrong.status_code == 403
    assert "security token (CSRF)" in missing.text
    assert fine.status_code == 200
    assert "shown this once" in fine.text


def test_an_expired_or_ended_session_asks_to_sign_in_again(server: RunningServer) -> None:
    client, csrf = signed_in(server, VIEWER)
    assert client.post("/sign-out", data={"csrf": csrf}).status_code == 303
    client.cookies.set("tally_session", "an-old-session")
    page = client.get(f"/products/{PRODUCT}/events")
    form = client.post("/admin/tokens", data={"name": "late", "csrf": csrf})
    client.close()
    assert page.status_code == 303
    events = quote(f"/products/{PRODUCT}/events")
    assert page.headers["location"] == f"/sign-in?next={events}&expired=1"
    assert form.status_code == 401
    assert "sign in again" in form.text


def test_the_session_cookie_is_secure_behind_a_tls_proxy(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        form = client.get("/sign-in", headers={"X-Forwarded-Proto": "https"})
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        assert "Secure" in form.headers["set-cookie"]
        # The client keeps a Secure cookie for https only: hand it back as the browser would.
        client.cookies.set("tally_sign_in", token.group(1))
        form_data = {"csrf": token.group(1), "name": ADMIN, "password": PASSWORD}
        answer = client.post("/sign-in", headers={"X-Forwarded-Proto": "https"}, data=form_data)
    [cookie] = [c for c in answer.headers.get_list("set-cookie") if c.startswith("tally_session=")]
    assert "tally_session=" in cookie
    assert "HttpOnly" in cookie
    assert "Secure" in cookie
    assert "SameSite=lax" in cookie.replace("Lax", "lax")


def test_the_live_feed_goes_on_from_a_cursor_and_refuses_a_bad_one(
    server: RunningServer,
) -> None:
    url = f"/api/v1/products/{PRODUCT}/live"
    with api(server) as client:
        with client.stream("GET", url, params={"seconds": 1}) as stream:
            data = next(line for line in stream.iter_lines() if line.startswith("data: "))
        cursor = json.loads(data[len("data: ") :])["cursor"]
        assert re.fullmatch(r"[\w.-]+:\d+(,[\w.-]+:\d+)*", cursor)
        sent = httpx.get(server.base_url + "/e", params={"_k": KEY, "_p": "while-away",
                                                         "_n": "Missed"})  # fmt: skip
        assert sent.status_code == 200
        # What was applied while no one listened comes first on reconnecting.
        with client.stream("GET", url, params={"seconds": 5},
                           headers={"Last-Event-ID": cursor}) as stream:  # fmt: skip
            record = next(json.loads(line[len("data: ") :]) for line in stream.iter_lines()
                          if line.startswith("data: ") and "while-away" in line)  # fmt: skip
        assert record["name"] == "Missed"
        bad = client.get(url, headers={"Last-Event-ID": "not a cursor"})
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "after"


# -- numbers a person reads --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        pytest.param(0.4235, "rate", "42.4%", id="a rate to one decimal of a percent"),
        pytest.param(1, "rate", "100%", id="a whole rate without decimals"),
        pytest.param(-0.25, "rate", "-25%", id="a fall in rate"),
        pytest.param(42, "seconds", "42s", id="under a minute in seconds"),
        pytest.param(0.5, "seconds", "0.5s", id="a tenth of a second kept under a minute"),
        pytest.param(125, "seconds", "2m 5s", id="minutes and seconds"),
        pytest.param(120, "seconds", "2m", id="a unit of zero left out"),
        pytest.param(3725, "seconds", "1h 2m", id="hours and minutes, seconds dropped"),
        pytest.param(3599.6, "seconds", "1h", id="rounding carries into the next unit"),
        pytest.param(90061, "seconds", "1d 1h", id="days and hours"),
        pytest.param(None, "seconds", "\u2013", id="none is a dash"),
        pytest.param(0.4235, None, "0.4235", id="a plain number as written"),
    ],
)  # fmt: skip
def test_a_cell_reads_as_a_person_reads_it(value: float | None, unit: Unit,
                                           shown: str) -> None:  # fmt: skip
    assert cell(value, unit) == shown


def test_the_page_shows_percentages_and_durations_but_the_csv_stays_raw(
    server: RunningServer,
) -> None:
    client, _ = signed_in(server)
    q = quote(json.dumps(BODIES["funnel"]))
    page = client.get(f"/products/{PRODUCT}/reports/funnel?q={q}").text
    csv = client.get(f"/products/{PRODUCT}/reports/funnel/csv?q={q}").text
    abtest = client.get(
        f"/products/{PRODUCT}/reports/abtest?q={quote(json.dumps(BODIES['abtest']))}"
    )
    client.close()
    with api(server) as api_client:
        steps = api_client.post(f"/api/v1/products/{PRODUCT}/reports/funnel",
                                json=BODIES["funnel"]).json()["steps"]  # fmt: skip
    # (This module's alias revocation moves the numbers: they are read from the API.)
    second = steps[1]
    rate, median = second["conversion_from_first"], second["median_seconds_from_previous"]
    assert 0 < rate < 1
    assert f"<td>{cell(rate, 'rate')}</td>" in page
    assert re.fullmatch(r"\d+(\.\d)?%", cell(rate, "rate"))
    assert f"<td>{cell(median, 'seconds')}</td>" in page
    assert re.fullmatch(r"(\d+[dhm] ?)+(\d+s)?|\d+(\.\d)?s", cell(median, "seconds"))
    embedded = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert embedded is not None
    assert json.loads(embedded.group(1))["steps"] == steps
    lines = csv.splitlines()
    assert lines[0].endswith(",Conversion from first,Median time from previous (seconds)")
    raw = [second["people"], second["conversion_from_previous"], rate, median]
    assert lines[2] == "All,2,Signed Up," + ",".join(cell(v) for v in raw)
    with api(server) as api_client:
        variants = api_client.post(f"/api/v1/products/{PRODUCT}/reports/abtest",
                                   json=BODIES["abtest"]).json()["variants"]  # fmt: skip
    for variant in variants:
        assert f"<td>{cell(variant['rate'], 'rate')}</td>" in abtest.text
        assert cell(variant["rate"], "rate").endswith("%")
