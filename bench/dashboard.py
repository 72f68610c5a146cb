"""Dashboard benchmark: every page's server time on the reports benchmark's
product, and the live feed's delay under ingest (issue 11, "Targets").

1. **Data.** The store of ``bench/reports.py`` (generated and cached there,
   ``--events`` events, default 10,000,000), copied into a fresh data directory.
2. **In process**, on that store: the overview of the product's last 30 days
   of data (``views.overview.overview_view`` at the end of the data's range)
   and the pickers' names (``views.names.names_view``), as the pages call them.
3. **Pages**: ``tally serve`` on that data directory (127.0.0.1), an account
   signed in with httpx, each page asked ``--repeat`` times after one warm-up:
   the overview (today's last 30 days), every report page with the reports
   benchmark's bodies, a person page, the events page. The time is from the
   request to the last byte of the HTML, through the collector's proxy.
4. **Live feed**: while ``--rate`` tracking calls a second are sent for
   ``--seconds`` seconds, the API's live feed is read; the delay of each record
   is from the 200 of its tracking call to its event in the stream.

    .venv/bin/python bench/dashboard.py
    .venv/bin/python bench/dashboard.py --events 1000000 --people 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import httpx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import reports as reports_bench  # noqa: E402

from serverproc import RunningServer  # noqa: E402
from tally.log.reader import LogReader  # noqa: E402
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


def median_seconds(run: Any, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process(store: Path, data_dir: Path, repeat: int) -> list[tuple[str, float]]:
    con = duckdb.connect(str(store))
    con.execute("SET threads = 2")
    reader = LogReader(data_dir / "log")
    end = reports_bench.END - 1
    rows = [
        ("overview view, last 30 days of data",
         median_seconds(lambda: overview_view(con, reports_bench.PRODUCT, "UTC", reader,
                                              data_dir, now=end), repeat)),
        ("names view (pickers)",
         median_seconds(lambda: names_view(con, reports_bench.PRODUCT), repeat)),
    ]  # fmt: skip
    con.close()
    return rows


def tally(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    run = subprocess.run([sys.executable, "-m", "tally", *args, "--data-dir", str(data_dir)],
                         input=stdin, capture_output=True, text=True, check=True)  # fmt: skip
    return run.stdout


def pages(server: RunningServer, person: str, repeat: int) -> list[tuple[str, float]]:
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

    return [(name, median_seconds(lambda u=url: get(u), repeat)) for name, url in urls.items()]


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
    args = parser.parse_args()
    spec = reports_bench.Spec(args.events, args.people, args.seed)
    cached = HERE / ".data" / f"reports-{args.events}.duckdb"
    reports_bench.ensure_data(cached, spec, 3600)
    with tempfile.TemporaryDirectory(dir=HERE / ".data") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        shutil.copy(cached, data_dir / "store.duckdb")
        results = in_process(data_dir / "store.duckdb", data_dir, args.repeat)
        con = duckdb.connect(str(data_dir / "store.duckdb"), read_only=True)
        typical, _ = reports_bench.sample_people(con)
        con.close()
        server = RunningServer(data_dir, extra_args=["--defer-seconds", "0"]).start(120)
        try:
            tally(data_dir, "products", "create", reports_bench.PRODUCT, "--key", KEY)
            tally(data_dir, "users", "create", "bench", stdin=PASSWORD + "\n")
            results += pages(server, typical, args.repeat)
            delays = live_delays(server, args.rate, args.seconds)
        finally:
            server.stop()
    print(f"\n{args.events:,} events, median of {args.repeat}:")
    for name, seconds in results:
        print(f"  {name:<40} {seconds * 1000:8.0f} ms")
    if delays:
        p95 = delays[int(len(delays) * 0.95) - 1]
        middle = statistics.median(delays)
        print(f"  live feed: {len(delays):,} records, median {middle:.2f} s, "
              f"p95 {p95:.2f} s, max {delays[-1]:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
