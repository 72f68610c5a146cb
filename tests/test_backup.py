"""`tally backup DEST` and `tally restore BACKUP` (issue: backups).

"A test restores a backup taken under load and compares reports with the
original": the restored server catches up from the snapshot to the end of the
copied log and then holds exactly what the original holds for those records.
A backup killed with SIGKILL leaves the server running and no DEST, and a
re-run works; bad input is one line and a non-zero exit.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import duckdb
import httpx
import pytest
from click.testing import CliRunner, Result

from serverproc import RunningServer, wait_until
from tally import __version__
from tally.cli import main
from tally.log import LogReader
from tally.log.record import LOG_FORMAT

PLANS = ("free", "pro", "team")


def tally(*args: str) -> Result:
    """`tally ARGS`, in this process."""
    return CliRunner().invoke(main, list(args))


def tally_process(*args: str) -> subprocess.Popen[str]:
    """`python -m tally ARGS`, a process of its own (started, not waited for)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tally", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def one_line_error(result: Result) -> str:
    """The error a command failed with: exit status 1, one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines
    return lines[0]


class Load:
    """Threads sending one tracking call each at a time, each for a new person;
    which were acknowledged (200), and when."""

    def __init__(self, server: RunningServer, threads: int = 3) -> None:
        self.server = server
        self.acknowledged: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self, thread: int) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=10) as client:
            n = 0
            while not self._stop.is_set():
                person = f"p{thread}-{n}"
                params = {"_k": self.server.api_key, "_p": person, "_n": "Viewed Page",
                          "Plan": PLANS[n % len(PLANS)]}  # fmt: skip
                if client.get("/e", params=params).status_code == 200:
                    self.acknowledged.append((person, time.monotonic()))
                n += 1


def persons_in_log(log_dir: Path) -> list[str]:
    reader = LogReader(log_dir)
    return [
        parse_qs(entry.record.query.decode())["_p"][0]
        for stream in reader.streams()
        for entry in reader.read(stream)
    ]


def rows(store: Path, table: str, ends: dict[str, int] | None = None) -> list[tuple[Any, ...]]:
    """Every row of ``table`` (with its log place), of the records before ``ends``."""
    con = duckdb.connect(str(store), read_only=True)
    try:
        where, params = "", []
        if ends is not None:
            where = "WHERE " + " OR ".join(["(stream = ? AND position < ?)"] * len(ends))
            params = [value for item in ends.items() for value in item]
        # A person's number is how rows lie, not what they hold (store/schema.py):
        # it depends on the batches the records came in.
        columns = "* EXCLUDE (pn)" if table in ("events", "property_values") else "*"
        return con.execute(
            f"SELECT {columns} FROM {table} {where} ORDER BY stream, position", params
        ).fetchall()
    finally:
        con.close()


def start_restored(data_dir: Path, like: RunningServer) -> RunningServer:
    (data_dir / ".started-once").write_text("")  # the catalog is the original's: no banner
    server = RunningServer(data_dir).start()
    server.api_key, server.token = like.api_key, like.token
    return server


def metrics(data_dir: Path) -> Any:
    args = ["Viewed Page", "--from", "2020-01-01", "--segment", "Plan", "--json"]
    return json.loads(ok(tally("report", "metrics", *args, "--data-dir", str(data_dir))))


def test_a_backup_taken_under_load_restores_what_its_log_holds(tmp_path: Path) -> None:
    original = RunningServer(tmp_path / "data").start()
    dest, new = tmp_path / "backup", tmp_path / "restored"
    try:
        with Load(original) as load:
            wait_until(lambda: len(load.acknowledged) > 300, 30, "the load is going")
            started = time.monotonic()
            backup = tally_process("backup", str(dest), "--data-dir", str(original.data_dir))
            output, _ = backup.communicate(timeout=60)
            assert backup.returncode == 0, output
            done = len(load.acknowledged)
            wait_until(lambda: len(load.acknowledged) > done + 100, 30, "calls after the backup")
        assert f"into {dest}" in output
        wait_until(lambda: original.status()["pipeline"]["lag_records"] == 0, 30, "caught up")
    finally:
        assert original.stop() == 0, original.stderr

    manifest = json.loads((dest / "manifest.json").read_text())
    ends = {name: s["log_end"] for name, s in manifest["streams"].items()}
    assert all(s["applied"] <= s["log_end"] for s in manifest["streams"].values())
    # Whatever was acknowledged before the backup began is in it, once.
    in_backup = persons_in_log(dest / "log")
    assert len(in_backup) == len(set(in_backup))
    assert {p for p, t in load.acknowledged if t < started} <= set(in_backup)
    assert len(in_backup) < len(load.acknowledged)  # the load went on after it

    assert "Start it with: tally serve --data-dir" in ok(
        tally("restore", str(dest), "--data-dir", str(new))
    )
    restored = start_restored(new, original)
    try:
        wait_until(lambda: restored.status()["pipeline"]["lag_records"] == 0, 30, "caught up")
    finally:
        assert restored.stop() == 0, restored.stderr

    # The restored store holds exactly the copied log's records, as the original
    # holds them: the snapshot's and those the restored processor applied after it.
    restored_store = new / "store.duckdb"
    positions = {stream: position for stream, position, _ in rows(restored_store, "positions")}
    assert positions == {stream: end for stream, end in ends.items() if end}
    assert sorted(row[1] for row in rows(restored_store, "events")) == sorted(in_backup)
    for table in ("events", "property_values", "seen"):
        assert rows(restored_store, table) == rows(
            original.data_dir / "store.duckdb", table, ends
        ), table
    # And its reports are those of the same log applied from scratch.
    report = metrics(new)
    assert report["total"] == len(in_backup)
    assert {s["value"]: s["total"] for s in report["segments"]} == {
        plan: sum(1 for p in in_backup if PLANS[int(p.split("-")[1]) % 3] == plan) for plan in PLANS
    }
    ok(tally("rebuild", "--data-dir", str(new)))
    assert metrics(new) == report


def test_a_backup_killed_half_way_leaves_the_server_running_and_no_backup(
    tmp_path: Path,
) -> None:
    server = RunningServer(tmp_path / "data").start()
    dest, partial = tmp_path / "backup", tmp_path / "backup.partial"
    try:
        # Some 64 MiB of log, so that the backup is still copying it when killed.
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            for n in range(64):
                response = client.post(
                    "/e",
                    params={"_k": server.api_key, "_p": f"big-{n}", "_n": "Uploaded"},
                    content=os.urandom(1024 * 1024 - 4096),
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert response.status_code == 200
        backup = tally_process("backup", str(dest), "--data-dir", str(server.data_dir))
        deadline = time.monotonic() + 30
        while not any((partial / "log").glob("*/*.seg")) and backup.poll() is None:
            assert time.monotonic() < deadline, "the backup did not start copying the log"
            time.sleep(0.001)
        backup.send_signal(signal.SIGKILL)  # while it copies the log (some 0.3 s here)
        output, _ = backup.communicate(timeout=10)
        assert backup.returncode == -signal.SIGKILL, output
        assert partial.is_dir()
        assert not dest.exists()

        # The server goes on; the half-written backup is never taken for one.
        params = {"_k": server.api_key, "_p": "after", "_n": "Kept"}
        response = httpx.get(server.base_url + "/e", params=params)
        assert response.status_code == 200
        assert server.status()["pipeline"]["processor"]["error"] is None
        # Only the CLI on the server's machine may have the store copied.
        refused = httpx.post(server.base_url + "/api/v1/backup/snapshot",
                             headers={"Authorization": f"Bearer {server.token}"})  # fmt: skip
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "local_only")
        assert "interrupted" in one_line_error(
            tally("restore", str(partial), "--data-dir", str(tmp_path / "new"))
        )

        # A re-run removes it and makes the whole backup.
        output = ok(tally("backup", str(dest), "--data-dir", str(server.data_dir)))
        assert f"Removed {partial}, left by a backup that was interrupted." in output
        assert (dest / "manifest.json").is_file()
        assert not partial.exists()
        stale = server.data_dir / "run" / "snapshots" / "left-by-a-killed-backup.duckdb"
        stale.write_bytes(b"")
    finally:
        assert server.stop() == 0, server.stderr
    # A store snapshot that a backup killed while the server made it never took
    # away goes when the server next starts.
    server.start()
    assert not stale.exists()
    assert server.stop() == 0, server.stderr


# -- without a server, and mistakes ----------------------------------------------------------


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with a log, a store and a catalog, no server running."""
    server = RunningServer(tmp_path_factory.mktemp("stopped") / "data").start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for n in range(20):
                params = {"_k": server.api_key, "_p": f"p0-{n}", "_n": "Viewed Page",
                          "Plan": PLANS[n % 3]}  # fmt: skip
                assert client.get("/e", params=params).status_code == 200
        wait_until(lambda: server.status()["pipeline"]["lag_records"] == 0, 30, "caught up")
    finally:
        assert server.stop() == 0, server.stderr
    return server.data_dir


