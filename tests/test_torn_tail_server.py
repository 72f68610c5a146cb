"""A torn tail left in the log is truncated, and reported, when the server starts
(DESIGN §2): the records before it are kept and the stream goes on after it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import httpx

from serverproc import RunningServer, wait_until
from tally.log import LogReader, Record
from tally.log.record import encode_record
from tally.log.writer import list_segments, segment_name
from tally.wire import GIF

N = 40
#: What a crash can leave behind: half a frame, then bytes that are no frame at all.
TORN = encode_record(Record("GET", "/e", b"_p=never-acknowledged", b"", 0))[:30] + b"\xff" * 50


def track(server: RunningServer, person: str) -> None:
    """One tracking call, on its own connection (so calls spread over the collectors)."""
    params = {"_k": server.api_key, "_p": person, "_n": "Torn Tail"}
    response = httpx.get(server.base_url + "/e", params=params, timeout=10)
    assert response.status_code == 200
    assert response.content == GIF


def logged_people(log_dir: Path) -> list[str]:
    """``_p`` of every record, reading each stream to its durable end (while the
    server runs, zeros are preallocated after it: writer.py)."""
    reader = LogReader(log_dir)
    people = []
    for stream in reader.streams():
        end = 0
        for entry in reader.read(stream):
            people.append(parse_qs(entry.record.query.decode())["_p"][0])
            end = entry.next_position
        assert end == reader.durable(stream), f"{stream} has bytes after its last record"
    return sorted(people)


def test_a_torn_tail_is_truncated_and_reported_on_restart(server: RunningServer) -> None:
    log_dir = server.data_dir / "log"
    before = sorted(f"before-{i:03d}" for i in range(N))
    for person in before:
        track(server, person)
    assert server.stop() == 0
    assert logged_people(log_dir) == before

    reader = LogReader(log_dir)
    stream = max(reader.streams(), key=lambda s: reader.count(s)[0])
    segment = log_dir / stream / segment_name(list_segments(log_dir / stream)[-1])
    intact = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(TORN)

    server.start()
    wait_until(lambda: segment.stat().st_size == intact, 10, f"{segment} is truncated")
    assert logged_people(log_dir) == before  # reads cleanly: every record, nothing else

    after = sorted(f"after-{i:03d}" for i in range(10))
    for person in after:
        track(server, person)
    wait_until(lambda: len(logged_people(log_dir)) == N + 10, 10, "the new records are logged")
    assert logged_people(log_dir) == sorted(before + after)

    reports = [
        line
        for line in (server.data_dir / "tally.log").read_text().splitlines()
        if "torn tail" in line
    ]
    assert len(reports) == 1, "tally.log does not report the truncated tail"
    assert f"log stream {stream}: torn tail in {segment.name}" in reports[0]
    assert f"truncated {len(TORN)} bytes at offset {intact}" in reports[0]
    [kept] = (server.data_dir / "quarantine").glob("*.bin")  # the bytes, for an operator
    assert kept.read_bytes() == TORN
