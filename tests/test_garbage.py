"""Generated garbage thrown at a real server's request parser (SPEC §1: bad
input gets the GIF, is logged raw, and crashes nothing)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serverproc import RunningServer
from tally.log import LogReader
from wire import Response, connect, get, read_responses, read_until_closed


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path_factory.mktemp("garbage") / "data").start()
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr, running.stderr


class _Tail:
    """Reads only the records appended since the last call."""

    def __init__(self, log_dir: Path) -> None:
        self.reader = LogReader(log_dir)
        self.positions: dict[str, int] = {}

    def new_queries(self) -> list[bytes]:
        queries = []
        for stream in self.reader.streams():
            for entry in self.reader.read(stream, self.positions.get(stream, 0)):
                queries.append(entry.record.query)
                self.positions[stream] = entry.next_position
        return queries


# Any bytes but CR and LF, which end the request line, and trailing spaces, which
# on the wire cannot be told apart from the space before "HTTP/1.1".
query_bytes = st.binary(max_size=600).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").rstrip(b" ")
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=query_bytes, path=st.sampled_from([b"/e", b"/s", b"/a"]))
def test_any_query_bytes_get_the_gif_and_are_logged_verbatim(shared_server, query, path):
    tail = _tail(shared_server)
    tail.new_queries()
    with connect(shared_server.port) as sock:
        sock.sendall(get(path + b"?" + query))
        [response] = read_responses(sock, 1)
    assert response.is_gif()
    assert _wait_for(tail, 1) == [query]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=1, max_size=2000))
def test_binary_garbage_never_breaks_the_server(shared_server, data):
    with connect(shared_server.port) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    if answer:
        parsed = Response.parse(answer)
        assert parsed is not None
        assert parsed[0].status in {200, 204, 400, 404, 405, 413, 503}
    assert httpx.get(shared_server.base_url + "/healthz").status_code == 200


_tails: dict[int, _Tail] = {}


def _tail(server: RunningServer) -> _Tail:
    return _tails.setdefault(id(server), _Tail(server.data_dir / "log"))


def _wait_for(tail: _Tail, n: int) -> list[bytes]:
    found: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(found) < n and time.monotonic() < deadline:
        found += tail.new_queries()
    return found
