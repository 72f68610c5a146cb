"""``GET /metrics`` (tally.metrics): the pipeline in Prometheus' text format,
read with prometheus_client's own parser from a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serverproc import RunningServer, wait_until

GOOD, BAD = 40, 7


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], float]]:
    """Samples by (name, sorted labels) after some traffic and two reports."""
    server = RunningServer(tmp_path_factory.mktemp("metrics") / "data").start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for n in range(GOOD):
                client.get("/e", params={"_k": server.api_key, "_p": f"p{n}", "_n": "Seen"})
            for n in range(BAD):
                client.get("/e", params={"_k": "no-such-key", "_p": f"q{n}", "_n": "Seen"})
            auth = {"Authorization": f"Bearer {server.token}"}
            wait_until(
                lambda: (
                    client.get("/api/v1/status", headers=auth).json()["pipeline"]["lag_records"]
                    == 0
                ),
                10,
                "every record is applied",
            )
            for _ in range(2):
                answer = client.post(
                    "/api/v1/products/default/reports/metrics", json={"event": "Seen"}, headers=auth
                )
                assert answer.status_code == 200, answer.text
            assert client.get("/metrics").status_code == 401
            # The collectors write their counters once a second.
            wait_until(
                lambda: (
                    sum_of(scrape(client, auth), "tally_requests_total{", 'endpoint="/e"}')
                    == GOOD + BAD
                ),
                5,
                "the collectors' counters are there",
            )
            response = client.get("/metrics", headers=auth)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[(sample.name, labels)] = sample.value
        yield samples
    finally:
        assert server.stop() == 0


def scrape(client: httpx.Client, auth: dict[str, str]) -> str:
    return client.get("/metrics", headers=auth).text


def sum_of(text: str, prefix: str, suffix: str) -> float:
    """The sum of the samples on lines that begin and end (before the value) so."""
    found = 0.0
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(prefix) and name.endswith(suffix):
            found += float(value)
    return found


def total(samples: dict[tuple[str, str], float], name: str, where: str = "") -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and where in labels)


def test_the_log_and_the_processor(scraped: dict[tuple[str, str], float]) -> None:
    assert total(scraped, "tally_log_records") == GOOD + BAD
    assert total(scraped, "tally_log_bytes") > 0
    assert scraped[("tally_processor_lag_records", "")] == 0
    assert scraped[("tally_processor_failing", "")] == 0
    assert total(scraped, "tally_processor_records_total") == GOOD + BAD
    assert scraped[("tally_rejects", "reason=unknown_key")] == BAD
    assert scraped[("tally_log_damaged_ranges", "")] == 0


def test_reports_by_kind(scraped: dict[tuple[str, str], float]) -> None:
    assert scraped[("tally_report_duration_seconds_count", "kind=metrics")] == 2
    assert scraped[("tally_report_duration_seconds_bucket", "kind=metrics,le=+Inf")] == 2
    assert scraped[("tally_report_duration_seconds_sum", "kind=metrics")] > 0


def test_the_collectors(scraped: dict[tuple[str, str], float]) -> None:
    assert total(scraped, "tally_requests_total", "endpoint=/e") == GOOD + BAD
    assert total(scraped, "tally_requests_total", "endpoint=core") >= 1
    assert total(scraped, "tally_responses_total", "status=200") >= GOOD + BAD
    writes = total(scraped, "tally_log_sync_seconds_count")
    assert 1 <= writes <= GOOD + BAD
    assert total(scraped, "tally_log_sync_seconds_bucket", "le=+Inf") == writes
    assert total(scraped, "tally_connections_open") >= 1


def test_the_docs_name_every_metric(scraped: dict[tuple[str, str], float]) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    names = {name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
             .removesuffix("_bucket") for name, _ in scraped}  # fmt: skip
    missing = sorted(n for n in names if f"`{n}`" not in docs)
    assert not missing, f"docs/operations.md does not describe {missing}"
