"""The dashboard in a real browser (issue 11; docs/dashboard.md).

One server with a known shop's story sent as tracking calls
(tests/dashboard_site.py), Debian's Chromium driven headless by Playwright:
signing in, the overview and its live feed, every report page against the
API's answer for the same body, saved reports, a person's alias revocation,
the people search's CSV, what a viewer may do, and that no page reaches for a
URL outside the server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from dashboard_site import (
    ADMIN,
    BODIES,
    CHROMIUM,
    KEY,
    PASSWORD,
    PRODUCT,
    VIEWER,
    api,
    chromium,
    sign_in,
    site,
)
from serverproc import RunningServer
from tally.web.tables import TABLES, cell

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="make test installs chromium (make chromium)")  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from site(tmp_path_factory.mktemp("dashboard") / "data")


@pytest.fixture(scope="module")
def browser(server: RunningServer) -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    """A fresh browser context signed in as the admin."""
    context = browser.new_context()
    signed_in = context.new_page()
    sign_in(signed_in, server)
    yield signed_in
    context.close()


def report_url(server: RunningServer, kind: str, body: dict[str, Any]) -> str:
    return f"{server.base_url}/products/{PRODUCT}/reports/{kind}?q={quote(json.dumps(body))}"


def answer_of(server: RunningServer, kind: str, body: dict[str, Any]) -> Any:
    with api(server) as client:
        response = client.post(f"/api/v1/products/{PRODUCT}/reports/{kind}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def table_cells(page: Any) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#report-table tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))",
    )
    return rows


# -- accounts ---------------------------------------------------------------------------


def test_sign_in_works_and_a_wrong_password_or_name_is_refused_alike(
    browser: Any, server: RunningServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, server, ADMIN, "not the password")
    wrong_password = page.get_by_role("alert").inner_text()
    assert "/sign-in" in page.url
    sign_in(page, server, "nobody-at-all", PASSWORD)
    assert page.get_by_role("alert").inner_text() == wrong_password
    sign_in(page, server)
    assert urlsplit(page.url).path == f"/products/{PRODUCT}/" or urlsplit(page.url).path.startswith(
        "/products/"
    )
    assert page.get_by_text(f"{ADMIN} (admin)").is_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "tally_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"
    page.get_by_role("button", name="Sign out").click()
    page.goto(server.base_url + f"/products/{PRODUCT}/events")
    assert urlsplit(page.url).path == "/sign-in"
    context.close()


def test_a_page_without_a_session_redirects_to_sign_in_and_back(
    browser: Any, server: RunningServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    target = f"/products/{PRODUCT}/rejects"
    page.goto(server.base_url + target)
    assert urlsplit(page.url).path == "/sign-in"
    page.get_by_label("Name").fill(VIEWER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.base_url + target)
    assert page.get_by_role("heading", name=re.compile("Rejects")).is_visible()
    context.close()


def test_the_first_admin_signs_in_once_with_the_printed_password_then_chooses_one(
    browser: Any, server: RunningServer
) -> None:
    assert server.admin_password  # printed beside the API key on the first start
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, server, "admin", server.admin_password)
    assert urlsplit(page.url).path == "/account/password"
    page.goto(server.base_url + f"/products/{PRODUCT}/")
    assert urlsplit(page.url).path == "/account/password"  # nothing else until it is chosen
    page.get_by_label("New password (8 characters or more)").fill("my own password")
    page.get_by_label("New password again").fill("my own password")
    page.get_by_role("button", name="Save the password").click()
    page.wait_for_load_state()
    assert urlsplit(page.url).path.startswith("/products/")
    sign_in(page, server, "admin", server.admin_password)  # one time only
    assert page.get_by_role("alert").is_visible()
    context.close()


# -- no page reaches outside ----------------------------------------------------------------


def test_no_page_references_a_url_outside_the_server(page: Any, server: RunningServer) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    pages = [f"/products/{PRODUCT}/", f"/products/{PRODUCT}/events",
             f"/products/{PRODUCT}/rejects", f"/products/{PRODUCT}/saved",
             f"/products/{PRODUCT}/people/ann%40shop.example", "/admin/products",
             "/admin/tokens", "/admin/accounts", "/account/password"]  # fmt: skip
    pages += [
        report_url(server, kind, body)[len(server.base_url) :] for kind, body in BODIES.items()
    ]
    for path in pages:
        page.goto(server.base_url + path)
        assert page.title().endswith("Tally"), path
        html = page.content()
        # Every src=, href= and action= is this server's, a fragment or inline
        # data (plotly draws a heat-map as a data: image); the tracking snippet
        # is text in a box, which the page never loads.
        for attribute in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert attribute.startswith(("/", "#", "?", "data:", server.base_url)), (
                path,
                attribute,
            )
    page.goto("about:blank")
    outside = [url for url in requested if not url.startswith((server.base_url, "data:", "blob:"))]
    assert outside == []
    assert any(url.endswith("/static/vendor/plotly.min.js") for url in requested)


# -- overview --------------------------------------------------------------------------------


def test_overview_shows_the_chart_and_a_record_sent_now_appears_live(
    page: Any, server: RunningServer
) -> None:
    page.goto(server.base_url + f"/products/{PRODUCT}/")
    with api(server) as client:
        overview = client.get(f"/api/v1/products/{PRODUCT}/overview").json()
    assert page.locator("#events-total").inner_text() == str(overview["events"])
    assert page.locator("#people-total").inner_text() == str(overview["people"])
    page.wait_for_selector("#chart .main-svg")  # plotly drew it
    days = page.eval_on_selector_all("#days tbody tr", "rs => rs.map(r => r.cells[1].textContent)")
    assert days == [str(d["events"]) for d in overview["days"]]
    page.wait_for_selector("#live-state:text('connected')")
    sent = time.monotonic()
    response = httpx.get(server.base_url + "/e", params={"_k": KEY, "_p": "live-lou",
                                                         "_n": "Watched Live"})  # fmt: skip
    assert response.status_code == 200
    page.wait_for_selector("#live-feed li:has-text('Watched Live')", timeout=2000)
    assert time.monotonic() - sent < 2.0
    assert "live-lou" in page.locator("#live-feed").inner_text()


# -- reports ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BODIES))
def test_each_report_page_shows_the_apis_answer_in_its_table(
    page: Any, server: RunningServer, kind: str
) -> None:
    body = BODIES[kind]
    expected = answer_of(server, kind, body)
    page.goto(report_url(server, kind, body))
    embedded = json.loads(page.locator("#report-data").text_content())
    assert embedded == expected
    table = TABLES[kind](expected)
    shown = [[cell(v, table.unit(i)) for i, v in enumerate(row)] for row in table.rows]
    if kind == "people":  # the person's name is a link, written as it is
        shown = [[cell(row[0]), *cells[1:]] for row, cells in zip(table.rows, shown, strict=True)]
    assert table_cells(page) == shown
    figures = page.eval_on_selector_all("#report-summary dd", "ds => ds.map(d => d.textContent)")
    assert figures == [cell(value) for _, value in table.summary]
    if kind != "people":
        page.wait_for_selector("#chart .main-svg")


def test_the_funnel_table_holds_the_stories_numbers(page: Any, server: RunningServer) -> None:
    page.goto(report_url(server, "funnel", BODIES["funnel"]))
    people = [row[3] for row in table_cells(page)]
    # 23 visitors; ann, bob and 7 buyers sign up; ann and 4 buyers pay.
    assert people == ["23", "9", "5"]
    # Rates read as percentages, median times as durations: a sign-up 90 s
    # after the visit (the middle of ann's 60 s, bob's 300 s and the buyers'
    # 90 s), a payment two days (less 90 s) after the sign-up.
    rates = [row[4:6] for row in table_cells(page)]
    assert rates == [["100%", "100%"], ["39.1%", "39.1%"], ["55.6%", "21.7%"]]
    assert [row[6] for row in table_cells(page)] == ["\u2013", "1m 30s", "2d"]
    headers = page.eval_on_selector_all("#report-table th", "hs => hs.map(h => h.textContent)")
    assert headers[6] == "Median time from previous"
    # The embedded answer stays the API's raw numbers.
    steps = json.loads(page.locator("#report-data").text_content())["steps"]
    assert [s["median_seconds_from_previous"] for s in steps] == [None, 90, 172_710]


def test_a_report_url_reproduces_the_report_in_a_fresh_browser(
    browser: Any, page: Any, server: RunningServer
) -> None:
    page.goto(server.base_url + f"/products/{PRODUCT}/reports/funnel")
    page.get_by_label("Range").select_option(label="Last 30 days")
    page.get_by_label("Step 1", exact=True).fill("Visited Site")
    page.get_by_label("Step 2", exact=True).fill("Signed Up")
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#report-table")
    url, cells = page.url, table_cells(page)
    body = json.loads(page.locator("#q").input_value())
    assert body["steps"] == [{"event": "Visited Site"}, {"event": "Signed Up"}]
    assert json.loads(re.sub(r"^.*\?q=", "", httpx.URL(url).params.get("q") or "")) == body
    # Another run, then back and forward.
    page.get_by_label("Step 3", exact=True).fill("Billed")
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#report-table")
    assert len(table_cells(page)) == 3
    page.go_back()
    assert page.url == url
    assert table_cells(page) == cells
    page.go_forward()
    assert len(table_cells(page)) == 3
    fresh = browser.new_context()
    other = fresh.new_page()
    sign_in(other, server, VIEWER)
    other.goto(url)
    assert table_cells(other) == cells
    fresh.close()


def test_pickers_suggest_the_products_names(page: Any, server: RunningServer) -> None:
    page.goto(server.base_url + f"/products/{PRODUCT}/reports/metrics")
    events = page.eval_on_selector_all("#event-names option", "os => os.map(o => o.value)")
    assert {"Visited Site", "Signed Up", "Billed", "Viewed Page"} <= set(events)
    assert page.get_by_label("Event").get_attribute("list") == "event-names"
    properties = page.eval_on_selector_all("#property-names option", "os => os.map(o => o.value)")
    assert {"Plan", "Experiment", "Billing Amount"} <= set(properties)


def test_a_body_the_api_refuses_shows_its_message_by_the_field(
    page: Any, server: RunningServer
) -> None:
    body = {"from": "2026-01-01", "to": "2026-02-01", "steps": [{"event": "Visited Site"},
                                                                {"event": " "}]}  # fmt: skip
    with api(server) as client:
        refused = client.post(f"/api/v1/products/{PRODUCT}/reports/funnel", json=body).json()
    page.goto(report_url(server, "funnel", body))
    field = refused["error"]["field"]
    assert field == "steps[1].event"
    error = page.locator(f"[id='error-{field}']")
    assert error.inner_text() == refused["error"]["message"]
    assert (
        page.get_by_label("Step 2", exact=True).get_attribute("aria-describedby")
        == f"error-{field}"
    )
    page.goto(server.base_url + f"/products/{PRODUCT}/reports/funnel?q=%7Bnot+json")
    assert "is not JSON" in page.locator("#error-q").inner_text()


def test_people_search_downloads_as_csv(page: Any, server: RunningServer) -> None:
    page.goto(report_url(server, "people", BODIES["people"]))
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the table as CSV").click()
    text = Path(download.value.path()).read_text()
    with api(server) as client:
        url = f"/api/v1/products/{PRODUCT}/reports/people"
        expected = client.post(url, json=BODIES["people"], headers={"Accept": "text/csv"}).text
    assert text == expected
    assert text.count("\n") == 1 + answer_of(server, "people", BODIES["people"])["total"]


def test_a_people_search_is_built_from_the_rows_without_writing_json(
    page: Any, server: RunningServer
) -> None:
    page.goto(server.base_url + f"/products/{PRODUCT}/reports/people")
    page.get_by_label("Range").select_option(label="Last 30 days")
    page.get_by_role("button", name="Add a condition").click()
    page.get_by_label("Condition 1: event", exact=True).fill("Signed Up")
    assert (
        page.get_by_label("Condition 1: event", exact=True).get_attribute("list") == "event-names"
    )
    page.get_by_role("button", name="Add a condition").click()
    page.get_by_label("Condition 2 is about", exact=True).select_option(label="a property")
    page.get_by_label("Condition 2: property", exact=True).fill("Plan")
    page.get_by_label("Condition 2: test", exact=True).select_option(label="equals")
    page.get_by_label("Condition 2: value", exact=True).fill("pro")
    page.get_by_role("button", name="Add a column").click()
    page.get_by_label("Column 1: property", exact=True).fill("Plan")
    page.get_by_label("Column 1: which", exact=True).select_option(label="last value")
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#report-table")
    body = json.loads(httpx.URL(page.url).params["q"])
    assert body["conditions"] == [
        {"type": "event", "event": "Signed Up", "did": True},
        {"type": "property", "property": "Plan", "op": "equals", "value": "pro"},
    ]
    assert body["columns"] == [{"type": "property", "property": "Plan", "which": "last"}]
    expected = answer_of(server, "people", body)
    shown = table_cells(page)
    assert [row[0] for row in shown] == [p["display"] for p in expected["people"]]
    assert {row[-1] for row in shown} == {"pro"}
    # Signed up on the pro plan: ann and the odd buyers (3, 9, 15); bob chose free.
    assert {"buyer3@shop.example", "buyer9@shop.example"} <= {row[0] for row in shown}
    assert "bob" not in {row[0] for row in shown}
    # The rows came back filled from the address, and run the same search again.
    assert page.get_by_label("Condition 2: value", exact=True).input_value() == "pro"


def test_a_refused_condition_shows_the_api_message_beside_its_row(
    page: Any, server: RunningServer
) -> None:
    plan_over_x = {"type": "property", "property": "Plan", "op": "gt", "value": "x"}
    body = {"from": BODIES["people"]["from"], "to": BODIES["people"]["to"],
            "conditions": [{"type": "event", "event": "Billed"}, plan_over_x]}  # fmt: skip
    api = httpx.post(f"{server.base_url}/api/v1/products/{PRODUCT}/reports/people", json=body,
                     headers={"Authorization": f"Bearer {server.token}"})  # fmt: skip
    assert api.status_code == 400
    refused = api.json()["error"]
    assert refused["field"] == "conditions[1].value"
    page.goto(report_url(server, "people", body))
    value = page.get_by_label("Condition 2: value", exact=True)
    message = page.locator(".rows-list > li", has=value).locator(".field-error")
    assert message.inner_text() == refused["message"]
    assert value.get_attribute("aria-invalid") == "true"
    assert page.locator("#q").get_attribute("aria-invalid") is None


def test_a_people_search_address_fills_the_rows_and_the_text_box_follows_them(
    page: Any, server: RunningServer
) -> None:
    billed_over_20 = [{"property": "Billing Amount", "op": "gt", "value": 20}]
    body = {"from": BODIES["people"]["from"], "to": BODIES["people"]["to"], "logic": "any",
            "conditions": [
                {"type": "event", "event": "Billed", "did": False, "where": billed_over_20},
                {"type": "event", "event": "Viewed Page", "count": {"op": "at_least", "value": 2}},
                {"type": "property", "property": "Plan", "op": "has_any_value"},
                {"type": "identity", "op": "contains", "value": "bob"}],
            "columns": [{"type": "event", "event": "Billed", "which": "last_time"}]}  # fmt: skip
    page.goto(report_url(server, "people", body))

    def value(label: str) -> str:
        found: str = page.get_by_label(label, exact=True).input_value()
        return found

    assert value("Conditions must hold") == "any"
    assert [value("Condition 1 is about"), value("Condition 1: did or did not"),
            value("Condition 1: event")] == ["event", "false", "Billed"]  # fmt: skip
    assert [value("Condition 2: event"), value("Condition 2: how many times"),
            value("Condition 2: times")] == ["Viewed Page", "at_least", "2"]  # fmt: skip
    assert [value("Condition 3: property"), value("Condition 3: test")] == [
        "Plan",
        "has_any_value",
    ]
    assert not page.get_by_label("Condition 3: value", exact=True).is_visible()
    assert value("Condition 4: identity contains") == "bob"
    assert [value("Column 1 shows"), value("Column 1: event"),
            value("Column 1: which")] == ["event", "Billed", "last_time"]  # fmt: skip
    # Removing a row edits the body; what no row shows (a condition's where) stays.
    page.get_by_role("button", name="Remove condition 3").click()
    page.get_by_label("Condition 2: how many times", exact=True).select_option(label="exactly")
    edited = json.loads(page.locator("#q").input_value())
    assert edited["conditions"] == [
        body["conditions"][0],
        # The row says "did", and so does the body now (the default, made explicit).
        {
            "type": "event",
            "event": "Viewed Page",
            "count": {"op": "exactly", "value": 2},
            "did": True,
        },
        body["conditions"][3],
    ]
    # "Did not" takes no count (the API refuses one): the count goes with its fields.
    page.get_by_label("Condition 2: did or did not", exact=True).select_option(label="did not")
    assert not page.get_by_label("Condition 2: how many times", exact=True).is_visible()
    undone = json.loads(page.locator("#q").input_value())["conditions"][1]
    assert undone == {"type": "event", "event": "Viewed Page", "did": False}
    # The text box edits the rows too.
    page.get_by_text("The definition as JSON").click()
    typed = {**edited, "conditions": [{"type": "identity", "op": "contains", "value": "ann"}]}
    page.locator("#q").fill(json.dumps(typed))
    assert page.locator("#conditions li").count() == 1
    assert value("Condition 1: identity contains") == "ann"
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector("#report-table")
    expected = answer_of(server, "people", typed)
    assert [row[0] for row in table_cells(page)] == [p["display"] for p in expected["people"]]
    assert expected["people"]


# -- saved reports -------------------------------------------------------------------------


def test_a_saved_report_reopens_with_the_same_numbers(page: Any, server: RunningServer) -> None:
    page.goto(report_url(server, "cohort", BODIES["cohort"]))
    cells = table_cells(page)
    page.get_by_label("Save as").fill("Weekly buyers")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(r"/saved/\d+$"))
    saved_url = page.url
    assert table_cells(page) == cells
    page.goto(server.base_url + f"/products/{PRODUCT}/saved")
    page.get_by_role("link", name="Weekly buyers").click()
    assert page.url == saved_url
    assert table_cells(page) == cells
    with api(server) as client:
        listed = client.get(f"/api/v1/products/{PRODUCT}/saved").json()["saved"]
    assert [(s["name"], s["kind"], s["body"]) for s in listed] == [
        ("Weekly buyers", "cohort", BODIES["cohort"])
    ]


# -- a person ----------------------------------------------------------------------------


def test_revoking_an_alias_from_the_person_page(page: Any, server: RunningServer) -> None:
    page.goto(server.base_url + f"/products/{PRODUCT}/people/ann%40shop.example")
    assert page.get_by_role("heading", name=re.compile("ann@shop.example")).is_visible()
    assert page.locator("#identities").inner_text().split() == ["ann@shop.example", "anon-ann"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke anon-ann ~ ann@shop.example").click()
    page.wait_for_load_state()
    assert "Revoked the alias" in page.get_by_role("status").inner_text()

    def separated() -> bool:
        page.reload()
        return page.locator("#identities li").count() == 1

    deadline = time.monotonic() + 10
    while not separated():
        assert time.monotonic() < deadline, "the revocation was not applied in 10 s"
        time.sleep(0.2)
    with api(server) as client:
        entries = client.get("/api/v1/audit").json()["entries"]
    assert entries[0]["action"] == "alias.revoke"
    assert entries[0]["actor"] == f"user {ADMIN}"


def test_a_dismissed_confirmation_revokes_nothing(page: Any, server: RunningServer) -> None:
    page.goto(server.base_url + f"/products/{PRODUCT}/people/buyer3%40shop.example")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name=re.compile("^Revoke ")).click()
    assert page.get_by_role("status").count() == 0
    assert page.locator("#identities li").count() == 2


# -- viewers -------------------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_reach_admin_actions(browser: Any, server: RunningServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, server, VIEWER)
    for path in ["/admin/products", "/admin/tokens", "/admin/accounts",
                 f"/products/{PRODUCT}/people/bob", f"/products/{PRODUCT}/rejects"]:  # fmt: skip
        page.goto(server.base_url + path)
        forms = page.eval_on_selector_all("form[method=post]", "fs => fs.map(f => f.action)")
        assert [f for f in forms if not f.endswith("/sign-out")] == [], path
    page.goto(report_url(server, "funnel", BODIES["funnel"]))
    assert page.get_by_label("Save as").count() == 0
    # Posting anyway (with the viewer's own CSRF token) is refused in words.
    csrf = page.locator("form[action='/sign-out'] input[name=csrf]").input_value()
    refused = page.request.post(server.base_url + "/admin/products",
                                form={"csrf": csrf, "name": "viewers-product"})  # fmt: skip
    assert refused.status == 403
    assert "viewer" in refused.text()
    context.close()


def test_the_people_search_pages_through_its_answer(page: Any, server: RunningServer) -> None:
    body = {**BODIES["people"], "page_size": 4}
    page.goto(report_url(server, "people", body))
    assert page.get_by_role("link", name="Previous page").count() == 0
    page.get_by_role("link", name="Next page").click()
    page.wait_for_load_state()
    second = answer_of(server, "people", {**body, "page": 2})
    assert [row[0] for row in table_cells(page)] == [p["display"] for p in second["people"]]
    page.go_back()
    first = answer_of(server, "people", body)
    assert [row[0] for row in table_cells(page)] == [p["display"] for p in first["people"]]
    # Each name opens the person's page.
    page.get_by_role("link", name=first["people"][0]["display"]).click()
    assert page.get_by_role("heading", name=re.compile(first["people"][0]["display"])).is_visible()
