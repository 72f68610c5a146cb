"""A running Tally with a known shop's story, accounts, and a headless Chromium:
what the dashboard's browser tests and `make screenshots` look at.

The shop's records are sent as real tracking calls, at times relative to
today (so that the overview's last 30 days hold them), in New York time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from serverproc import RunningServer, wait_until

KEY = "d" * 40
PRODUCT = "shop"
TZ = "America/New_York"
ADMIN, VIEWER, PASSWORD = "ann-admin", "vic-viewer", "a long enough password"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
DAY = 86_400
_today = datetime.now(ZoneInfo(TZ)).date()
#: Noon in New York, ten days ago: the story starts there.
T0 = int(datetime(_today.year, _today.month, _today.day, 12, tzinfo=ZoneInfo(TZ)).timestamp()) - (
    10 * DAY
)
FROM = (_today - timedelta(days=14)).isoformat()
TO = (_today + timedelta(days=1)).isoformat()

#: A body of every report kind over the story's range.
BODIES: dict[str, dict[str, Any]] = {
    "metrics": {"from": FROM, "to": TO, "event": "Visited Site", "interval": "day",
                "segment": {"property": "Plan", "attribution": "last_ever"}},
    "funnel": {"from": FROM, "to": TO,
               "steps": [{"event": "Visited Site"}, {"event": "Signed Up"}, {"event": "Billed"}]},
    "cohort": {"from": FROM, "to": TO, "first_event": "Visited Site", "return_event": "Billed",
               "interval": "week", "buckets": 4},
    "revenue": {"from": FROM, "to": TO, "interval": "week"},
    "abtest": {"from": FROM, "to": TO, "experiment": "Experiment", "conversion": "Signed Up"},
    "path": {"from": FROM, "to": TO, "start": "Visited Site", "conversion": "Signed Up"},
    "people": {"from": FROM, "to": TO,
               "conditions": [{"type": "event", "event": "Signed Up"}],
               "columns": [{"type": "property", "property": "Plan", "which": "last"},
                           {"type": "event", "event": "Visited Site", "which": "count"}]},
}  # fmt: skip


def story() -> list[tuple[str, dict[str, str]]]:
    """The shop's tracking calls: (path, parameters without the key)."""
    calls: list[tuple[str, dict[str, str]]] = []

    def at(seconds: int) -> str:
        return str(T0 + seconds)

    # ann: visits anonymously, signs up, is aliased, pays twice.
    calls += [
        ("/e", {"_p": "anon-ann", "_n": "Visited Site", "_t": at(0), "Campaign": "winter"}),
        ("/s", {"_p": "anon-ann", "_t": at(5), "Experiment": "B"}),
        ("/e", {"_p": "ann@shop.example", "_n": "Signed Up", "_t": at(60), "Plan": "pro"}),
        ("/a", {"_p": "anon-ann", "_n": "ann@shop.example", "_t": at(61)}),
        ("/e", {"_p": "ann@shop.example", "_n": "Billed", "_t": at(DAY), "Billing Amount": "30"}),
        ("/e", {"_p": "ann@shop.example", "_n": "Billed", "_t": at(2 * DAY),
                "Billing Amount": "30"}),
    ]  # fmt: skip
    # bob: visits, views pages, signs up, never pays.
    calls += [
        ("/e", {"_p": "bob", "_n": "Visited Site", "_t": at(100)}),
        ("/s", {"_p": "bob", "_t": at(101), "Experiment": "A"}),
        ("/e", {"_p": "bob", "_n": "Viewed Page", "_t": at(200)}),
        ("/e", {"_p": "bob", "_n": "Viewed Page", "_t": at(250)}),
        ("/e", {"_p": "bob", "_n": "Signed Up", "_t": at(400), "Plan": "free"}),
    ]
    # cid: visits on day 2 only.
    calls += [
        ("/e", {"_p": "cid", "_n": "Visited Site", "_t": at(DAY + 7)}),
        ("/s", {"_p": "cid", "_t": at(DAY + 8), "Experiment": "A"}),
    ]
    # Twenty more visitors over the days, some sign up, a few pay.
    for n in range(20):
        who, t = f"{n:02d}f0c1d2e3a4b5c6d7e8", (n % 9) * DAY + 3600 * (n % 5)
        calls.append(("/e", {"_p": who, "_n": "Visited Site", "_t": at(t)}))
        calls.append(("/s", {"_p": who, "_t": at(t + 1), "Experiment": "AB"[n % 2]}))
        if n % 3 == 0:
            mail = f"buyer{n}@shop.example"
            calls.append(("/e", {"_p": who, "_n": "Viewed Page", "_t": at(t + 30)}))
            calls.append(("/e", {"_p": mail, "_n": "Signed Up", "_t": at(t + 90),
                                 "Plan": "pro" if n % 2 else "free"}))  # fmt: skip
            calls.append(("/a", {"_p": who, "_n": mail, "_t": at(t + 91)}))
            if n % 6 == 0:
                calls.append(("/e", {"_p": mail, "_n": "Billed", "_t": at(t + 2 * DAY),
                                     "Billing Amount": "12"}))  # fmt: skip
    return calls


def tally(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    run = subprocess.run([sys.executable, "-m", "tally", *args, "--data-dir", str(data_dir)],
                         input=stdin, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def start_site(data_dir: Path) -> RunningServer:
    """A server with the shop, its story applied, an admin and a viewer."""
    # --defer-seconds 0: the live feed must not wait while other tests load the machine.
    server = RunningServer(data_dir, extra_args=["--defer-seconds", "0"]).start()
    tally(data_dir, "products", "create", PRODUCT, "--key", KEY, "--timezone", TZ)
    tally(data_dir, "users", "create", ADMIN, "--role", "admin", stdin=PASSWORD + "\n")
    tally(data_dir, "users", "create", VIEWER, stdin=PASSWORD + "\n")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for path, params in story():
            assert client.get(path, params={"_k": KEY, "_d": "1", **params}).status_code == 200
        client.get("/e", params={"_k": "no-such-key", "_p": "zed", "_n": "Lost"})  # a reject
    wait_until(lambda: server.status()["pipeline"]["lag_records"] == 0, 30,  # type: ignore[index]
               "the story is applied")  # fmt: skip
    return server


def site(data_dir: Path) -> Iterator[RunningServer]:
    """The site for a module's fixture: stopped after, cleanly and without a traceback."""
    running = start_site(data_dir)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.stderr
    assert "Traceback" not in running.stderr, running.stderr


def api(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30,
                        headers={"Authorization": f"Bearer {server.token}"})  # fmt: skip


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, server: RunningServer, name: str = ADMIN,
            password: str = PASSWORD) -> None:  # fmt: skip
    page.goto(server.base_url + "/sign-in")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