@pytest.fixture(scope="module")
def whole_backup(stopped: Path) -> Path:
    dest = stopped.parent / "backup"
    ok(tally("backup", str(dest), "--data-dir", str(stopped)))
    return dest


@pytest.fixture
def backup(whole_backup: Path, tmp_path: Path) -> Path:
    """A copy of a whole backup, for a test to spoil."""
    copy = tmp_path / "backup"
    shutil.copytree(whole_backup, copy)
    return copy


def test_a_backup_without_a_server_restores_its_store(
    stopped: Path, whole_backup: Path, tmp_path: Path
) -> None:
    manifest = json.loads((whole_backup / "manifest.json").read_text())
    assert manifest["format"] == 1
    assert manifest["store"]["positions"] == {
        name: s["log_end"] for name, s in manifest["streams"].items() if s["log_end"]
    }
    ok(tally("restore", str(whole_backup), "--data-dir", str(tmp_path / "new")))
    for table in ("events", "positions", "property_values", "seen"):
        assert rows(tmp_path / "new" / "store.duckdb", table) == rows(
            stopped / "store.duckdb", table
        ), table
    assert metrics(tmp_path / "new") == metrics(stopped)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "catalog.sqlite", "log", "store.duckdb"
    ]  # fmt: skip
    assert (tmp_path / "new" / "log" / "FORMAT").read_text() == (
        stopped / "log" / "FORMAT"
    ).read_text()
    assert not (tmp_path / "new" / "log" / "APPLIED").exists()  # (it may be ahead of the copy)


