"""``tally rebuild`` with its batches prepared in worker processes
(tally.preparing) makes the store the live path makes, and a worker that dies
makes it fail cleanly, the old store untouched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from journeys import KEY, PRODUCT, T0, record, rows, snapshot
from serverproc import wait_until
from tally.catalog import Catalog
from tally.cli.maintenance import rebuild_store
from tally.log.damage import Quarantine
from tally.log.reader import LogReader
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter, list_segments, segment_name
from tally.operations import REVOKE_ALIAS_PATH
from tally.preparing import WorkerEnded, plan
from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store

OTHER_KEY = "fedcba9876543210fedcba9876543210fedcba98"
SEGMENT_BYTES = 16 * 1024  # many segments: many slices, handed to the workers in turns


def frames(n: int, later_ns: int, seed: int = 5) -> dict[str, list[bytes]]:
    """A log of ``n`` tracking calls on three streams: events with properties,
    property sets, aliases (some revoked by an operator record), retries (the
    same call again, on the same stream or another), unknown keys, a key
    revoked before its last records (received at ``later_ns``), bad times."""
    rng = random.Random(seed)
    streams: dict[str, list[bytes]] = {"c0": [], "c1": [], "c2": []}
    sent: list[tuple[str, dict[str, str], int]] = []
    for i in range(n):
        person = f"p{rng.randrange(n // 8)}"
        at = T0 + i // 20
        roll = rng.random()
        path, params = "/e", {"_k": KEY, "_p": person, "_n": f"Step {rng.randrange(6)}"}
        if roll < 0.55:
            params |= {"Plan": f"plan{rng.randrange(3)}", "_t": str(at - rng.randrange(5))}
        elif roll < 0.70:
            path, params = "/s", {"_k": KEY, "_p": person, "Country": f"c{rng.randrange(9)}"}
        elif roll < 0.80:
            path, params = "/a", {"_k": KEY, "_p": f"anon-{person}", "_n": person}
        elif roll < 0.88 and sent:
            path, params, at = sent[rng.randrange(max(len(sent) - 50, 0), len(sent))]
        elif roll < 0.92:
            params["_k"] = "nokey"
        elif roll < 0.95:
            params |= {"_k": OTHER_KEY, "_t": "yesterday"}
        sent.append((path, params, at))
        stream = f"c{rng.randrange(3)}"
        streams[stream].append(encode_record(record(path, params, at, i)))
    for i in range(n // 200):  # revocations of aliases sent, on the operator's stream
        a = f"p{rng.randrange(n // 8)}"
        revocation = {"product": PRODUCT, "a": f"anon-{a}", "b": a}
        streams["c2"].append(encode_record(record(REVOKE_ALIAS_PATH, revocation, T0 + i)))
    for i in range(200):  # received after OTHER_KEY is revoked: rejected as such
        query = {"_k": OTHER_KEY, "_p": f"late{i}", "_n": "Late"}
        late = record("/e", query, later_ns // 10**9, later_ns % 10**9 + i)
        streams["c1"].append(encode_record(late))
    return streams


def write(
    log_dir: Path, streams: dict[str, list[bytes]], segment_bytes: int = SEGMENT_BYTES
) -> None:
    for stream, data in streams.items():
        writer = SegmentWriter(log_dir / stream, segment_bytes=segment_bytes)
        for frame in data:
            writer.write_durable(frame)
        writer.close()


def data_dir(
    path: Path,
    streams: dict[str, list[bytes]],
    later_ns: int,
    segment_bytes: int = SEGMENT_BYTES,
    damaged: str = "c1",
) -> Settings:
    """``path`` holding ``streams`` as its log (``damaged``'s third segment
    garbled) and a catalog with KEY and the revoked OTHER_KEY."""
    settings = Settings(data_dir=path)
    write(settings.log_dir, streams, segment_bytes)
    catalog = Catalog(settings.catalog_path)
    try:
        catalog.create_product(PRODUCT, key=KEY)
        catalog.add_key(PRODUCT, key=OTHER_KEY)
        catalog.revoke_key(OTHER_KEY)
    finally:
        catalog.close()
    assert time.time_ns() < later_ns
    # Damage in the middle of a stream: a frame of its third segment garbled.
    third = settings.log_dir / damaged / segment_name(list_segments(settings.log_dir / damaged)[2])
    data = bytearray(third.read_bytes())
    for i in range(40, 60):
        data[i] ^= 0xFF
    third.write_bytes(bytes(data))
    return settings


def test_a_rebuild_through_the_workers_makes_the_store_the_live_path_makes(
    tmp_path: Path,
) -> None:
    later_ns = time.time_ns() + 3600 * 10**9
    streams = frames(6000, later_ns)
    live, rebuilt = (data_dir(tmp_path / name, streams, later_ns) for name in ("live", "rebuilt"))
    slices = plan(LogReader(rebuilt.log_dir), {})
    assert len(slices) > 20  # handed out many at a time, to two workers

    store = Store(live.store_path)
    processor = Processor(live, store)  # the catalog's keys, as `tally serve`
    assert processor.catch_up(limit=500) == processor.progress.records
    expected = snapshot(store)
    store.close()

    # Batches of 60 records: several in most slices, and the last of each cut short.
    records = rebuild_store(rebuilt, jobs=2, batch_records=60)
    store = Store(rebuilt.store_path)
    got = snapshot(store)
    store.close()

    assert records == sum(len(v) for v in streams.values()) - 1  # the garbled frame
    assert got == expected
    reasons = {row[1] for row in got["rejects"]}
    assert {"unknown_key", "revoked_key"} <= reasons, reasons
    assert got["revocations"]
    assert got["aliases"]
    assert any(name == "duplicates" and count > 0 for name, count in got["counters"])
    damage = [
        (r["stream"], r["start"], r["end"]) for r in Quarantine(rebuilt.data_dir, "t").reports()
    ]
    assert damage == [
        (r["stream"], r["start"], r["end"]) for r in Quarantine(live.data_dir, "t").reports()
    ]
    assert len(damage) == 1


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_worker_that_dies_fails_the_rebuild_and_leaves_the_old_store(
    tmp_path: Path, how: signal.Signals
) -> None:
    """Killed (the OOM killer's way), or sent SIGTERM by another program (it
    then ends its slice, tally.preparing): one line, and the old store stays."""
    later_ns = time.time_ns() + 3600 * 10**9
    settings = data_dir(tmp_path / "data", frames(6000, later_ns), later_ns)
    store = Store(settings.store_path)
    Processor(settings, store).catch_up(limit=1000)  # the old store: a part of the log
    store.close()
    # More log than the old store holds: a rebuild long enough to kill a worker in.
    write(settings.log_dir, {"c3": [f for fs in frames(60_000, later_ns, 9).values() for f in fs]})
    before = digest(settings.store_path)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rebuild = subprocess.Popen(
        [sys.executable, "-m", "tally", "rebuild", "--accept-loss", "--jobs", "1",
         "--data-dir", str(settings.data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    (worker,) = started_workers(rebuild)
    if how == signal.SIGTERM:  # once it handles SIGTERM (its start done), not before
        wait_until(lambda: catches(worker.pid, how), 30, "the worker handles SIGTERM")
    worker.send_signal(how)
    out, err = rebuild.communicate(timeout=120)
    assert rebuild.returncode == 1, (out, err)
    assert "error: a process preparing the rebuild's batches ended abruptly" in err
    assert "Traceback" not in err
    assert digest(settings.store_path) == before
    assert not settings.store_path.with_name(settings.store_path.name + ".rebuild").exists()


def test_ctrl_c_stops_a_rebuild_and_leaves_the_old_store(tmp_path: Path) -> None:
    """Ctrl-C: the rebuild stops after the batch it is writing, removes what
    it built, ends its workers and says so (exit status 130)."""
    later_ns = time.time_ns() + 3600 * 10**9
    settings = data_dir(tmp_path / "data", frames(6000, later_ns), later_ns)
    store = Store(settings.store_path)
    Processor(settings, store).catch_up(limit=1000)
    store.close()
    write(settings.log_dir, {"c3": [f for fs in frames(60_000, later_ns, 9).values() for f in fs]})
    before = digest(settings.store_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rebuild = subprocess.Popen(
        [sys.executable, "-m", "tally", "rebuild", "--accept-loss", "--jobs", "1",
         "--data-dir", str(settings.data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    workers = started_workers(rebuild)
    rebuild.send_signal(signal.SIGINT)  # (its handler is in place before the workers start)
    try:
        out, err = rebuild.communicate(timeout=60)
    finally:
        rebuild.kill()  # should it hang: this test's own process
    assert rebuild.returncode == 130, (out, err)
    assert f"Interrupted: {settings.store_path} is as it was." in err
    assert "Traceback" not in err
    assert "Rebuilt" not in out
    assert digest(settings.store_path) == before
    building = settings.store_path.with_name(settings.store_path.name + ".rebuild")
    assert not building.exists()
    assert not building.with_name(building.name + ".wal").exists()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def started_workers(rebuild: subprocess.Popen[str]) -> list[psutil.Process]:
    """The worker processes of ``rebuild``, once one has started."""
    workers: list[psutil.Process] = []
    while not workers and rebuild.poll() is None:
        workers = spawned(rebuild.pid)
        time.sleep(0.01)
    assert workers, "the rebuild ended before its worker started"
    return workers


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler of its own for ``signum``."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signum - 1)))


def spawned(pid: int) -> list[psutil.Process]:
    """The processes that ``pid`` started through multiprocessing's spawn."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
    return found


