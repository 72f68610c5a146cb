"""The tracking endpoints on the wire (SPEC §1), against a real server process."""

from __future__ import annotations

import json
import resource
import socket
import time
from urllib.parse import parse_qs

import httpx
import psutil
import pytest

from serverproc import RunningServer
from tally import wire
from tally.log.writer import valid_prefix
from wire import Response, connect, get, read_responses, read_until_closed

NO_CACHE = "no-cache, no-store, must-revalidate, private"


def test_get_event_answers_the_gif_with_its_headers_and_logs_the_request(server):
    url = f"{server.base_url}/e?_k={server.api_key}&_p=bob%40example.com&_n=Signed+Up&plan=pro"
    response = httpx.get(url, headers={"User-Agent": "test-agent/1.0"})
    assert response.status_code == 200
    assert response.content == wire.GIF
    assert len(response.content) == 43
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["content-length"] == "43"
    assert response.headers["cache-control"] == NO_CACHE
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["expires"] == "0"
    assert response.headers["access-control-allow-origin"] == "*"
    [record] = server.wait_for_records(1)
    assert record.method == "GET"
    assert record.path == "/e"
    assert (
        record.query == f"_k={server.api_key}&_p=bob%40example.com&_n=Signed+Up&plan=pro".encode()
    )
    assert record.user_agent == "test-agent/1.0"
    assert record.addr == "127.0.0.1"
    assert abs(record.recv_ns - time.time_ns()) < 10 * 10**9


@pytest.mark.parametrize("path", ["/e", "/s", "/a"])
def test_every_tracking_path_is_recorded(server, path):
    response = httpx.get(f"{server.base_url}{path}?_k=k&_p=a&_n=b")
    assert response.content == wire.GIF
    [record] = server.wait_for_records(1)
    assert record.path == path


def test_post_form_body_is_logged_with_the_query(server):
    response = httpx.post(
        f"{server.base_url}/e?_k=k&_p=bob",
        content=b"_n=Billed&Billing+Amount=9.99",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
    )
    assert response.status_code == 200
    assert response.content == wire.GIF
    [record] = server.wait_for_records(1)
    assert (record.method, record.query, record.body) == (
        "POST",
        b"_k=k&_p=bob",
        b"_n=Billed&Billing+Amount=9.99",
    )
    assert record.content_type == "application/x-www-form-urlencoded; charset=UTF-8"


def test_head_answers_like_get_but_records_nothing(server):
    response = httpx.head(f"{server.base_url}/e?_k=k&_p=bob&_n=x")
    assert response.status_code == 200
    assert response.headers["content-length"] == "43"
    assert response.headers["content-type"] == "image/gif"
    assert response.content == b""
    httpx.get(f"{server.base_url}/s?_k=k&_p=marker")  # a record to wait for
    [record] = server.wait_for_records(1)
    assert record.query == b"_k=k&_p=marker"


