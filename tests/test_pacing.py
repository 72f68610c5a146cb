"""Ingest first (tally.pacing): while ingest saturates the machine, the
processor waits, for at most ``defer_seconds`` of lag."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from journeys import Keys, build, event
from serverproc import wait_until
from tally.log.reader import LogReader
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.pacing import QUEUED_RECORDS, Load, machine_cpus
from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store

#: A busy loop that ends by itself (30 s) if a test dies without killing it.
SPIN = (
    "import os, time\nos.nice(19)\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"
)
#: Records per write of the stand-in for a collector under load.
DEEP = int(QUEUED_RECORDS) + 2


@contextmanager
def busy_cpus() -> Iterator[None]:
    """Every CPU kept busy by another process (at nice 19, so that the
    processor's own thread, also at nice 19, still gets its turn)."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(machine_cpus())]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@contextmanager
def queueing_collector(log_dir: Path) -> Iterator[None]:
    """Stream c1 written as a collector under load writes it: ``DEEP`` records
    a write, every 10 ms (records of an unknown key: rejects, not events)."""
    writer = SegmentWriter(log_dir / "c1")
    stop = threading.Event()

    def run() -> None:
        second = 0
        while not stop.is_set():
            rows = [event(f"p{i}", "Load", 1_700_000_000 + second, key="0" * 40, stream="c1")
                    for i in range(DEEP)]  # fmt: skip
            data = b"".join(encode_record(e.record._replace(recv_ns=time.time_ns()))
                            for e in build(rows))  # fmt: skip
            writer.write_durable(data, DEEP)
            second += 1
            stop.wait(0.01)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        writer.close()


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``), this process included."""
    with open("/proc/stat", "rb") as f:
        ticks = list(map(int, f.readline().split()[1:9]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = os.times()
    return own.user + own.system


def test_saturated_takes_busy_cpus_and_queueing_collectors(tmp_path: Path) -> None:
    load = Load(LogReader(tmp_path).write_counts)
    assert load.busy_above == max(load.cpus - 1, 0.5)
    start, busy, own = time.monotonic(), _machine_busy_seconds(), _own_cpu_seconds()
    end = start + 0.6
    while time.monotonic() < end:  # this process's own work is not "other"
        pass
    assert not load.saturated()
    seconds = time.monotonic() - start
    busy = (_machine_busy_seconds() - busy) / seconds
    own = (_own_cpu_seconds() - own) / seconds
    # The machine was busy with this spin and whatever else ran meanwhile
    # (other programs, on a shared machine): only the latter is "others".
    assert own > 0.3
    assert abs(load.others - (busy - own)) < 0.25
    assert load.queued == 0.0  # no writes at all
    with queueing_collector(tmp_path):
        time.sleep(0.5)
        saturated = load.saturated()
        assert load.queued == DEEP
        # Queueing alone is not saturation: the CPUs must be busy elsewhere too
        # (on a quiet machine they are not; a shared one may keep them busy).
        assert saturated == (load.others > load.busy_above)
        with busy_cpus():
            time.sleep(0.8)
            load.look()  # a window that began before the spinners ran at full speed
            time.sleep(0.8)
            assert load.saturated()
            assert load.others > load.cpus * 0.7
            assert load.queued == DEEP
    with busy_cpus():
        time.sleep(0.8)
        load.look()
        time.sleep(0.8)
        assert not load.saturated()  # busy CPUs, but no requests queueing
        assert load.others > load.cpus * 0.7
        assert load.queued == 0.0


def _log_events(config: Settings, n: int, first: int) -> None:
    """``n`` events received now, appended to stream c0."""
    writer = SegmentWriter(config.log_dir / "c0")
    try:
        rows = [event("bob", f"Step {first + i}", 1_700_000_000 + first + i) for i in range(n)]
        for entry in build(rows):
            writer.write_durable(encode_record(entry.record._replace(recv_ns=time.time_ns())))
    finally:
        writer.close()


def _events(processor: Processor) -> int:
    with processor.lock:
        row = processor.store.con.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def test_the_processor_waits_while_ingest_saturates_at_most_defer_seconds(
    tmp_path: Path,
) -> None:
    config = Settings(data_dir=tmp_path, defer_seconds=3.0)
    store = Store(config.store_path)
    processor = Processor(config, store, keys=Keys)
    try:
        with busy_cpus(), queueing_collector(config.log_dir):
            time.sleep(0.5)
            _log_events(config, 5, 0)
            logged = time.monotonic()
            processor.start()
            wait_until(lambda: processor.waiting_for_ingest, 5, "the processor waits")
            time.sleep(1.0)
            assert _events(processor) == 0  # the oldest record is younger than 3 s
            # Then applied, saturated or not.
            wait_until(lambda: _events(processor) == 5, 20, "the first events are applied")
            assert time.monotonic() - logged >= 2.5
        # Ingest has calmed down: records are applied at once.
        time.sleep(0.5)
        _log_events(config, 5, 5)
        waited = []

        def applied() -> bool:
            waited.append(processor.waiting_for_ingest)
            return _events(processor) == 10

        wait_until(applied, 20, "the next events are applied")
        assert not any(waited)  # at once: not held back for defer_seconds
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
        return _events(processor) == 5

    try:
        with busy_cpus(), queueing_collector(config.log_dir):
            time.sleep(0.5)
            _log_events(config, 5, 0)
            processor.start()
            wait_until(applied, 20, "the events are applied")  # saturated, but never held
    finally:
        processor.stop()
        store.close()
    assert not any(waited)
