"""An import through the tracking port streams (issue 13, point 4): the
collector hands ``POST /api/v1/products/{product}/import`` to the core as its
body arrives, past the 1 MiB that bounds every other request, with bounded
memory. On a real server on 127.0.0.1, as a program would send it."""

from __future__ import annotations

import gzip
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from serverproc import RunningServer, wait_until
from wire import connect, get, read_responses, read_until_closed, split_responses

MIB = 1024 * 1024
T = 1_700_000_000
IMPORT = "/api/v1/products/default/import"


def _collectors_rss(server: RunningServer) -> int:
    assert server.process is not None
    return sum(child.memory_info().rss for child in psutil.Process(server.process.pid).children())


def _records(count: int, *, event: str, start: int = 0) -> Iterator[bytes]:
    """JSON lines of about 500 bytes each, ``count`` of them, in pieces of
    about 256 KiB; the padding does not repeat, so that gzip keeps it large."""
    piece: list[bytes] = []
    for i in range(start, start + count):
        pad = os.urandom(230).hex()
        line = {"_p": f"p{i}", "_t": T + i, "_n": event, "pad": pad}
        piece.append(json.dumps(line).encode() + b"\n")
        if len(piece) == 512:
            yield b"".join(piece)
            piece = []
    if piece:
        yield b"".join(piece)


