"""Ingest first (tally.pacing): the processor waits while the machine is busy,
for at most ``defer_seconds`` of lag, and the CPU measure behind it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from journeys import Keys, build, event
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.pacing import CpuLoad, machine_cpus
from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store

#: A busy loop that ends by itself (30 s) if a test dies without killing it.
SPIN = (
    "import os, time\nos.nice(19)\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"
)


@contextmanager
def busy_machine() -> Iterator[None]:
    """Every CPU kept busy by another process (at nice 19, so that the
    processor's own thread, also at nice 19, still gets its turn)."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(machine_cpus())]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def wait_until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` held (fails after ``seconds``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def test_cpu_load_counts_other_processes_and_not_this_one() -> None:
    load = CpuLoad()
    assert load.busy_above == max(load.cpus - 1, 0.5)
    end = time.monotonic() + 0.6
    while time.monotonic() < end:  # this process's own work is not "other"
        pass
    assert load.others() < 0.5
    with busy_machine():
        time.sleep(0.8)
        load.others()  # a window that began before the spinners ran at full speed
        time.sleep(0.8)
        assert load.others() > load.cpus * 0.7
        assert load.busy()
    time.sleep(0.5)
    load.others()
    time.sleep(0.5)
    assert not load.busy()


def _log_events(config: Settings, n: int, first: int) -> None:
    """``n`` events received now, appended to stream c0."""
    writer = SegmentWriter(config.log_dir / "c0")
    try:
        rows = [event("bob", f"Step {first + i}", 1_700_000_000 + first + i) for i in range(n)]
        for entry in build(rows):
            writer.write_durable(encode_record(entry.record._replace(recv_ns=time.time_ns())))
    finally:
        writer.close()


def test_the_processor_waits_while_the_machine_is_busy_at_most_defer_seconds(
    tmp_path: Path,
) -> None:
    config = Settings(data_dir=tmp_path, defer_seconds=3.0)
    store = Store(config.store_path)
    processor = Processor(config, store, keys=Keys)

    def events() -> int:
        with processor.lock:
            row = store.con.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    try:
        with busy_machine():
            time.sleep(0.5)
            _log_events(config, 5, 0)
            logged = time.monotonic()
            processor.start()
            wait_until(lambda: processor.waiting_for_ingest, 5)
            time.sleep(1.0)
            assert events() == 0  # busy, and the oldest record is younger than 3 s
            wait_until(lambda: events() == 5, 20)  # then it applies them, busy or not
            assert time.monotonic() - logged >= 2.5
            assert not processor.waiting_for_ingest
        # A quiet machine: records are applied at once.
        time.sleep(0.5)
        _log_events(config, 5, 5)
        assert wait_until(lambda: events() == 10, 20) < 2.0
        assert not processor.waiting_for_ingest
    finally:
        processor.stop()
        store.close()


def test_defer_seconds_zero_never_waits(tmp_path: Path) -> None:
    config = Settings(data_dir=tmp_path, defer_seconds=0)
    store = Store(config.store_path)
    processor = Processor(config, store, keys=Keys)
    waited = []

    def applied() -> bool:
        waited.append(processor.waiting_for_ingest)
        with processor.lock:
            return store.con.execute("SELECT count(*) FROM events").fetchone() == (5,)

    try:
        with busy_machine():
            time.sleep(0.5)
            _log_events(config, 5, 0)
            processor.start()
            assert wait_until(applied, 20) < 2.5  # busy, but applied at once
    finally:
        processor.stop()
        store.close()
    assert not any(waited)
