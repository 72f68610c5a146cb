"""The live processor far behind prepares its batches in worker processes
(tally.processor, tally.preparing) and keeps every guarantee of its thread
path: the same store, keys as of each slice, nothing lost or applied twice
when it is stopped or a worker is killed, and no worker process left."""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from test_rebuild_pool import OTHER_KEY, data_dir, frames, spawned, write

from journeys import KEY, PRODUCT, record, snapshot
from serverproc import RunningServer, wait_until
from tally.catalog import Catalog
from tally.log.damage import Quarantine
from tally.log.reader import LogReader
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.processor import PROCESSOR_NICE, Processor
from tally.settings import Settings
from tally.store import Store

#: Streams of the written log, beside the two collectors' (c0, c1).
STREAMS = ("c2", "c3", "c4")
#: The servers' segments: far behind from three of them (tally.processor).
SERVE = ["--segment-mib", "1", "--catch-up-jobs", "1"]


#: Segments of the written log: slices of ~2,000 records.
SEGMENT_BYTES = 256 * 1024


def workers(pid: int) -> list[psutil.Process]:
    """The preparing workers among ``pid``'s descendants: spawned processes
    (as the collectors are) at the processor's priority (the collectors run
    at the server's)."""
    found = []
    for child in spawned(pid):
        with contextlib.suppress(psutil.Error):
            if child.nice() == PROCESSOR_NICE:
                found.append(child)
    return found


def server_behind(tmp_path: Path, n: int) -> RunningServer:
    """A data directory whose log holds ``n`` tracking calls (of
    test_rebuild_pool.frames, a frame garbled) that its store has not
    applied; its server stopped."""
    server = RunningServer(tmp_path / "data", extra_args=SERVE).start()  # the first start
    server.stop()
    later_ns = time.time_ns() + 3600 * 10**9
    streams = frames(n, later_ns)
    renamed = {new: streams[old] for new, old in zip(STREAMS, streams, strict=True)}
    data_dir(server.data_dir, renamed, later_ns, SEGMENT_BYTES, damaged="c3")
    return server


def thread_path(tmp_path: Path, source: Path) -> dict[str, list[tuple[object, ...]]]:
    """The store the thread path makes of ``source``'s log and catalog."""
    copy = Settings(data_dir=tmp_path / "thread-path")
    shutil.copytree(source / "log", copy.log_dir)
    shutil.copy(source / "catalog.sqlite", copy.catalog_path)
    store = Store(copy.store_path)
    try:
        processor = Processor(copy, store)
        processor.catch_up(limit=500)
        return snapshot(store)
    finally:
        store.close()


def served(server: RunningServer) -> dict[str, list[tuple[object, ...]]]:
    store = Store(server.data_dir / "store.duckdb")
    try:
        return snapshot(store)
    finally:
        store.close()


def lag(server: RunningServer) -> int:
    pipeline = server.status()["pipeline"]
    assert isinstance(pipeline, dict)
    return int(pipeline["lag_records"])


@contextlib.contextmanager
def running(server: RunningServer) -> Iterator[int]:
    """The server started (its pid); killed should the test fail before it stops it."""
    server.start()
    assert server.process is not None
    try:
        yield server.process.pid
    finally:
        if server.process.poll() is None:
            server.kill()


def test_far_behind_the_server_prepares_in_workers_and_makes_the_thread_paths_store(
    tmp_path: Path,
) -> None:
    server = server_behind(tmp_path, 30_000)
    seen: set[int] = set()
    with running(server) as pid:

        def caught_up() -> bool:
            seen.update(p.pid for p in workers(pid))
            return lag(server) == 0

        wait_until(caught_up, 120, "the server applied the log")
        assert seen, "no worker process prepared batches"
        # Caught up, the server holds no worker process.
        wait_until(lambda: not workers(pid), 10, "the workers were shut down")
        assert server.stop() == 0
    assert not [p for p in seen if psutil.pid_exists(p)]
    log = (server.data_dir / "tally.log").read_text()
    assert "worker processes prepare its batches" in log

    got = served(server)
    expected = thread_path(tmp_path, server.data_dir)
    assert got == expected
    reasons = {row[1] for row in got["rejects"]}
    assert {"unknown_key", "revoked_key"} <= reasons, reasons
    assert got["revocations"]
    assert got["aliases"]
    assert any(name == "duplicates" and count > 0 for name, count in got["counters"])
    damage = [(r["stream"], r["start"]) for r in Quarantine(server.data_dir, "t").reports()]
    assert damage
    assert all(stream == "c3" for stream, _ in damage)