def _edit_manifest(backup: Path, **changes: Any) -> None:
    path = backup / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _first_segment(backup: Path) -> Path:
    return sorted((backup / "log").glob("*/*.seg"), key=lambda p: -p.stat().st_size)[0]


def _flip_a_byte(backup: Path) -> None:
    segment = _first_segment(backup)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))


SPOILT: list[tuple[str, Any, str]] = [
    ("no_manifest", lambda b: (b / "manifest.json").unlink(), "is not a Tally backup"),
    ("newer_format", lambda b: _edit_manifest(b, format=2, tally_version="9.0.0"),
     f"is of backup format 2, made by Tally 9.0.0; this Tally ({__version__}) reads format 1: "
     "upgrade Tally to restore it"),
    ("newer_log_format", lambda b: _edit_manifest(b, log_format=99),
     f"is of format 99, from Tally {__version__}; this Tally ({__version__}) reads formats "
     f"up to {LOG_FORMAT}: upgrade Tally to restore it"),
    ("manifest_not_json", lambda b: (b / "manifest.json").write_text("{"), "is damaged"),
    ("manifest_without_streams", lambda b: _edit_manifest(b, streams=None), "is damaged"),
    ("path_outside", lambda b: _edit_manifest(b, catalog={"path": "../x", "size": 1,
                                                          "sha256": ""}),
     "is damaged: a file where none belongs: '../x'"),
    ("segment_cut_short", lambda b: os.truncate(_first_segment(b), 100),
     "is 100 bytes, the manifest says"),
    ("store_missing", lambda b: (b / "store.duckdb").unlink(),
     "store.duckdb is missing: the backup is incomplete"),
    ("segment_damaged", _flip_a_byte, "does not match its SHA-256 in the manifest"),
]  # fmt: skip


