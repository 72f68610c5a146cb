"""Hostile and careless HTTP against a real server (SPEC §1 limits): what a
client can make a collector hold stays bounded, what could frame a request
differently from a proxy in front is refused, and every request the server
takes is answered in order, however long the core takes."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from serverproc import RunningServer, wait_until
from tally import wire
from tally.log import LogReader
from wire import connect, get, read_responses, read_until_closed, split_responses

MIB = 1024 * 1024


def _collectors_rss(server: RunningServer) -> int:
    assert server.process is not None
    return sum(child.memory_info().rss for child in psutil.Process(server.process.pid).children())


def _refused(data: bytes) -> int:
    """The status of the one answer in ``data``, which the server closed after."""
    [response] = split_responses(data)
    assert response.headers["connection"] == "close"
    return response.status


# -- limits on what arrives ---------------------------------------------------------------


@pytest.mark.parametrize("unfinished", [b"X-A: ", b"X-"], ids=["header value", "header name"])
def test_a_head_that_never_ends_is_refused_while_it_arrives(server, unfinished):
    before = _collectors_rss(server)
    with connect(server.port) as sock:
        sock.sendall(b"GET /e?_k=k&_p=a&_n=x HTTP/1.1\r\nHost: x\r\n" + unfinished)
        for _ in range(64):  # 4 MiB, read and dropped once the head is over 16 KiB
            sock.sendall(b"a" * 65536)
        answer = read_until_closed(sock)
    assert _refused(answer) == 413
    assert _collectors_rss(server) - before < 10 * MIB
    assert httpx.get(f"{server.base_url}/s?_k=k&_p=after").content == wire.GIF
    assert [r.query for r in server.wait_for_records(1)] == [b"_k=k&_p=after"]


def test_a_declared_body_over_the_limit_is_refused_as_soon_as_the_head_is_in(server):
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /e?_k=k&_p=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        )
        started = time.monotonic()
        answer = read_until_closed(sock, timeout=5)
    assert _refused(answer) == 413
    assert time.monotonic() - started < 2
    # A client that sends its whole body anyway still reads the answer.
    big = httpx.post(f"{server.base_url}/e?_k=k&_p=a", content=b"a=" + b"x" * (2 * MIB))
    assert big.status_code == 413
    assert server.records() == []


def test_requests_that_arrive_in_pieces_within_the_limits_are_taken(server):
    """What the limits look at while a request is still arriving (a head near
    the limit, a body, a chunked body) does not refuse a good request."""
    near_limit = b"X-Pad: " + b"p" * (15 * 1024) + b"\r\n"
    body = b"_n=Paid&amount=" + b"9" * (200 * 1024)
    pieces = [
        [get("/e?_k=k&_p=head&_n=x")[:-2] + near_limit[:9000], near_limit[9000:] + b"\r\n"],
        [
            b"POST /e?_k=k&_p=body HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body),
            body[:70000],
            body[70000:],
        ],
        [
            b"POST /e?_k=k&_p=chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\n_n=Pa\r\n",
            b"2\r\nid\r\n0\r\n\r\n",
        ],
        [get("/e?_k=k&_p=bytewise&_n=x")[:30], get("/e?_k=k&_p=bytewise&_n=x")[30:]],
    ]
    with connect(server.port) as sock:
        for request in pieces:
            for piece in request:
                sock.sendall(piece)
                time.sleep(0.05)  # separate reads
            [response] = read_responses(sock, 1)
            assert response.is_gif()
    records = server.wait_for_records(4)
    assert [r.query for r in records] == [
        b"_k=k&_p=head&_n=x",
        b"_k=k&_p=body",
        b"_k=k&_p=chunked",
        b"_k=k&_p=bytewise&_n=x",
    ]
    assert records[1].body == body
    assert records[2].body == b"_n=Paid"


# -- framing that a proxy in front could read differently ------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path_factory.mktemp("hostile") / "data").start()
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr, running.stderr


def _new_records(log_dir: Path, seen: dict[str, int]) -> list[bytes]:
    reader = LogReader(log_dir)
    queries = []
    for stream in reader.streams():
        for entry in reader.read(stream, seen.get(stream, 0)):
            queries.append(entry.record.query)
            seen[stream] = entry.next_position
    return queries


_seen: dict[str, int] = {}

# Each once as llhttp sees it, once with raw UTF-8 in the URL, which only the
# lenient reader takes (test_wire: such requests are tracked).
SMUGGLING = {
    "two Content-Length": b"Content-Length: 3\r\nContent-Length: 9\r\n\r\na=b&c=ddd",
    "Content-Length then Transfer-Encoding": (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding then Content-Length": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "obs-fold with a space": b"X-A: a\r\n Content-Length: 3\r\n\r\na=b",
    "obs-fold with a tab": b"X-A: a\r\n\tb\r\n\r\n",
    "space before the colon": b"Content-Length : 3\r\n\r\na=b",
    "Content-Length with a sign": b"Content-Length: +3\r\n\r\na=b",
    "bare CR in a header": b"X-A: a\rContent-Length: 3\r\n\r\na=b",
}


@pytest.mark.parametrize("target", [b"/e?_k=k&_p=smuggler", b"/e?_k=k&_p=sm\xc3\xbcggler"])
@pytest.mark.parametrize("head_and_body", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_framing_is_refused_and_recorded_nowhere(shared_server, head_and_body, target):
    log_dir = shared_server.data_dir / "log"
    _new_records(log_dir, _seen)
    with connect(shared_server.port) as sock:
        sock.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + head_and_body)
        assert _refused(read_until_closed(sock)) == 400
    marker = f"_k=k&_p=marker{time.monotonic_ns()}"
    assert httpx.get(f"{shared_server.base_url}/s?{marker}").content == wire.GIF
    deadline = time.monotonic() + 5
    logged: list[bytes] = []
    while marker.encode() not in logged and time.monotonic() < deadline:
        logged += _new_records(log_dir, _seen)
    assert logged == [marker.encode()]


def test_the_same_content_length_twice_is_one_length(shared_server):
    """RFC 9110 §8.6 lets a recipient take identical values as one: nothing to
    read two ways, and a sender that repeats itself is tracked."""
    log_dir = shared_server.data_dir / "log"
    _new_records(log_dir, _seen)
    with connect(shared_server.port) as sock:
        sock.sendall(
            b"POST /e?_k=k&_p=twice HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Content-Length: 3\r\n\r\na=b"
        )
        [response] = read_responses(sock, 1)
    assert response.is_gif()
    deadline = time.monotonic() + 5
    logged: list[bytes] = []
    while not logged and time.monotonic() < deadline:
        logged += _new_records(log_dir, _seen)
    assert logged == [b"_k=k&_p=twice"]


# -- answers, in order, whoever gives them ------------------------------------------------


def test_requests_pipelined_after_a_request_for_the_core_are_answered_in_order(server):
    status = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (
        server.token.encode()
    )
    with connect(server.port) as sock:
        sock.sendall(
            status + get("/e?_k=k&_p=a&_n=x") + get("/nowhere") + get("/s?_k=k&_p=b") + status
        )
        first, gif, not_found, second_gif, second = read_responses(sock, 5)
        assert first.status == second.status == 200
        assert json.loads(first.body)["version"] == json.loads(second.body)["version"]
        assert gif.is_gif()
        assert second_gif.is_gif()
        assert not_found.status == 404
        assert first.headers["connection"] == not_found.headers["connection"] == "keep-alive"
        sock.sendall(get("/e?_k=k&_p=c&_n=x"))  # and the connection goes on
        [third_gif] = read_responses(sock, 1)
        assert third_gif.is_gif()
    records = server.wait_for_records(3)
    assert [r.query for r in records] == [b"_k=k&_p=a&_n=x", b"_k=k&_p=b", b"_k=k&_p=c&_n=x"]


def test_a_request_for_the_core_that_closes_the_connection_is_the_last(server):
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            + get("/e?_k=k&_p=after-close&_n=x")
        )
        [not_found] = split_responses(read_until_closed(sock))
    assert not_found.status == 404
    assert not_found.headers["connection"] == "close"
    httpx.get(f"{server.base_url}/s?_k=k&_p=marker")
    assert [r.query for r in server.wait_for_records(1)] == [b"_k=k&_p=marker"]


@pytest.fixture
def quick_timeout_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path / "data", extra_args=["--timeout", "0.3"]).start()
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr, running.stderr


def test_a_request_for_the_core_that_outlasts_the_timeout_is_answered(quick_timeout_server):
    """The timeout is for idle clients; a client waiting for the core is not
    idle. (A day-by-day cohort over the widest range, with the 2 buckets that
    the cohort cell limit allows it, takes about a second.)"""
    server = quick_timeout_server
    started = time.monotonic()
    response = httpx.post(
        f"{server.base_url}/api/v1/products/default/reports/cohort",
        headers={"Authorization": f"Bearer {server.token}"},
        json={"from": "1970-01-01", "to": "2200-01-01", "first_event": "x",
              "return_event": "y", "interval": "day", "buckets": 2},
        timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["cohorts"]) > 80_000
    assert elapsed > 0.6, "this test needs an API request slower than the 0.3 s timeout"


# -- a client that sends and never reads --------------------------------------------------


def test_a_client_that_pipelines_and_never_reads_is_held_back(server):
    before = _collectors_rss(server)
    peak = before
    stop = threading.Event()

    def pipeline_without_reading() -> None:
        batch = get("/e?_k=k&_p=hog&_n=x") * 500
        with connect(server.port) as hog:
            hog.setblocking(False)
            view = memoryview(batch)
            while not stop.is_set():
                if not view:
                    view = memoryview(batch)
                _, writable, _ = select.select([], [hog], [], 0.05)
                if writable:
                    with contextlib.suppress(BlockingIOError):
                        view = view[hog.send(view) :]

    hog = threading.Thread(target=pipeline_without_reading)
    hog.start()
    answered = 0
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            other = httpx.get(f"{server.base_url}/s?_k=k&_p=other", timeout=2)
            assert other.content == wire.GIF
            answered += 1
            peak = max(peak, _collectors_rss(server))
            time.sleep(0.2)
    finally:
        stop.set()
        hog.join()
    assert answered >= 10
    assert peak - before < 20 * MIB, f"collectors grew by {(peak - before) / MIB:.0f} MiB"
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_a_refused_request_is_answered_before_the_connection_closes(server):
    """The answer to a refused request is not lost to a reset while the client
    is still sending (Tally reads on, drops it, and closes after the client)."""
    with connect(server.port) as sock:
        sock.sendall(b"\x16\x03\x01garbage\r\n\r\n" + b"more garbage " * 50_000)
        sock.shutdown(socket.SHUT_WR)
        assert _refused(read_until_closed(sock)) == 400
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_connections_past_the_limit_are_told_to_come_back(tmp_path: Path) -> None:
    """--max-connections: a sixth connection to a collector that holds five gets
    503 + Retry-After and is closed; once one goes, a new one is served."""
    server = RunningServer(
        tmp_path / "data", workers=1, extra_args=["--max-connections", "5"]
    ).start()
    held = []
    try:
        for _ in range(5):
            sock = connect(server.port)
            sock.sendall(get("/healthz"))
            assert read_responses(sock, 1)[0].status == 200
            held.append(sock)
        with connect(server.port) as extra:
            [refused] = split_responses(read_until_closed(extra))
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        held.pop().close()
        params = {"_k": server.api_key, "_p": "after", "_n": "Room Again"}
        wait_until(
            lambda: httpx.get(server.base_url + "/e", params=params).status_code == 200,
            5,
            "a connection is served once one is closed",
        )
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0
