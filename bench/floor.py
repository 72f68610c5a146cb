"""API floor benchmark: what a report call costs when its SQL costs nothing.

Issue 12's target: a report whose SQL takes nothing answers in under 5 ms
through the collector's proxy. This measures that floor and its parts.

1. **Server.** ``tally serve`` on 127.0.0.1 (a temporary data directory, every
   setting its default): an empty store, or with ``--events N`` a copy of
   ``bench/reports.py``'s generated store (cached in ``bench/.data``; its
   product ``bench``, created through the CLI). The first start's operator
   token is the one used.
2. **Calls**, sequential, on one keep-alive connection (a few lines of HTTP
   over a socket: the client's own cost is a few microseconds), each the
   time from the first byte sent to the last byte of the answer read:

   - a metrics, a funnel and a people report for events never seen (their SQL
     finds nothing: what is left is the API's own overhead);
   - ``GET /api/v1/products`` (a catalog read: the API without DuckDB);
   - the references: ``/healthz`` (the collector answers it itself: the
     client and one collector, no proxy); the metrics report and the products
     sent to the core directly on its Unix socket, on one kept connection
     (the proxy's share is the difference), and the products on a new
     connection each (what a connection costs the core).

   The reports ask for ``--range`` (by default 30 days in which the generated
   store holds no event either). The cases are interleaved, one call of each
   in turn, ``--calls`` times after ``--warm-up`` rounds, so that a busy
   moment falls on all of them.
   Each answer must be the 200 of the first call, byte for byte (its SHA-256
   is printed, to compare the answers of two versions).
3. **Machine.** The load average before and after, and the share of the CPU
   that programs other than this one and the server used meanwhile.

    .venv/bin/python bench/floor.py                          # about 30 s
    .venv/bin/python bench/floor.py --calls 1000
    .venv/bin/python bench/floor.py --events 1000000 --people 100000
    .venv/bin/python bench/floor.py --events 10000000 --range 2026-08-03,2026-11-01

See docs/benchmarks.md ("API floor").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from serverproc import RunningServer  # noqa: E402

TARGET_MS = 5.0
KEY = "f" * 40
#: The range of every report (fixed, so that answers compare across days): by
#: default the 30 days after bench/reports.py's data, where its store holds
#: no event either (a layout that prunes by time reads nothing there).
RANGE = ("2026-11-02", "2026-12-02")
NEVER = "Never Seen Event"


def reports(start: str, end: str) -> dict[str, dict[str, object]]:
    """The bodies of the reports for events never seen, over [start, end)."""
    span = {"from": start, "to": end}
    return {
        "metrics": {"event": NEVER, "interval": "day", **span},
        "funnel": {"steps": [NEVER, NEVER + " 2", NEVER + " 3"], **span},
        "people": {"conditions": [{"type": "event", "event": NEVER}], **span},
    }


class Connection:
    """HTTP/1.1 by hand on one kept socket (or, ``fresh``, a new one each
    call): a TCP address, or a Unix socket's path."""

    def __init__(self, address: tuple[str, int] | str, *, fresh: bool = False) -> None:
        self.address = address
        self.fresh = fresh
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(self.address)
        return sock

    def call(self, request: bytes) -> tuple[int, bytes]:
        fresh = self.fresh
        if self.sock is None or fresh:
            self.close()
            self.sock = self._connect()
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head!r}")
        while len(self.buffer) < int(length[1]):
            self._read()
        body, self.buffer = self.buffer[: int(length[1])], self.buffer[int(length[1]) :]
        if re.search(rb"(?im)^connection:\s*close", head) or fresh:
            self.close()
        return int(head.split(None, 2)[1]), body

    def _read(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""


def request(method: str, path: str, token: str, body: object = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")  # fmt: skip
    return head.encode() + data


@dataclass
class Case:
    name: str
    connection: Connection
    request: bytes
    times: list[float] = field(default_factory=list)
    answer: bytes | None = None

    def call(self) -> float:
        started = time.perf_counter()
        status, body = self.connection.call(self.request)
        took = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{self.name}: {status} {body[:300]!r}")
        if self.answer is None:
            self.answer = body
        elif body != self.answer:
            raise RuntimeError(f"{self.name}: the answer changed from one call to the next")
        return took


def cases(server: RunningServer, product: str, bodies: dict[str, dict[str, object]]) -> list[Case]:
    token = server.token
    tcp = Connection((server.host, server.port))
    core_socket = str(server.data_dir / "run" / "core.sock")
    core = Connection(core_socket)
    reports = f"/api/v1/products/{product}/reports"
    found = [Case(f"{kind} (event never seen)", tcp,
                  request("POST", f"{reports}/{kind}", token, body))
             for kind, body in bodies.items()]  # fmt: skip
    return [
        *found,
        Case("GET /api/v1/products", tcp, request("GET", "/api/v1/products", token)),
        Case("reference: /healthz (collector)", tcp, request("GET", "/healthz", token)),
        Case("reference: metrics, core socket", core,
             request("POST", f"{reports}/metrics", token, bodies["metrics"])),
        Case("reference: products, core socket", core,
             request("GET", "/api/v1/products", token)),
        Case("reference: products, core, new conn.", Connection(core_socket, fresh=True),
             request("GET", "/api/v1/products", token)),
    ]  # fmt: skip


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def tree_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def measure(run: list[Case], calls: int, warm_up: int, watched: list[int]) -> float:
    """Interleaved calls; the share (%) of the machine other programs used."""
    for _ in range(warm_up):
        for case in run:
            case.call()
    busy, ours = busy_seconds(), tree_seconds(watched)
    started = time.monotonic()
    for _ in range(calls):
        for case in run:
            case.times.append(case.call())
    elapsed = (time.monotonic() - started) * (psutil.cpu_count() or 1)
    others = busy_seconds() - busy - (tree_seconds(watched) - ours)
    return max(0.0, 100 * others / elapsed)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def tally(data_dir: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "tally", *args, "--data-dir", str(data_dir)],
                   check=True, capture_output=True)  # fmt: skip


def prepared_data(args: argparse.Namespace, data_dir: Path) -> Callable[[], str]:
    """Put the generated store in place (with ``--events``); a function that
    makes its product once the server runs, and names the product to ask."""
    if not args.events:
        return lambda: "default"
    import reports as reports_bench  # bench/reports.py: its generator and its cache

    spec = reports_bench.Spec(args.events, args.people, args.seed)
    cached = HERE / ".data" / f"reports-{args.events}.duckdb"
    reports_bench.ensure_data(cached, spec, 3600)
    data_dir.mkdir(parents=True)
    shutil.copy(cached, data_dir / "store.duckdb")

    def product() -> str:
        tally(data_dir, "products", "create", reports_bench.PRODUCT, "--key", KEY)
        return reports_bench.PRODUCT

    return product


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls of each case")
    parser.add_argument("--warm-up", type=int, default=20, help="untimed rounds first")
    parser.add_argument("--events", type=int, default=0,
                        help="on bench/reports.py's generated store of this many events "
                        "(default: an empty store)")  # fmt: skip
    parser.add_argument("--people", type=int, default=1_000_000, help="with --events")
    parser.add_argument("--seed", type=int, default=1, help="with --events")
    parser.add_argument("--workers", type=int, default=2, help="collector processes")
    parser.add_argument("--range", default=",".join(RANGE),
                        help="FROM,TO of the reports (default: %(default)s, after the generated "
                        "data; 2026-08-03,2026-11-01 is the data's whole range)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 2 or args.warm_up < 0:
        parser.error("--calls is 2 or more, --warm-up 0 or more")
    start, _, end = args.range.partition(",")
    bodies = reports(start.strip(), end.strip())
    load_before = os.getloadavg()
    (HERE / ".data").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE / ".data") as tmp:
        data_dir = Path(tmp) / "data"
        product = prepared_data(args, data_dir)
        server = RunningServer(data_dir, workers=args.workers).start(120)
        run: list[Case] = []
        try:
            run = cases(server, product(), bodies)
            other = measure(run, args.calls, args.warm_up, [os.getpid()])
        finally:
            for case in run:
                case.connection.close()
            server.stop()
    load_after = os.getloadavg()
    store = f"{args.events:,} events" if args.events else "an empty store"
    store += f", reports over [{start}, {end})"
    print(
        f"\nAPI floor, {store}, {args.workers} collectors: {args.calls} calls of each case, "
        f"interleaved, after {args.warm_up} rounds (target: under {TARGET_MS:g} ms)"
    )
    print(f"  {'case':<36} {'median':>9} {'p99':>9} {'÷ healthz':>10}  answer")
    healthz = statistics.median(next(c for c in run if "healthz" in c.name).times)
    figures = {}
    for case in run:
        middle, p99 = statistics.median(case.times), percentile(case.times, 0.99)
        digest = hashlib.sha256(case.answer or b"").hexdigest()[:12]
        print(f"  {case.name:<36} {middle * 1000:6.2f} ms {p99 * 1000:6.2f} ms "
              f"{middle / healthz:10.1f}  {len(case.answer or b''):,} B {digest}")  # fmt: skip
        figures[case.name] = {"median_ms": middle * 1000, "p99_ms": p99 * 1000, "sha256": digest}
    by_name = {c.name: statistics.median(c.times) for c in run}
    proxy = by_name["metrics (event never seen)"] - by_name["reference: metrics, core socket"]
    connection = (
        by_name["reference: products, core, new conn."]
        - by_name["reference: products, core socket"]
    )
    print(f"  the proxy's share of the metrics call: {proxy * 1000:.2f} ms; a new connection "
          f"to the core: {connection * 1000:.2f} ms")  # fmt: skip
    print(f"machine: {psutil.cpu_count()} CPUs; other programs {other:.0f}% of it meanwhile; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "figures": figures,
                                         "other_pct": other}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