def test_options_is_a_cors_preflight_that_records_nothing(server):
    response = httpx.options(
        f"{server.base_url}/e",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert server.records() == []


def test_mobile_verification_tells_the_sdk_to_keep_tracking_here(server):
    response = httpx.get(f"{server.base_url}/m/trk?product_key=abc&install_uuid=123")
    assert response.status_code == 200
    body = response.json()
    assert body["tracking"] is True
    assert body["tracking_endpoint"] == f"127.0.0.1:{server.port}"
    assert "GMT" in response.headers["expires"]


def test_request_head_over_16_kib_is_refused_with_413_and_not_recorded(server):
    big = "x" * (17 * 1024)
    response = httpx.get(f"{server.base_url}/e?_k=k&_p=bob&_n=x&big={big}")
    assert response.status_code == 413
    assert server.records() == []


def test_post_body_over_1_mib_is_refused_with_413_and_not_recorded(server):
    response = httpx.post(
        f"{server.base_url}/e?_k=k&_p=bob",
        content=b"a=" + b"x" * (1024 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    body_just_under = b"a=" + b"x" * (1024 * 1024 - 2)
    response = httpx.post(f"{server.base_url}/e?_k=k&_p=bob", content=body_just_under)
    assert response.status_code == 200
    [record] = server.wait_for_records(1)
    assert record.body == body_just_under


# -- real-world client behaviour ------------------------------------------------------------


def test_keep_alive_connection_is_reused_for_many_requests(server):
    with connect(server.port) as sock:
        for i in range(20):
            sock.sendall(get(f"/e?_k=k&_p=p{i}&_n=x"))
            [response] = read_responses(sock, 1)
            assert response.is_gif()
            assert response.headers["connection"] == "keep-alive"
    records = server.wait_for_records(20)
    assert sorted(r.query for r in records) == sorted(
        f"_k=k&_p=p{i}&_n=x".encode() for i in range(20)
    )


def test_one_connection_per_request(server):
    for i in range(10):
        with connect(server.port) as sock:
            sock.sendall(get(f"/e?_k=k&_p=p{i}&_n=x", extra=b"Connection: close\r\n"))
            data = read_until_closed(sock)  # the server closes after the answer
        response, used = Response.parse(data)
        assert response.is_gif()
        assert response.headers["connection"] == "close"
        assert used == len(data)
    assert len(server.wait_for_records(10)) == 10


def test_http_1_0_request_is_answered_and_closed(server):
    with connect(server.port) as sock:
        sock.sendall(b"GET /e?_k=k&_p=old&_n=x HTTP/1.0\r\n\r\n")
        data = read_until_closed(sock)
    response, _ = Response.parse(data)
    assert response.is_gif()
    [record] = server.wait_for_records(1)
    assert record.query == b"_k=k&_p=old&_n=x"


def test_fire_and_forget_client_that_closes_right_after_sending(server):
    for i in range(25):
        sock = connect(server.port)
        sock.sendall(get(f"/e?_k=k&_p=ff{i}&_n=x"))
        sock.close()
    records = server.wait_for_records(25)
    assert {r.query for r in records} == {f"_k=k&_p=ff{i}&_n=x".encode() for i in range(25)}


def test_pipelined_requests_closed_without_reading_are_all_recorded(server):
    sock = connect(server.port)
    sock.sendall(b"".join(get(f"/e?_k=k&_p=pipe{i}&_n=x") for i in range(50)))
    sock.close()
    records = server.wait_for_records(50)
    assert sorted(r.query for r in records) == sorted(
        f"_k=k&_p=pipe{i}&_n=x".encode() for i in range(50)
    )


def test_pipelined_requests_are_answered_in_order(server):
    with connect(server.port) as sock:
        sock.sendall(
            get("/e?_k=k&_p=a&_n=x")
            + get("/healthz")
            + get("/s?_k=k&_p=b")
            + get("/api/v1/nowhere")
        )
        # The unknown path goes to the core, in its turn; the connection stays open.
        first, health, second, not_found = read_responses(sock, 4)
    assert first.is_gif()
    assert health.status == 200
    assert json.loads(health.body)["status"] in ("ok", "degraded")
    assert second.is_gif()
    assert not_found.status == 404
    assert json.loads(not_found.body)["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(get("/e?_k=k&&_p=bob&&_n=x&&"), id="empty && pairs"),
        pytest.param(
            b"GET /e?_k=k&_p=bob&_n=x HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n", id="lowercase host"
        ),
        pytest.param(
            b"GET /e?_k=k&_p=bob&_n=x HTTP/1.1\r\nHost: localhost\r\n\r\n", id="host without port"
        ),
        pytest.param(b"GET /e?_k=k&_p=bob&_n=x HTTP/1.1\r\n\r\n", id="no host no user-agent"),
        pytest.param(get("/e?_k=k&_p=bob&_n=x", extra=b"Cookie: \r\n"), id="empty cookie"),
        pytest.param(
            b"GET /e?_k=k&_p=bob&_n=x HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\na=b&c=d",
            id="GET with a body",
        ),
        pytest.param(get("/e?_k=k&_p=bob&_n=100%&x=%zz&y=%E9"), id="bad percent-encoding"),
        pytest.param(get(b"/e?_k=k&_p=b\xc3\xb6b&_n=caf\xc3\xa9"), id="raw UTF-8 in the URL"),
        pytest.param(get(b"/e?_k=k&_p=\xff\xfe&_n=\x00\x01\x7f\tz"), id="binary garbage"),
        pytest.param(get("http://127.0.0.1/e?_k=k&_p=bob&_n=x"), id="absolute-form target"),
    ],
)
def test_odd_but_real_requests_get_the_gif_and_are_logged_raw(server, request_bytes):
    with connect(server.port) as sock:
        sock.sendall(request_bytes + get("/s?_k=k&_p=after"))  # the connection stays usable
        first, second = read_responses(sock, 2)
    assert first.is_gif()
    assert second.is_gif()
    records = server.wait_for_records(2)
    target = request_bytes.split(b" ", 1)[1].rsplit(b" HTTP/", 1)[0]
    sent_query = target.split(b"?", 1)[1]
    assert [r.query for r in records] == [sent_query, b"_k=k&_p=after"]
    if b"Content-Length: 7" in request_bytes:
        assert records[0].body == b"a=b&c=d"
    assert records[0].user_agent == ""


def test_unknown_tracking_method_is_refused(server):
    response = httpx.put(f"{server.base_url}/e?_k=k&_p=a&_n=b")
    assert response.status_code == 405
    assert server.records() == []


def test_unparseable_http_gets_400(server):
    with connect(server.port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00garbage that is not http\r\n\r\n")
        data = read_until_closed(sock)
    response, _ = Response.parse(data)
    assert response.status == 400


# -- timeouts -----------------------------------------------------------------------------


@pytest.fixture
def quick_timeout_server(tmp_path):
    running = RunningServer(tmp_path / "data", extra_args=["--timeout", "1"]).start()
    yield running
    assert running.stop() == 0


def test_idle_and_slow_connections_are_closed_after_the_timeout(quick_timeout_server):
    port = quick_timeout_server.port
    idle = connect(port)
    idle.sendall(get("/e?_k=k&_p=a&_n=x"))
    assert read_responses(idle, 1)[0].is_gif()
    slow = connect(port)
    slow.sendall(b"GET /e?_k=k&_p=slow HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
    silent = connect(port)
    started = time.monotonic()
    for sock in (idle, slow, silent):
        assert read_until_closed(sock, timeout=10) == b""
        sock.close()
    assert time.monotonic() - started < 5
    assert [r.query for r in quick_timeout_server.records()] == [b"_k=k&_p=a&_n=x"]


# -- when the record cannot be made durable -------------------------------------------------


def _collectors(server: RunningServer) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


def test_503_with_retry_after_when_the_log_cannot_grow_and_never_a_false_200(server):
    """A file-size limit on the collectors makes every write fail like a full disk."""
    # Where the frames end (the segment being written is zero-filled ahead of them).
    largest = max(valid_prefix(f.read_bytes())[0] for f in server.data_dir.glob("log/*/*.seg"))
    for child in _collectors(server):
        resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (largest + 1500, resource.RLIM_INFINITY))
    answers = {i: httpx.get(f"{server.base_url}/e?_k=k&_p=full&_n=x&i={i}") for i in range(100)}
    refused = [i for i, r in answers.items() if r.status_code == 503]
    accepted = [i for i, r in answers.items() if r.status_code == 200]
    assert len(refused) + len(accepted) == 100
    assert refused, "the file-size limit should have made writes fail"
    assert all(answers[i].headers["retry-after"] == "1" for i in refused)
    assert all(answers[i].content == wire.GIF for i in accepted)
    assert httpx.get(f"{server.base_url}/healthz").status_code == 503
    logged = [int(parse_qs(r.query.decode())["i"][0]) for r in server.records()]
    assert sorted(logged) == accepted  # every 200 is on disk, no 503 is

    for child in _collectors(server):
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(child.pid, resource.RLIMIT_FSIZE, unlimited)
    for i in range(100, 130):
        assert httpx.get(f"{server.base_url}/e?_k=k&_p=full&_n=x&i={i}").content == wire.GIF
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    assert len(server.records()) == len(accepted) + 30


# -- the operator API ----------------------------------------------------------------------


def test_status_needs_an_operator_token(server):
    response = httpx.get(f"{server.base_url}/api/v1/status")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    response = httpx.get(
        f"{server.base_url}/api/v1/status", headers={"Authorization": "Bearer nope"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_status_counts_what_the_log_holds(server):
    for i in range(30):
        httpx.get(f"{server.base_url}/e?_k=k&_p=s{i}&_n=x")
    status = server.status()
    on_disk = sum(valid_prefix(f.read_bytes())[0] for f in server.data_dir.glob("log/*/*.seg"))
    assert status["log"]["records"] == 30
    assert status["log"]["bytes"] == on_disk
    assert status["log"]["streams"] == 2
    assert status["version"]


def test_sigterm_answers_what_is_in_flight_and_stops_cleanly(tmp_path):
    running = RunningServer(tmp_path / "data").start()
    socks = []
    for i in range(20):
        sock = connect(running.port)
        sock.sendall(get(f"/e?_k=k&_p=t{i}&_n=x"))
        socks.append(sock)
    answers = [read_responses(sock, 1)[0] for sock in socks]
    assert running.stop() == 0
    assert all(a.is_gif() for a in answers)
    assert len(running.records()) == 20
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.port), timeout=1)
    for sock in socks:
        sock.close()