def test_stopped_or_a_worker_killed_mid_catch_up_nothing_is_lost_or_applied_twice(
    tmp_path: Path,
) -> None:
    server = server_behind(tmp_path, 150_000)
    settings = Settings(data_dir=server.data_dir)
    reader = LogReader(settings.log_dir)
    log_bytes = sum(reader.durable(stream) for stream in reader.streams())

    # Stopped while the workers prepare: the server stops promptly, workers and all.
    with running(server) as pid:
        before = lag(server)
        found = wait_until(
            lambda: lag(server) < before and workers(pid), 60, "a pooled batch applied"
        )
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10
    assert not [p.pid for p in found if psutil.pid_exists(p.pid)], "a worker outlived the server"
    store = Store(settings.store_path)
    try:
        applied = sum(store.positions().values())
    finally:
        store.close()
    assert 0 < applied < log_bytes

    # A worker killed: the processor goes on without the workers, from the
    # positions the store holds.
    with running(server) as pid:
        victim = wait_until(lambda: workers(pid), 60, "a worker started")[0]
        victim.send_signal(signal.SIGKILL)
        wait_until(lambda: lag(server) == 0, 180, "the server applied the log")
        assert not workers(pid)
        assert server.stop() == 0
    log = (server.data_dir / "tally.log").read_text()
    assert "ended abruptly" in log, log[-2000:]
    assert "Traceback" not in log

    assert served(server) == thread_path(tmp_path, server.data_dir)


def test_a_key_revoked_while_the_workers_catch_up_applies_from_its_revocation(
    tmp_path: Path,
) -> None:
    later_ns = time.time_ns() + 3600 * 10**9
    settings = Settings(data_dir=tmp_path / "pooled")
    # 16 KiB segments: ~75 slices, handed out two ahead of the one written, so
    # most of them (the last of c1 among them: records received at later_ns)
    # after the revocation; c5's after too, once the log is planned again.
    write(settings.log_dir, frames(6000, later_ns))  # test_rebuild_pool's 16 KiB segments
    catalog = Catalog(settings.catalog_path)
    try:
        catalog.create_product(PRODUCT, key=KEY)
        catalog.add_key(PRODUCT, key=OTHER_KEY)  # revoked during the catch-up
    finally:
        catalog.close()
    late = SegmentWriter(settings.log_dir / "c5", segment_bytes=16 * 1024)

    def send(n: int, tag: str) -> None:
        for i in range(n):
            now = time.time_ns()
            query = {"_k": OTHER_KEY, "_p": f"{tag}{i}", "_n": tag}
            late.write_durable(encode_record(record("/e", query, now // 10**9, now % 10**9)))

    revoked = False

    def on_batch(_: int) -> None:
        nonlocal revoked
        if not revoked:  # the first batch written: the workers hold slices already
            send(100, "before")
            catalog = Catalog(settings.catalog_path)
            try:
                catalog.revoke_key(OTHER_KEY)
            finally:
                catalog.close()
            send(100, "after")
            late.close()
            revoked = True

    store = Store(settings.store_path)
    try:
        processor = Processor(settings, store)
        processor.catch_up_in_processes(on_batch, jobs=1, limit=60)
        got = snapshot(store)
    finally:
        store.close()
    assert revoked

    assert got == thread_path(tmp_path, settings.data_dir)
    # The 100 received before the revocation applied, the 100 after rejected
    # (and the frames' own, received long before, applied).
    assert [row[1] for row in got["rejects"] if row[4] == "c5"] == ["revoked_key"] * 100
    assert sum(row[5] == "c5" for row in got["events"]) == 100
