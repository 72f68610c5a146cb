"""Dashboard benchmark: every page's server time on the reports benchmark's
product, and the live feed's delay under ingest (issue 11, "Targets").

1. **Data.** The store of ``bench/reports.py`` (generated and cached there,
   ``--events`` events, default 10,000,000), copied into a fresh data directory.
2. **In process**, on that store, as the server sets DuckDB for a report
   (every core, ``memory_limit`` 1 GB): the overview of the product's last
   30 days of data (``views.overview.overview_view`` at the end of the data's
   range), the pickers' names (``views.names.names_view``) and each report
   page's report alone (``run_report`` with the page's body): what a page
   costs beyond its report is the page's time less this.
3. **Pages**: ``tally serve`` on that data directory (127.0.0.1), an account
   signed in with httpx, each page asked once (the first time: the report
   pages' first also reads the pickers' names, which the server then keeps for
   30 s) and then ``--repeat`` times, the median: the overview (today's last
   30 days), every report page with the reports benchmark's bodies, a person
   page, the events page. The time is from the request to the last byte of
   the HTML, through the collector's proxy.
4. **Live feed**: while ``--rate`` tracking calls a second are sent for
   ``--seconds`` seconds, the API's live feed is read; the delay of each record
   is from the 200 of its tracking call to its event in the stream.

Before each measurement the script waits (up to ``--quiet-wait`` seconds) for
a quiet second, and shows the share of the machine's CPU that programs other
than this one and the server used while it was measured ("other %"), and the
load average before and after.

    .venv/bin/python bench/dashboard.py
    .venv/bin/python bench/dashboard.py --events 1000000 --people 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import httpx
import psutil

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import reports as reports_bench  # noqa: E402

from serverproc import RunningServer  # noqa: E402
from tally.log.reader import LogReader  # noqa: E402
from tally.reports import Product, run_report  # noqa: E402
from tally.views.names import names_view  # noqa: E402
from tally.views.overview import overview_view  # noqa: E402

KEY = "b" * 40
PASSWORD = "a benchmark password"
SENDERS = 4
BODIES: dict[str, dict[str, Any]] = {
    "metrics": {"event": "Visited Site", "interval": "day"},
    "funnel": {"steps": [{"event": "Visited Site"}, {"event": "Added To Cart"},
                         {"event": "Purchased"}]},
    "cohort": {"first_event": "Visited Site", "return_event": "Visited Site",
               "interval": "week", "buckets": 12},
    "revenue": {"interval": "day"},
    "abtest": {"experiment": "Checkout Experiment", "conversion": "Purchased"},
    "path": {"start": "Visited Site", "conversion": "Purchased"},
    "people": {"conditions": [
        {"type": "event", "event": "Purchased", "count": {"op": "at_least", "value": 2}},
        {"type": "property", "property": "Plan", "op": "equals", "value": "pro"}]},
}  # fmt: skip


@dataclass
class Row:
    name: str
    first: float  # the first run's seconds
    median: float  # the median of the runs after it
    other: float  # other programs' share of the CPU meanwhile (%)


class Watch:
    """The share of the machine's CPU (%) that programs other than this one
    and ``pids``' process trees used between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def _ours(self) -> float:
        procs: dict[int, psutil.Process] = {}
        for root in [psutil.Process(), *(psutil.Process(pid) for pid in self.pids)]:
            # (the server is a child of this process: each process counted once)
            procs.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        total = 0.0
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def start(self) -> None:
        self.busy, self.ours, self.at = self._busy(), self._ours(), time.monotonic()

    def stop(self) -> float:
        elapsed = (time.monotonic() - self.at) * (psutil.cpu_count() or 1)
        other = (self._busy() - self.busy) - (self._ours() - self.ours)
        return max(0.0, 100 * other / elapsed) if elapsed else 0.0

    @staticmethod
    def _busy() -> float:
        return reports_bench.busy_seconds(psutil.cpu_times())


def measure(name: str, run: Any, repeat: int, watch: Watch, quiet_wait: float) -> Row:
    wait_quiet(watch, quiet_wait)
    watch.start()
    started = time.perf_counter()
    run()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return Row(name, first, statistics.median(times), watch.stop())