class _PeakRss:
    """The collectors' highest RSS while the block runs, sampled."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.before = self.peak = _collectors_rss(server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _collectors_rss(self.server))

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


def _total(server: RunningServer, event: str) -> int:
    found = httpx.get(f"{server.base_url}/api/v1/products/default/events",
                      params={"event": event}, headers=_auth(server))  # fmt: skip
    return int(found.json()["total"])


def _auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


N = 40_000  # about 20 MiB of JSON lines


def test_a_large_import_streams_through_the_collector_with_bounded_memory(server):
    url = server.base_url + IMPORT
    headers = {**_auth(server), "Content-Type": "application/x-ndjson"}
    declared = b"".join(_records(N, event="Declared"))
    assert len(declared) > 19 * MIB
    with _PeakRss(server) as rss:  # with its Content-Length
        answer = httpx.post(url, content=declared, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["written"] == N
    assert rss.growth < 10 * MIB, f"collectors grew by {rss.growth / MIB:.0f} MiB"
    del declared

    with _PeakRss(server) as rss:  # chunked, as it is generated
        answer = httpx.post(url, content=_records(N, event="Chunked", start=N),
                            headers=headers, timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["written"] == N
    assert rss.growth < 10 * MIB, f"collectors grew by {rss.growth / MIB:.0f} MiB"

    zipped = gzip.compress(b"".join(_records(10_000, event="Zipped", start=2 * N)), 1)
    assert len(zipped) > 2 * MIB
    answer = httpx.post(url, content=zipped, timeout=120,
                        headers={**headers, "Content-Encoding": "gzip"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["written"] == 10_000

    def applied() -> bool:
        return (_total(server, "Declared"), _total(server, "Chunked"),
                _total(server, "Zipped")) == (N, N, 10_000)  # fmt: skip

    wait_until(applied, 120, "every imported record is applied")


def test_requests_pipelined_after_an_import_are_answered_after_it_in_order(server):
    body = b"".join(_records(6_000, event="Piped"))  # about 3 MiB
    head = (
        b"POST " + IMPORT.encode() + b"?name=piped HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + server.token.encode() + b"\r\n"
        b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    status = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (
        server.token.encode()
    )
    with connect(server.port) as sock:
        # Two requests for the core ahead of it, one tracking call between.
        sock.sendall(status + get("/e?_k=k&_p=before&_n=x") + head)
        sock.sendall(body + get("/e?_k=k&_p=after&_n=x") + status)
        first, gif, imported, second_gif, second = read_responses(sock, 5, timeout=60)
    assert first.status == second.status == 200
    assert gif.is_gif()
    assert second_gif.is_gif()
    assert imported.status == 200, imported.body
    assert json.loads(imported.body)["written"] == 6_000
    assert imported.headers["connection"] == "keep-alive"
    tracked = [r.query for r in server.wait_for_records(6_002) if r.query.startswith(b"_k=k&")]
    assert tracked == [b"_k=k&_p=before&_n=x", b"_k=k&_p=after&_n=x"]


def test_an_import_and_what_follows_it_in_any_pieces_are_read_alike(server):
    """However the reads split them (a request after the import begun inside
    the read that ends its body, say), the import and the requests pipelined
    around it are answered in order."""
    rng = random.Random(13)
    lines = [b"".join(_records(1, event="Split", start=i)) for i in range(300)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines) + b"0\r\n\r\n"
    data = (
        get("/e?_k=k&_p=first&_n=x")
        + _import_head(server, b"Transfer-Encoding: chunked\r\n")
        + chunked
        + get("/e?_k=k&_p=second&_n=x")
        + get("/healthz")
        + _import_head(server, b"Content-Length: %d\r\n" % len(b"".join(lines)))
        + b"".join(lines)
        + get("/e?_k=k&_p=third&_n=x")
    )
    for _ in range(3):
        with connect(server.port) as sock:
            at = 0
            while at < len(data):
                size = rng.choice([1, 7, 100, 1000, 5000, 70_000])
                sock.sendall(data[at : at + size])
                at += size
                if rng.random() < 0.1:
                    time.sleep(0.01)
            gif, imported, gif2, health, imported2, gif3 = read_responses(sock, 6, timeout=30)
        assert all(answer.is_gif() for answer in (gif, gif2, gif3))
        assert health.status == 200
        assert json.loads(imported.body)["written"] == 300
        assert json.loads(imported2.body)["written"] == 300


def test_a_client_that_leaves_mid_import_keeps_what_arrived(server):
    body = b"".join(_records(6_000, event="Left"))
    head = (
        b"POST " + IMPORT.encode() + b"?name=left HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + server.token.encode() + b"\r\n"
        b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with connect(server.port) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.5)
    # What arrived is written and durable: half the records, give or take a line.
    wait_until(lambda: _total(server, "Left") > 2_000, 30, "the first half is applied")
    assert _total(server, "Left") < 6_000
    assert httpx.get(server.base_url + "/healthz").status_code == 200


def test_a_2_mib_body_to_any_other_api_route_is_still_refused(server):
    for path in ("/api/v1/products/default/reports/metrics", "/api/v1/products/default/importx",
                 "/api/v1/products/default/import/more"):  # fmt: skip
        with connect(server.port) as sock:
            sock.sendall(
                b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (2 * MIB)
            )
            [refused] = split_responses(read_until_closed(sock))
        assert refused.status == 413, path


@pytest.fixture
def small_limits(tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(
        tmp_path / "data", extra_args=["--max-import-bytes", "4MiB", "--timeout", "0.5"]
    ).start()
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr, running.stderr


def _import_head(server: RunningServer, framing: bytes) -> bytes:
    return (
        b"POST " + IMPORT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + server.token.encode() + b"\r\n"
        b"Content-Type: application/x-ndjson\r\n" + framing + b"\r\n"
    )


def test_an_import_declared_over_the_limit_is_refused_at_once(small_limits):
    with connect(small_limits.port) as sock:
        sock.sendall(_import_head(small_limits, b"Content-Length: %d\r\n" % (5 * MIB)))
        [refused] = read_responses(sock, 1, timeout=5)
    assert refused.status == 413
    assert refused.headers["content-type"] == "application/json"
    error = json.loads(refused.body)["error"]
    assert error["code"] == "too_large"
    assert "4194304 bytes (--max-import-bytes)" in error["message"]


def test_a_chunked_import_over_the_limit_is_refused_when_it_passes_it(small_limits):
    chunk = b"".join(_records(1_000, event="Over"))
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with connect(small_limits.port) as sock:
        sock.sendall(_import_head(small_limits, b"Transfer-Encoding: chunked\r\n"))
        try:
            for _ in range(12):  # about 6 MiB
                sock.sendall(framed)
        except OSError:
            pass  # the server may have closed its side already
        [refused] = split_responses(read_until_closed(sock))
    assert refused.status == 413
    assert json.loads(refused.body)["error"]["code"] == "too_large"


def test_a_broken_chunk_in_an_import_is_a_400(small_limits):
    with connect(small_limits.port) as sock:
        sock.sendall(_import_head(small_limits, b"Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"4\r\n{}\n\n\r\nzz\r\n")
        [refused] = split_responses(read_until_closed(sock))
    assert refused.status == 400
    assert json.loads(refused.body)["error"]["code"] == "invalid_input"


def test_a_broken_import_waiting_for_its_turn_is_a_400_in_its_place(small_limits):
    status = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (
        small_limits.token.encode()
    )
    head = _import_head(small_limits, b"Transfer-Encoding: chunked\r\n")
    with connect(small_limits.port) as sock:
        sock.sendall(status + head + b"4\r\n{}\n\n\r\nzz\r\n")
        first, refused = split_responses(read_until_closed(sock))
    assert first.status == 200
    assert refused.status == 400
    assert json.loads(refused.body)["error"]["code"] == "invalid_input"


def test_an_upload_slower_than_the_timeout_is_not_cut_but_a_stalled_one_is(small_limits):
    server = small_limits  # --timeout 0.5

    def slowly() -> Iterator[bytes]:
        for piece in _records(2_000, event="Slow"):
            time.sleep(0.2)
            yield piece

    headers = {**_auth(server), "Content-Type": "application/x-ndjson"}
    started = time.monotonic()
    answer = httpx.post(server.base_url + IMPORT, content=slowly(), headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["written"] == 2_000
    assert time.monotonic() - started > 0.6  # sent over more than the timeout

    with connect(server.port) as sock:
        sock.sendall(_import_head(server, b"Content-Length: 1000\r\n") + b'{"_p": "a"')
        sock.settimeout(10)
        try:
            cut = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            cut = b"?"
    assert cut == b""  # closed after the timeout, unanswered


def test_expect_100_continue_is_answered_when_the_import_s_turn_comes(server):
    body = b"".join(_records(100, event="Expected"))
    with connect(server.port) as sock:
        sock.sendall(
            _import_head(server, b"Content-Length: %d\r\nExpect: 100-continue\r\n" % len(body))
        )
        sock.settimeout(5)
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        [answer] = read_responses(sock, 1)
    assert answer.status == 200
    assert json.loads(answer.body)["written"] == 100


def test_an_import_under_way_when_the_server_stops_is_answered_503(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data", workers=1).start()
    body = b"".join(_records(6_000, event="Stopped"))
    with connect(server.port) as sock:
        sock.sendall(_import_head(server, b"Content-Length: %d\r\n" % len(body)) + body[:MIB])
        time.sleep(0.5)
        assert server.process is not None
        server.process.terminate()
        [stopped] = split_responses(read_until_closed(sock))
    assert stopped.status == 503
    assert json.loads(stopped.body)["error"]["code"] == "unavailable"
    assert server.stop() == 0
    assert "Traceback" not in server.stderr, server.stderr


def test_an_import_the_core_refuses_before_its_body_ends_gets_that_answer(server):
    body = b"".join(_records(10_000, event="Refused"))  # about 5 MiB
    wrong = {"Authorization": "Bearer nope", "Content-Type": "application/x-ndjson"}
    answer = httpx.post(server.base_url + IMPORT, content=body, headers=wrong, timeout=30)
    assert answer.status_code == 401
    assert answer.headers["connection"] == "close"
    headers = {**_auth(server), "Content-Type": "text/html"}
    answer = httpx.post(server.base_url + IMPORT, content=iter([body]), headers=headers, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "content-type"
