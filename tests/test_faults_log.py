"""A damaged log loses no acknowledged record (issue: "damage is contained, never
propagated"), with a real server: the damage is done while it is stopped, as a
disk would do it, and the server is started on the damaged data directory.

Two cases for each kind of damage:

- **store kept**: every record that got a 200, before and after the damage, is
  in the store exactly once, and the records sent after the restart are applied
  (the landed server wedged here); ``tally check`` reports the damage.
- **store lost too**: the processor re-reads the whole damaged log; every
  valid frame before and after the damage is applied exactly once, exactly the
  frames inside the damaged ranges are missing, and status lists the ranges,
  kept in ``DATA_DIR/quarantine``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import pytest

from serverproc import RunningServer, wait_until
from tally.log import LogReader
from tally.log.writer import list_segments, segment_name

PADDING = "x" * 300  # about 1 MiB per 2,500 records: a few sealed segments quickly
BEFORE, AFTER = 5000, 300


def send(server: RunningServer, tag: str, count: int) -> list[str]:
    """``count`` distinct events on one keep-alive connection; the people of those
    answered 200."""
    acknowledged = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for n in range(count):
            person = f"{tag}-{n:05d}"
            params = {"_k": server.api_key, "_p": person, "_n": "Fault", "Pad": PADDING}
            if client.get("/e", params=params).status_code == 200:
                acknowledged.append(person)
    return acknowledged


def pipeline(server: RunningServer) -> dict[str, object]:
    found: dict[str, object] = server.status()["pipeline"]  # type: ignore[assignment]
    return found


def caught_up(server: RunningServer) -> bool:
    return pipeline(server)["lag_records"] == 0


def stored_people(data_dir: Path) -> Counter[str]:
    con = duckdb.connect(str(data_dir / "store.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT identity FROM events WHERE event = 'fault'").fetchall()
    finally:
        con.close()
    return Counter(identity for (identity,) in rows)


def segments(data_dir: Path) -> list[Path]:
    stream_dir = data_dir / "log" / "c0"
    return [stream_dir / segment_name(base) for base in list_segments(stream_dir)]


def _flip(path: Path, offset: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def _zero(path: Path, offset: int, count: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(data))


def flip_in_a_sealed_segment(data_dir: Path) -> None:
    first = segments(data_dir)[0]
    _flip(first, first.stat().st_size // 2)


def flip_in_the_newest_segment(data_dir: Path) -> None:
    newest = segments(data_dir)[-1]
    _flip(newest, newest.stat().st_size // 2)


def truncate_a_middle_segment(data_dir: Path) -> None:
    middle = segments(data_dir)[1]
    with open(middle, "r+b") as f:
        f.truncate(middle.stat().st_size // 2 + 17)  # inside a frame, frames after it gone


def delete_a_segment(data_dir: Path) -> None:
    segments(data_dir)[1].unlink()


def zero_a_range(data_dir: Path) -> None:
    first = segments(data_dir)[0]
    _zero(first, first.stat().st_size // 3)


def cut_the_newest_segments_end(data_dir: Path) -> None:
    newest = segments(data_dir)[-1]
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size - 7)


FAULTS: dict[str, Callable[[Path], None]] = {
    "bit flip in a sealed segment": flip_in_a_sealed_segment,
    "bit flip in the newest segment": flip_in_the_newest_segment,
    "truncated middle segment": truncate_a_middle_segment,
    "segment file deleted": delete_a_segment,
    "zero-filled range": zero_a_range,
    "7 bytes cut off the newest segment": cut_the_newest_segments_end,
}


def people_by_position(data_dir: Path) -> list[tuple[int, int, str]]:
    """(position, next position, person) of every frame of stream c0."""
    reader = LogReader(data_dir / "log")
    found = []
    for entry in reader.read("c0"):
        query = entry.record.query.decode()
        person = dict(p.split("=", 1) for p in query.split("&"))["_p"]
        found.append((entry.position, entry.next_position, person))
    return found


@pytest.fixture
def loaded(tmp_path: Path) -> tuple[RunningServer, list[str], list[tuple[int, int, str]]]:
    """A stopped server whose log holds BEFORE applied records in several segments."""
    server = RunningServer(tmp_path / "data", workers=1, extra_args=["--segment-mib", "1"])
    server.start()
    acknowledged = send(server, "before", BEFORE)
    wait_until(lambda: caught_up(server), 30, "every record is applied")
    assert server.stop() == 0
    assert len(segments(server.data_dir)) >= 3
    return server, acknowledged, people_by_position(server.data_dir)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_damage_loses_no_acknowledged_record(
    loaded: tuple[RunningServer, list[str], list[tuple[int, int, str]]],
    fault: Callable[[Path], None],
) -> None:
    server, before, _ = loaded
    fault(server.data_dir)
    server.start()
    try:
        after = send(server, "after", AFTER)
        wait_until(lambda: caught_up(server), 30, "the records sent after the damage are applied")
        assert pipeline(server)["processor"]["error"] is None  # type: ignore[index]
    finally:
        assert server.stop() == 0
    assert len(after) == AFTER
    stored = stored_people(server.data_dir)
    assert set(before + after) <= set(stored), "an acknowledged record is not in the store"
    assert max(stored.values()) == 1, "a record was applied twice"

    check = subprocess.run(
        [sys.executable, "-m", "tally", "check", "--data-dir", str(server.data_dir), "--json"],
        capture_output=True,
        text=True,
    )
    report = json.loads(check.stdout)
    damage = [d for s in report["streams"] for d in s["damage"] + s["known_damage"]]
    assert damage, "tally check does not see the damage"
    assert check.returncode in (0, 3)


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_every_valid_frame_around_damage_is_applied_once(
    loaded: tuple[RunningServer, list[str], list[tuple[int, int, str]]],
    fault: Callable[[Path], None],
) -> None:
    server, before, frames = loaded
    fault(server.data_dir)
    for name in ("store.duckdb", "store.duckdb.wal"):  # the processor reads the whole log again
        (server.data_dir / name).unlink(missing_ok=True)
    (server.data_dir / "log" / "APPLIED").unlink()
    server.start()
    try:
        after = send(server, "after", AFTER)
        wait_until(lambda: caught_up(server), 60, "the whole log is applied")
        status = server.status()
        damage = status["log"]["damage"]  # type: ignore[index]
    finally:
        assert server.stop() == 0
    assert damage, "status does not report the damage"
    ranges = [(d["start"], d["end"]) for d in damage if "torn tail" not in d["reason"]]
    inside = {p for start, end, p in frames if any(s < end and start < e for s, e in ranges)}
    stored = stored_people(server.data_dir)
    assert max(stored.values()) == 1, "a record was applied twice"
    assert set(stored) == (set(before) - inside) | set(after)
    assert 0 < len(inside) < 0.6 * BEFORE  # damage took some frames, never what followed it
    for d in damage:
        assert (server.data_dir / "quarantine" / d["file"]).exists()


def test_a_data_directory_deleted_under_the_server_acknowledges_nothing(
    tmp_path: Path,
) -> None:
    """Records written into a log whose files were deleted are lost with them:
    they get 503, not 200, and /healthz says the log cannot take records."""
    server = RunningServer(tmp_path / "data", workers=1).start()
    try:
        params = {"_k": server.api_key, "_p": "alice", "_n": "Before"}
        assert httpx.get(f"{server.base_url}/e", params=params).status_code == 200
        shutil.rmtree(tmp_path / "data")
        params["_n"] = "After"
        assert httpx.get(f"{server.base_url}/e", params=params).status_code == 503
        health = httpx.get(f"{server.base_url}/healthz")
        assert health.json()["status"] == "unavailable", health.text
    finally:
        assert server.stop() == 0  # and it still stops cleanly
