"""``GET /metrics``: the pipeline in Prometheus' text format (docs/operations.md).

The core gathers at each scrape what every process knows: the collectors write
their own counters (requests by endpoint and status, log sync times, open
connections) to ``run/collectors/<slot>.json`` every second
(:mod:`tally.collector.stats`); the log, the processor and the store are read
here; report durations and the query pool's counts (tally.query_pool) are kept
by the API in this process. Formatting is prometheus_client's.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tally.log.damage import Quarantine
from tally.log.reader import LogReader
from tally.store.contract import Cursor
from tally.views.status import pipeline_view

#: Upper bounds of the report-duration histogram, in seconds.
REPORT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Where the collectors write their counters, under ``DATA_DIR/run/``.
COLLECTORS_DIR = "collectors"
#: A collector's file older than this is from one that is gone.
STALE_SECONDS = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Durations:
    """A histogram per label, safe to observe from any thread."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, label: str, seconds: float) -> None:
        with self._lock:
            counts = self._counts.setdefault(label, [0] * (len(self.bounds) + 1))
            counts[bisect.bisect_left(self.bounds, seconds)] += 1
            self._sums[label] = self._sums.get(label, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        with self._lock:
            return {k: (list(v), self._sums[k]) for k, v in self._counts.items()}


def histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: Sequence[float],
    counts: Sequence[int],
    total: float,
) -> None:
    """Add one labelled histogram of per-bucket (not cumulative) counts."""
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        cumulative += count
        buckets.append((bound, float(cumulative)))
    family.add_metric(labels, buckets, total)


class Pipeline(Collector):
    """What a scrape reports, gathered when it comes."""

    def __init__(
        self,
        data_dir: Path,
        reader: LogReader,
        cursor: Cursor,
        processor: dict[str, Any],
        reports: Durations,
        queries: dict[str, Any],
    ) -> None:
        self.data_dir = data_dir
        self.reader = reader
        self.cursor = cursor
        self.processor = processor
        self.reports = reports
        self.queries = queries  # QueryPool.counts

    def collect(self) -> Iterator[Metric]:
        yield from self._collectors()
        yield from self._log_and_processor()
        yield from self._store()
        durations = HistogramMetricFamily(
            "tally_report_duration_seconds", "Time to answer a report, by kind", labels=["kind"]
        )
        for kind, (counts, total) in sorted(self.reports.snapshot().items()):
            histogram(durations, [kind], self.reports.bounds, counts, total)
        yield durations
        yield from self._queries()

    def _queries(self) -> Iterator[Metric]:
        q = self.queries
        yield GaugeMetricFamily(
            "tally_queries_running",
            "Report and API queries holding a slot of --query-concurrency",
            value=q["running"],
        )
        yield GaugeMetricFamily(
            "tally_queries_waiting", "Queries waiting for a slot", value=q["waiting"]
        )
        stopped = CounterMetricFamily(
            "tally_queries_stopped",
            "Queries stopped or refused, by reason: disconnected (the client left), "
            "query_timeout, query_memory, busy",
            labels=["reason"],
        )
        for reason, count in sorted(q["stopped"].items()):
            stopped.add_metric([reason], count)
        yield stopped

    def _collectors(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tally_requests",
            "Requests the collectors received, by endpoint (core: handed to the core)",
            labels=["collector", "endpoint"],
        )
        responses = CounterMetricFamily(
            "tally_responses",
            "The collectors' own answers, by status (the core's are relayed unread)",
            labels=["collector", "status"],
        )
        syncs = HistogramMetricFamily(
            "tally_log_sync_seconds",
            "Time of each durable log write (one per group commit)",
            labels=["collector"],
        )
        connections = GaugeMetricFamily(
            "tally_connections_open", "Open client connections", labels=["collector"]
        )
        for slot, stats in read_collectors(self.data_dir):
            for endpoint, count in sorted(stats.get("requests", {}).items()):
                requests.add_metric([slot, endpoint], count)
            for status, count in sorted(stats.get("responses", {}).items()):
                responses.add_metric([slot, status], count)
            sync = stats.get("sync", {})
            if sync.get("bounds"):
                histogram(syncs, [slot], sync["bounds"], sync["counts"], sync["sum"])
            connections.add_metric([slot], stats.get("connections", 0))
        yield from (requests, responses, syncs, connections)

    def _log_and_processor(self) -> Iterator[Metric]:
        pipeline = pipeline_view(self.cursor, self.reader)
        log_bytes = GaugeMetricFamily(
            "tally_log_bytes", "Durable bytes of each log stream", labels=["stream"]
        )
        log_records = GaugeMetricFamily(
            "tally_log_records", "Records in each log stream", labels=["stream"]
        )
        for stream in pipeline["streams"]:
            log_bytes.add_metric([stream["name"]], stream["log_position"])
            log_records.add_metric([stream["name"]], stream["records"])
        yield from (log_bytes, log_records)
        yield GaugeMetricFamily(
            "tally_processor_lag_records",
            "Records in the log not applied yet",
            value=pipeline["lag_records"],
        )
        yield GaugeMetricFamily(
            "tally_processor_lag_seconds",
            "Age of the oldest record not applied yet",
            value=pipeline["lag_seconds"],
        )
        p = self.processor
        yield CounterMetricFamily(
            "tally_processor_batches", "Batches applied since start", value=p["batches"]
        )
        yield CounterMetricFamily(
            "tally_processor_records", "Records applied since start", value=p["records"]
        )
        yield GaugeMetricFamily(
            "tally_processor_last_batch_seconds",
            "Time the last batch took to write",
            value=p["last_batch_seconds"],
        )
        yield GaugeMetricFamily(
            "tally_processor_failing",
            "1 while the processor cannot apply records (status: pipeline.processor.error)",
            value=1 if p["error"] else 0,
        )
        yield GaugeMetricFamily(
            "tally_log_damaged_ranges",
            "Damaged log ranges kept in the quarantine",
            value=len(Quarantine(self.data_dir, "").reports()),
        )

    def _store(self) -> Iterator[Metric]:
        rejects = GaugeMetricFamily(
            "tally_rejects", "Rejected records in the store, by reason", labels=["reason"]
        )
        for reason, count in self.cursor.execute(
            "SELECT reason, count(*) FROM rejects GROUP BY reason ORDER BY reason"
        ).fetchall():
            rejects.add_metric([reason], count)
        yield rejects


def render(pipeline: Pipeline) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(pipeline)
    return generate_latest(registry)


def read_collectors(data_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each live collector's counters, by slot."""
    found = []
    now = time.time_ns()
    for path in sorted((data_dir / "run" / COLLECTORS_DIR).glob("*.json")):
        try:
            stats = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(stats, dict) and now - stats.get("updated_ns", 0) < STALE_SECONDS * 1e9:
            found.append((path.stem, stats))
    return found