def test_a_worker_asked_to_end_ends_its_slice_whole_and_the_catch_up_says_so(
    tmp_path: Path,
) -> None:
    """SIGTERM, how a catch-up that ends early asks its workers to end, makes
    a worker end its slice with WorkerEnded at its next batch, sent back whole,
    rather than die: the catch-up raises it, having written whole batches
    only, and its pool shuts down. (A worker killed while it sent its batches
    left half a message in the pool's pipe, and the pool waiting for the rest
    for good: a rebuild stopped by Ctrl-C hung so.)"""
    later_ns = time.time_ns() + 3600 * 10**9
    settings = data_dir(tmp_path / "data", frames(6000, later_ns), later_ns)
    write(settings.log_dir, {"c3": [f for fs in frames(60_000, later_ns, 9).values() for f in fs]})
    asked: list[psutil.Process] = []

    def on_batch(_: int) -> None:
        if not asked:  # the first batch written: the worker has slices to go
            asked.extend(spawned(os.getpid()))
            for worker in asked:
                worker.terminate()

    store = Store(settings.store_path)
    try:
        with pytest.raises(WorkerEnded, match="asked to end within"):
            Processor(settings, store).catch_up_in_processes(on_batch, jobs=1, limit=60)
        assert asked
        ((events,),) = rows(store, "SELECT count(*) FROM events")
        ((positions,),) = rows(store, "SELECT sum(records) FROM positions")
        assert 0 < positions < 66_000
        assert events <= positions  # (rejects and duplicates are not events)
    finally:
        store.close()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in asked)


def test_a_rebuild_killed_leaves_no_worker_behind(tmp_path: Path) -> None:
    """Killed with SIGKILL (the OOM killer's way), the rebuild cannot stop its
    workers: each ends by itself once its parent is gone (tally.orphans)."""
    later_ns = time.time_ns() + 3600 * 10**9
    settings = data_dir(tmp_path / "data", frames(6000, later_ns), later_ns)
    write(settings.log_dir, {"c3": [f for fs in frames(60_000, later_ns, 9).values() for f in fs]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rebuild = subprocess.Popen(
        [sys.executable, "-m", "tally", "rebuild", "--accept-loss", "--jobs", "1",
         "--data-dir", str(settings.data_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = started_workers(rebuild)
    rebuild.kill()
    assert rebuild.wait(10) == -signal.SIGKILL

    def ended(worker: psutil.Process) -> bool:
        try:
            return worker.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped
        except psutil.NoSuchProcess:
            return True

    try:
        wait_until(lambda: all(ended(w) for w in workers), 15, "the orphaned workers end")
    finally:
        for worker in workers:  # this test's own processes, should the assertion fail
            with contextlib.suppress(psutil.Error):
                worker.kill()
