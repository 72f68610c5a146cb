"""``tally check``: the log verified frame by frame, the store against the log,
and ``--repair`` (issue: "damage is contained, never propagated")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest
from click.testing import CliRunner, Result

from serverproc import RunningServer, wait_until
from tally.catalog import Catalog
from tally.cli import main
from tally.log import Record, SegmentWriter
from tally.log.record import FRAME_HEADER, encode_record
from tally.log.writer import list_segments, segment_name
from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store

N = 30


KEY = "0123456789abcdef0123456789abcdef01234567"


def record(n: int) -> Record:
    return Record("GET", "/e", f"_k={KEY}&_p=user-{n:04d}&_n=Signed+Up".encode(), b"",
                  1_700_000_000_000_000_000 + n * 1000, "127.0.0.1", "test/1.0")  # fmt: skip


FRAME_SIZE = len(encode_record(record(0)))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A log of N records in segments of 10, all applied to the store."""
    data_dir = tmp_path / "data"
    Catalog(data_dir / "catalog.sqlite").create_product("default", key=KEY)
    writer = SegmentWriter(data_dir / "log" / "c0", segment_bytes=10 * FRAME_SIZE)
    for n in range(N):
        writer.write_durable(encode_record(record(n)))
    writer.close()
    apply(data_dir)
    return data_dir


def apply(data_dir: Path) -> None:
    store = Store(data_dir / "store.duckdb")
    try:
        Processor(Settings(data_dir=data_dir), store).catch_up()
    finally:
        store.close()


def check(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["check", "--data-dir", str(data_dir), *args])


def segment(data_dir: Path, index: int) -> Path:
    stream_dir = data_dir / "log" / "c0"
    return stream_dir / segment_name(list_segments(stream_dir)[index])


