"""Crash safety (SPEC §1, DESIGN §2): a 200 is a promise that the record is on disk.

"A load generator sends requests while the server is killed with SIGKILL at a random
moment; after a restart, every request that received a 200 is in the log exactly once
(and the log is readable to its end)."
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, urlencode

import httpx
import psutil

from serverproc import RunningServer, wait_until
from tally.log import LogReader, Record
from tally.wire import GIF

CONNECTIONS = 24
CYCLES = 3
#: Kill moments are drawn from this seed; set TALLY_CRASH_SEED to replay a failure.
SEED = int(os.environ.get("TALLY_CRASH_SEED", "20240917"))


class IncompleteResponse(Exception):
    pass


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response; raises if it is cut short."""
    status_line = stream.readline()
    if not status_line.endswith(b"\r\n"):
        raise IncompleteResponse(status_line)
    headers = {}
    while (line := stream.readline()) != b"\r\n":
        if not line.endswith(b"\r\n"):
            raise IncompleteResponse(line)
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = stream.read(length)
    if len(body) != length:
        raise IncompleteResponse(body)
    return int(status_line.split()[1]), headers, body


class Load:
    """Keep-alive connections, each sending one tracking call at a time (a third of
    them as POST) with a unique ``seq``, until its connection breaks."""

    def __init__(self, server: RunningServer, cycle: int) -> None:
        self.server = server
        self.cycle = cycle
        self.stop = threading.Event()
        self.sent: list[str] = []  # list.append is atomic: the threads share these
        self.acked: list[str] = []
        self.other: list[int] = []  # statuses of complete answers that were not the GIF
        self.threads = [
            threading.Thread(target=self._connection, args=(n,), daemon=True)
            for n in range(CONNECTIONS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def running(self) -> int:
        return sum(thread.is_alive() for thread in self.threads)

    def join(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert self.running() == 0, "load threads did not finish"

    def _request(self, n: int, i: int, seq: str) -> bytes:
        params = urlencode(
            {"_k": self.server.api_key, "_p": f"user-{n}", "_n": "Crash Test", "seq": seq}
        ).encode()
        head = f"Host: {self.server.host}:{self.server.port}\r\nUser-Agent: crash-test\r\n"
        if i % 3 == 0:
            return (
                f"POST /e HTTP/1.1\r\n{head}Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(params)}\r\n\r\n"
            ).encode() + params
        return b"GET /e?" + params + f" HTTP/1.1\r\n{head}\r\n".encode()

    def _connection(self, n: int) -> None:
        try:
            sock = socket.create_connection((self.server.host, self.server.port), timeout=10)
        except OSError:
            return
        with sock, sock.makefile("rb") as stream:
            i = 0
            while not self.stop.is_set():
                seq = f"{self.cycle}-{n}-{i}-{uuid.uuid4().hex}"
                self.sent.append(seq)
                try:
                    sock.sendall(self._request(n, i, seq))
                    status, headers, body = read_response(stream)
                except (OSError, IncompleteResponse):
                    return  # the server died under this request
                if status == 200 and headers["content-type"] == "image/gif" and body == GIF:
                    self.acked.append(seq)
                else:
                    self.other.append(status)
                i += 1


def seq_of(record: Record) -> str | None:
    params = parse_qs(record.query + b"&" + record.body)
    values = params.get(b"seq")
    return values[-1].decode() if values else None


def log_is_whole(log_dir: Path) -> bool:
    """Every stream holds whole records up to its last byte (its torn tail, if any,
    was truncated by the collector that reopened it)."""
    reader = LogReader(log_dir)
    return all(reader.count(stream)[1] == reader.size(stream) for stream in reader.streams())


def logged_seqs(log_dir: Path) -> Counter[str | None]:
    """How often each ``seq`` is in the log; reading must not raise."""
    reader = LogReader(log_dir)
    return Counter(
        seq_of(entry.record) for stream in reader.streams() for entry in reader.read(stream)
    )


def logged_once(log_dir: Path, seqs: list[str]) -> bool:
    logged = logged_seqs(log_dir)
    return all(logged[seq] == 1 for seq in seqs)


def send_and_confirm(server: RunningServer, seqs: list[str]) -> None:
    """Tracking calls on fresh connections: all answered 200 GIF."""
    for seq in seqs:
        params = {"_k": server.api_key, "_p": "after-restart", "_n": "Probe", "seq": seq}
        response = httpx.get(server.base_url + "/e", params=params, timeout=10)
        assert response.status_code == 200
        assert response.content == GIF


def test_every_acknowledged_request_survives_sigkill(server: RunningServer) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    log_dir = server.data_dir / "log"
    sent: set[str] = set()
    acked: set[str] = set()

    for cycle in range(CYCLES):
        load = Load(server, cycle)
        load.start()
        kill_after = rng.uniform(0.3, 1.5)
        time.sleep(kill_after)
        running_at_kill = load.running()
        server.kill()
        load.join(timeout=15)
        sent.update(load.sent)
        acked.update(load.acked)
        context = (
            f"cycle {cycle}, kill after {kill_after:.2f} s (TALLY_CRASH_SEED={SEED}): "
            f"{len(load.sent)} sent, {len(load.acked)} acked, other answers {load.other}"
        )
        # The kill hit a server under load, with requests in flight.
        assert running_at_kill == CONNECTIONS, context
        assert load.acked, context
        assert len(load.sent) > len(load.acked) + len(load.other), context
        assert not load.other, context

        # Same data dir, port and API key. start() returns once one collector
        # listens; the other may still be recovering its stream, hence the wait.
        server.start()
        wait_until(lambda: log_is_whole(log_dir), 10, "every collector has recovered its stream")
        logged = logged_seqs(log_dir)
        missing = acked - logged.keys()
        assert not missing, f"{context}: {len(missing)} acknowledged requests lost"
        doubled = {seq: n for seq, n in logged.items() if n > 1}
        assert not doubled, f"{context}: logged more than once: {doubled}"
        assert logged.keys() <= sent, f"{context}: records that were never sent"

        # The restarted server takes new requests and logs them.
        probes = [f"probe-{cycle}-{i}" for i in range(8)]
        send_and_confirm(server, probes)
        sent.update(probes)
        acked.update(probes)
        wait_until(
            partial(logged_once, log_dir, probes), 10, "the requests after the restart are logged"
        )

    assert logged_seqs(log_dir).keys() >= acked
    assert time.monotonic() - began < 60


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: an orphan's new parent may not reap it at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _semaphores() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("sem.*")}


def test_collectors_stop_when_the_supervisor_is_killed_and_a_restart_works(
    tmp_path: Path,
) -> None:
    """The OOM killer picks the biggest process, the supervisor: its collectors
    must not live on holding the port and the log streams, and nothing of the
    server is left in /dev/shm."""
    data_dir = tmp_path / "data"
    before = _semaphores()
    server = RunningServer(data_dir).start()
    assert server.process is not None
    collectors = [  # (multiprocessing's resource tracker is a child too)
        p
        for p in psutil.Process(server.process.pid).children()
        if "resource_tracker" not in " ".join(p.cmdline())
    ]
    try:
        assert len(collectors) == server.workers
        assert _semaphores() <= before  # ready signals are pipes, not semaphores
        url = f"{server.base_url}/e?_k={server.api_key}&_p=ann&_n=Before+the+crash"
        assert httpx.get(url).content == GIF
        os.kill(server.process.pid, signal.SIGKILL)  # the supervisor alone
        server.process.wait(10)
        deadline = time.monotonic() + 10
        while not all(_gone(c.pid) for c in collectors):
            assert time.monotonic() < deadline, "orphaned collectors are still running"
            time.sleep(0.05)
    finally:  # whatever is left, should an assertion fail
        for collector in collectors:
            with contextlib.suppress(psutil.NoSuchProcess):
                collector.kill()
        server.kill()
    again = RunningServer(data_dir, port=server.port).start()
    try:
        assert any(b"Before+the+crash" in r.query for r in again.records())
    finally:
        again.stop()


def test_a_collector_that_dies_is_started_again_and_stays(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    assert server.process is not None
    try:
        supervisor = psutil.Process(server.process.pid)

        def collectors() -> set[int]:
            found = set()
            for child in supervisor.children():
                with contextlib.suppress(psutil.Error):  # gone, or a zombie, meanwhile
                    if "resource_tracker" not in " ".join(child.cmdline()):
                        found.add(child.pid)
            return found

        first = collectors()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while len(collectors() - {victim}) < server.workers:
            assert time.monotonic() < deadline, "the collector was not started again"
            time.sleep(0.05)
        replacement = collectors() - first
        time.sleep(2)  # it keeps running (no restart loop)
        assert replacement
        assert replacement <= collectors()
        for _ in range(20):  # and every collector answers
            url = f"{server.base_url}/e?_k={server.api_key}&_p=bob&_n=After"
            assert httpx.get(url).content == GIF
    finally:
        assert server.stop() == 0
    assert "restarting it" in server.stderr
    assert "cannot run" not in server.stderr