@pytest.mark.parametrize(("spoil", "message"), [(s, m) for _, s, m in SPOILT],
                         ids=[name for name, _, _ in SPOILT])  # fmt: skip
def test_restore_refuses_what_is_not_a_whole_backup(
    backup: Path, tmp_path: Path, spoil: Any, message: str
) -> None:
    spoil(backup)
    new = tmp_path / "new"
    assert message in one_line_error(tally("restore", str(backup), "--data-dir", str(new)))
    assert not new.exists()
    assert not (tmp_path / "new.partial").exists()


def test_restore_refuses_a_data_directory_that_is_not_new(
    backup: Path, stopped: Path, tmp_path: Path
) -> None:
    error = one_line_error(tally("restore", str(backup), "--data-dir", str(stopped)))
    assert error == (
        f"error: {stopped} already holds Tally data (log, store.duckdb, catalog.sqlite): "
        "restore into a new directory"
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    error = one_line_error(tally("restore", str(backup), "--data-dir", str(tmp_path / "other")))
    assert error == f"error: {tmp_path / 'other'} exists and is not empty"
    missing = tmp_path / "nowhere"
    error = one_line_error(tally("restore", str(missing), "--data-dir", str(tmp_path / "new")))
    assert error == f"error: no backup at {missing}"
    # An empty directory will do.
    (tmp_path / "empty").mkdir()
    ok(tally("restore", str(backup), "--data-dir", str(tmp_path / "empty")))
    assert (tmp_path / "empty" / "store.duckdb").is_file()


def test_backup_refuses_a_destination_that_is_not_empty_and_a_directory_without_data(
    stopped: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    error = one_line_error(tally("backup", str(dest), "--data-dir", str(stopped)))
    assert error == f"error: {dest} exists and is not empty"
    error = one_line_error(tally("backup", str(tmp_path / "b"), "--data-dir", str(tmp_path / "x")))
    assert error == f"error: no Tally data in {tmp_path / 'x'}"
    assert not (tmp_path / "x").exists()
    inside = stopped / "backups" / "b1"
    error = one_line_error(tally("backup", str(inside), "--data-dir", str(stopped)))
    assert error.startswith(f"error: {inside} is inside the data directory")
    assert not (stopped / "backups").exists()


def test_a_backup_leaves_alone_a_partial_that_another_run_is_writing(
    stopped: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "b.partial"
    partial.mkdir()
    (partial / "manifest.json").write_text("{}")
    fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the run writing it holds it
        error = one_line_error(tally("backup", str(tmp_path / "b"), "--data-dir", str(stopped)))
        assert error == f"error: another run is writing {partial} right now"
    finally:
        os.close(fd)
    assert (partial / "manifest.json").is_file()
    assert not (tmp_path / "b").exists()


def test_a_segment_shorter_than_its_stream_says_is_copied_as_it_is_with_a_warning(
    stopped: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(stopped, data, ignore=shutil.ignore_patterns("run"))
    durable = max((data / "log").glob("*/DURABLE"), key=lambda p: p.read_bytes()[:8])
    position, writes, records = struct.unpack_from("<QQQ", durable.read_bytes())
    durable.write_bytes(struct.pack("<QQQ", position + 100, writes, records))
    result = tally("backup", str(tmp_path / "b"), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"warning: {durable.with_name('00000000000000000000.seg')} holds {position:,} bytes, "
        f"not the {position + 100:,} that its stream says are durable: damage, copied as it is\n"
    )
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["streams"][durable.parent.name]["log_end"] == position + 100
    assert manifest["streams"][durable.parent.name]["segments"][0]["size"] == position