def stored(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(data_dir / "store.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_whole_log_and_its_store_pass(data_dir: Path) -> None:
    result = check(data_dir)
    assert result.exit_code == 0, result.output
    assert "The log is whole and the store agrees with it." in result.output
    assert stored(data_dir, "SELECT count(*) FROM events") == [(N,)]
    report = json.loads(check(data_dir, "--json").stdout)
    [stream] = report["streams"]
    assert (stream["segments"], stream["records"], stream["damage"]) == (3, N, [])


def test_a_bit_flip_is_reported_then_quarantined_and_known(data_dir: Path) -> None:
    middle = segment(data_dir, 1)
    data = bytearray(middle.read_bytes())
    data[3 * FRAME_SIZE + FRAME_HEADER.size + 7] ^= 0x10  # the 14th record's payload
    middle.write_bytes(bytes(data))

    result = check(data_dir)
    assert result.exit_code == 3, result.output
    start = 13 * FRAME_SIZE
    assert f"damage: c0 {middle.name} bytes {start:,}-{start + FRAME_SIZE:,}: checksum" in (
        result.output
    )
    assert not (data_dir / "quarantine").exists()  # a check alone writes nothing

    repaired = check(data_dir, "--repair")
    assert repaired.exit_code == 0, repaired.output  # the store held the record already
    [kept] = (data_dir / "quarantine").glob("*.bin")
    assert kept.read_bytes() == bytes(data[3 * FRAME_SIZE : 4 * FRAME_SIZE])
    again = check(data_dir)
    assert again.exit_code == 0, again.output
    assert "known damage" in again.output


def test_a_store_position_off_the_frames_is_re_derived_from_the_log(data_dir: Path) -> None:
    con = duckdb.connect(str(data_dir / "store.duckdb"))
    con.execute("UPDATE positions SET position = position - 5, records = records - 1")
    con.execute("DELETE FROM events WHERE position = (SELECT max(position) FROM events)")
    con.close()

    result = check(data_dir)
    assert result.exit_code == 3
    assert "not on a frame boundary" in result.output
    repaired = check(data_dir, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "Re-derived the store" in repaired.output
    assert stored(data_dir, "SELECT count(*) FROM events") == [(N,)]
    assert stored(data_dir, "SELECT position, records FROM positions") == [(N * FRAME_SIZE, N)]


def test_a_store_ahead_of_a_log_that_lost_its_end_is_not_rebuilt(data_dir: Path) -> None:
    last = segment(data_dir, -1)
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size - 3 * FRAME_SIZE - 9)
    (data_dir / "log" / "c0" / "DURABLE").unlink()  # as if the whole tail were gone

    result = check(data_dir, "--repair")
    assert result.exit_code == 3
    assert "the log lost records that the store holds" in result.output
    assert "Not re-deriving the store" in result.output
    assert stored(data_dir, "SELECT count(*) FROM events") == [(N,)]  # kept as it was


def test_check_runs_beside_a_running_server(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    try:
        for n in range(20):
            params = {"_k": server.api_key, "_p": f"p{n}", "_n": "Beside"}
            assert httpx.get(server.base_url + "/e", params=params).status_code == 200
        wait_until(lambda: pipeline(server)["lag_records"] == 0, 10, "every record is applied")
        result = check(server.data_dir, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert sum(s["records"] for s in report["streams"]) == 20
    finally:
        server.stop()


def pipeline(server: RunningServer) -> dict[str, object]:
    found: dict[str, object] = server.status()["pipeline"]  # type: ignore[assignment]
    return found


def test_an_unreadable_segment_is_one_line(data_dir: Path) -> None:
    bad = segment(data_dir, 1)
    bad.unlink()
    bad.mkdir()  # a directory where a segment should be: reading it fails
    result = check(data_dir)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("error: cannot read ")
    assert bad.name in result.output
    assert "Traceback" not in result.output


def test_a_repair_killed_while_it_quarantines_leaves_whole_files_and_runs_again(
    tmp_path: Path,
) -> None:
    """SIGKILL during quarantine: each kept range is whole or absent, and a
    second run keeps the rest."""
    data_dir = tmp_path / "data"
    writer = SegmentWriter(data_dir / "log" / "c0")
    ranges = 400
    body = b"b" * 20_000  # large frames: each kept range is a write and two syncs
    for n in range(2 * ranges):
        writer.write_durable(encode_record(record(n)._replace(method="POST", body=body)))
    writer.close()
    [seg] = (data_dir / "log" / "c0").glob("*.seg")
    data = bytearray(seg.read_bytes())
    size = len(data) // (2 * ranges)
    for n in range(0, 2 * ranges, 2):  # every other frame damaged: 400 ranges
        data[n * size + 100] ^= 0x01
    seg.write_bytes(bytes(data))

    command = [sys.executable, "-m", "tally", "check", "--repair", "--data-dir", str(data_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quarantine = data_dir / "quarantine"
    wait_until(lambda: len(list(quarantine.glob("*.json"))) >= 5, 30, "quarantining began")
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = sorted(quarantine.glob("*.json"))
    assert 5 <= len(kept) < ranges, "the kill did not land while it quarantined"
    for report_path in kept:  # a report only beside its whole bytes
        report = json.loads(report_path.read_text())
        assert (quarantine / report["file"]).stat().st_size == report["bytes_kept"] == size

    again = check(data_dir, "--repair")
    assert again.exit_code == 0, again.output
    assert len(list(quarantine.glob("*.json"))) == ranges
    assert len(list(quarantine.glob("*.bin"))) == ranges


def test_a_rebuild_refuses_to_drop_records_that_only_the_store_holds(data_dir: Path) -> None:
    middle = segment(data_dir, 1)
    with open(middle, "r+b") as f:
        f.truncate(middle.stat().st_size // 2)  # records the store applied, gone from the log
    rebuild = CliRunner().invoke(main, ["rebuild", "--data-dir", str(data_dir)])
    assert rebuild.exit_code == 1
    assert "lost records that the store holds" in rebuild.stderr
    assert stored(data_dir, "SELECT count(*) FROM events") == [(N,)]
    forced = CliRunner().invoke(main, ["rebuild", "--accept-loss", "--data-dir", str(data_dir)])
    assert forced.exit_code == 0, forced.output
    assert stored(data_dir, "SELECT count(*) FROM events")[0][0] < N
