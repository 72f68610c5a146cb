"""The collector keeps its connection to the core between requests
(tally.collector.proxy): answers of every framing — a length, chunks, none for
HEAD, a stream of events — follow one another on kept connections, each whole
and the right one, and a connection idle past KEEP_SECONDS is not used again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serverproc import RunningServer
from tally.collector.proxy import KEEP_SECONDS

RANGE = {"from": "2026-08-03", "to": "2026-11-01"}


@pytest.fixture
def one_collector(tmp_path: Path) -> Iterator[RunningServer]:
    """One collector, so that every request goes through the same proxy."""
    running = RunningServer(tmp_path / "data", workers=1).start()
    yield running
    assert running.stop() == 0, running.stderr
    assert "Traceback" not in running.stderr, running.stderr


def test_answers_of_every_framing_follow_one_another(one_collector: RunningServer) -> None:
    server = one_collector
    headers = {"Authorization": f"Bearer {server.token}"}
    reports = "/api/v1/products/default/reports"
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        client.get("/e", params={"_k": server.api_key, "_p": "ann@example.com", "_n": "Seen"})
        for turn in range(3):
            if turn == 2:
                time.sleep(KEEP_SECONDS + 0.5)  # the kept connection is too old now
            metrics = client.post(f"{reports}/metrics", json={"event": "Never", **RANGE})
            assert metrics.status_code == 200
            assert len(metrics.json()["series"]) == 90
            csv = client.post(
                f"{reports}/people",
                json={"conditions": [{"type": "event", "event": "Never"}], **RANGE},
                headers={"Accept": "text/csv"},
            )
            assert csv.status_code == 200
            assert csv.headers.get("transfer-encoding") == "chunked"
            assert csv.text.splitlines()[0].startswith("person")
            head = client.head("/api/v1/products")
            assert head.status_code == 200
            assert head.content == b""
            missing = client.get("/api/v1/products/nope/names")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
            listed = client.get("/api/v1/products")
            assert [p["name"] for p in listed.json()["products"]] == ["default"]
            with client.stream("GET", "/api/v1/products/default/live",
                               params={"seconds": 0.3}) as live:  # fmt: skip
                events = [line for line in live.iter_lines() if line.startswith("event:")]
            assert events[0] == "event: ready"
            openapi = client.get("/api/v1/openapi.json")
            assert json.loads(openapi.content)["openapi"].startswith("3.1")
    assert "proxying to the core failed" not in server.stderr
    assert "closed without an answer" not in server.stderr
