"""Fuzzing the HTTP front of a real collector with hypothesis: whatever bytes a
client sends, every answer is a well-formed response that is never a 5xx other
than 503/504, and the server keeps serving normal traffic (issue 14, point 6).

A bounded, seeded slice runs in the suite (``derandomize``: the same examples in
every run, so CI is deterministic); ``bench/fuzz.py`` runs a longer campaign
with a random seed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serverproc import RunningServer
from wire import Response

EXAMPLES = int(os.environ.get("TALLY_FUZZ_EXAMPLES", "150"))
#: bench/fuzz.py sets it: examples from its seed, not the suite's fixed ones.
RANDOM = os.environ.get("TALLY_FUZZ_RANDOM") == "1"

# Pieces of real requests, and of the attacks that broke servers before:
# smuggling headers, folded lines, NULs, huge lengths, bare LFs, odd methods.
_PIECES = [
    b"GET ", b"POST ", b"HEAD ", b"OPTIONS ", b"PUT ", b"GARBAGE ", b"/e", b"/s", b"/a",
    b"/m/trk", b"/healthz", b"/api/v1/status", b"/api/v1/products/default/reports/metrics",
    b"/api/v1/products/default/import", b"/nowhere", b"?", b"&", b"=", b"_k=", b"_p=", b"_n=",
    b"%", b"%zz", b"%00", b"%C3%A9",
    b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b"\r\n", b"\n", b"\r\n\r\n", b"Host: x\r\n",
    b"Content-Length: 5\r\n", b"Content-Length: 0\r\n", b"Content-Length: -1\r\n",
    b"Content-Length: 99999999999\r\n", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n",
    b"5\r\nhello\r\n", b"Connection: close\r\n", b"Authorization: Bearer \x00x\r\n",
    b" folded\r\n", b"\tfolded\r\n", b"X-A: \xff\xfe\r\n", b"Content-Type: application/json\r\n",
    b'{"event": "x"}', b"[[[[[[[[", b"\x00", b"\xff", b"a" * 300,
]  # fmt: skip
REQUESTS = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join) | st.binary(max_size=2000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = RunningServer(tmp_path_factory.mktemp("fuzz") / "data", extra_args=["--timeout", "2"])
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.stderr
        assert "Traceback" not in server.stderr, server.stderr


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, say no more, and read until the server closes (or 3 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused half way (a 413, say): read what was answered
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def responses(data: bytes) -> Iterator[Response]:
    while data:
        parsed = Response.parse(data, head=False)
        if parsed is None:
            # A HEAD's answer has a Content-Length but no body: the rest is
            # the next response, or nothing.
            assert data.startswith(b"HTTP/1.1 "), data[:200]
            return
        response, used = parsed
        yield response
        data = data[used:]


@settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=REQUESTS)
def test_any_bytes_get_well_formed_answers_and_never_a_server_error(
    server: RunningServer, data: bytes
) -> None:
    answer = exchange(server.port, data)
    assert not answer or answer.startswith(b"HTTP/1.1 "), answer[:200]
    for response in responses(answer):
        assert response.status < 500 or response.status in (503, 504), (data, response.status)


def test_after_the_fuzzing_the_server_still_serves(server: RunningServer, tmp_path: Path) -> None:
    params = {"_k": server.api_key, "_p": "after-fuzz", "_n": "Still Here"}
    assert httpx.get(server.base_url + "/e", params=params, timeout=10).status_code == 200
    assert httpx.get(server.base_url + "/healthz", timeout=10).status_code == 200
    status = httpx.get(
        server.base_url + "/api/v1/status",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    )
    assert status.status_code == 200