def wait_quiet(watch: Watch, max_wait: float, threshold_pct: float = 10.0) -> None:
    """Wait (at most ``max_wait`` seconds) for a second in which other programs
    use under ``threshold_pct`` of the machine."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait:
        watch.start()
        time.sleep(1.0)
        if watch.stop() < threshold_pct:
            return


def in_process(store: Path, data_dir: Path, args: argparse.Namespace) -> list[Row]:
    con = duckdb.connect(str(store))
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    con.execute("SET memory_limit = '1GB'")
    reader = LogReader(data_dir / "log")
    end = reports_bench.END - 1
    product = Product(reports_bench.PRODUCT, "UTC", "Billing Amount")
    watch = Watch([])
    rows = [
        measure("overview view, last 30 days of data",
                lambda: overview_view(con, reports_bench.PRODUCT, "UTC", reader, data_dir,
                                      now=end),
                args.repeat, watch, args.quiet_wait),
        measure("names view (pickers)", lambda: names_view(con, reports_bench.PRODUCT),
                args.repeat, watch, args.quiet_wait),
    ]  # fmt: skip
    for kind, body in BODIES.items():
        full = {"from": reports_bench.FROM, "to": reports_bench.TO, **body}
        rows.append(measure(f"report {kind} alone", lambda k=kind, b=full: run_report(
            con.cursor(), product, k, b), args.repeat, watch, args.quiet_wait))  # fmt: skip
    con.close()
    return rows


def tally(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    run = subprocess.run([sys.executable, "-m", "tally", *args, "--data-dir", str(data_dir)],
                         input=stdin, capture_output=True, text=True, check=True)  # fmt: skip
    return run.stdout


def pages(server: RunningServer, person: str, args: argparse.Namespace) -> list[Row]:
    client = httpx.Client(base_url=server.base_url, timeout=120)
    form = client.get("/sign-in").text
    token = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    client.post("/sign-in", data={"csrf": token, "name": "bench", "password": PASSWORD})
    product = f"/products/{reports_bench.PRODUCT}"
    urls = {"overview": f"{product}/"}
    for kind, body in BODIES.items():
        full = {"from": reports_bench.FROM, "to": reports_bench.TO, **body}
        urls[f"report {kind}"] = f"{product}/reports/{kind}?q={quote(json.dumps(full))}"
    urls["person"] = f"{product}/people/{quote(person, safe='')}"
    urls["events"] = f"{product}/events"

    def get(url: str) -> None:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.text[:500])

    assert server.process is not None
    watch = Watch([server.process.pid])
    return [measure(f"page: {name}", lambda u=url: get(u), args.repeat, watch, args.quiet_wait)
            for name, url in urls.items()]  # fmt: skip


def live_delays(server: RunningServer, rate: int, seconds: float) -> list[float]:
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    ready = threading.Event()

    def read() -> None:
        headers = {"Authorization": f"Bearer {server.token}"}
        url = f"{server.base_url}/api/v1/products/{reports_bench.PRODUCT}/live"
        with httpx.stream("GET", url, params={"seconds": seconds + 30}, headers=headers,
                          timeout=None) as stream:  # fmt: skip
            for line in stream.iter_lines():
                if line == "event: ready":
                    ready.set()
                if line.startswith("data: ") and '"live-' in line:
                    arrived.setdefault(json.loads(line[6:])["identity"], time.perf_counter())
                if len(arrived) >= len(sent) > 0 and not sending.is_alive():
                    return

    sending = threading.Thread(target=lambda: None)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait(30)

    def send(lane: int) -> None:
        with httpx.Client(base_url=server.base_url) as client:
            start = time.perf_counter()
            n = 0
            while (now := time.perf_counter()) - start < seconds:
                due = int((now - start) * rate / SENDERS)
                while n < due:
                    who = f"live-{lane}-{n}"
                    client.get("/e", params={"_k": KEY, "_p": who, "_n": "Live"})
                    sent[who] = time.perf_counter()
                    n += 1
                time.sleep(0.001)

    senders = [threading.Thread(target=send, args=(lane,)) for lane in range(SENDERS)]
    sending = senders[0]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    reader.join(60)
    print(f"live feed: sent {len(sent) / seconds:,.0f} tracking calls a second")
    return sorted(arrived[w] - sent[w] for w in sent if w in arrived)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000, help="tracking calls a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="of ingest, for the feed")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait for a quiet second before each measurement",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    spec = reports_bench.Spec(args.events, args.people, args.seed)
    cached = HERE / ".data" / f"reports-{args.events}.duckdb"
    reports_bench.ensure_data(cached, spec, 3600)
    with tempfile.TemporaryDirectory(dir=HERE / ".data") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        shutil.copy(cached, data_dir / "store.duckdb")
        results = in_process(data_dir / "store.duckdb", data_dir, args)
        con = duckdb.connect(str(data_dir / "store.duckdb"), read_only=True)
        typical, _ = reports_bench.sample_people(con)
        con.close()
        server = RunningServer(data_dir, extra_args=["--defer-seconds", "0"]).start(120)
        try:
            tally(data_dir, "products", "create", reports_bench.PRODUCT, "--key", KEY)
            tally(data_dir, "users", "create", "bench", stdin=PASSWORD + "\n")
            results += pages(server, typical, args)
            load_feed = os.getloadavg()
            delays = live_delays(server, args.rate, args.seconds)
        finally:
            server.stop()
    print(f"\n{args.events:,} events; the first run, then the median of {args.repeat}:")
    print(f"  {'':<40} {'first':>8} {'median':>8} {'other %':>8}")
    for row in results:
        print(f"  {row.name:<40} {row.first * 1000:5.0f} ms {row.median * 1000:5.0f} ms "
              f"{row.other:8.1f}")  # fmt: skip
    if delays:
        p95 = delays[int(len(delays) * 0.95) - 1]
        middle = statistics.median(delays)
        print(f"  live feed: {len(delays):,} records, median {middle:.2f} s, "
              f"p95 {p95:.2f} s, max {delays[-1]:.2f} s")  # fmt: skip
    after = os.getloadavg()
    print("load average (1, 5, 15 min): "
          + "; ".join(f"{when} {' '.join(f'{x:.2f}' for x in load)}" for when, load in
                      (("at the start", load_before), ("before the feed", load_feed),
                       ("at the end", after))))  # fmt: skip


if __name__ == "__main__":
    main()
