"""The processor's loop: stopping and pausing between batches, and the garbage collector."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from journeys import Keys, build, event
from tally.log.reader import LogReader
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.processor import Processor, gc_paused
from tally.settings import Settings
from tally.store import Store


@pytest.fixture
def ten_logged(tmp_path: Path) -> Iterator[Processor]:
    """A processor over a log of ten events in stream c0, none applied yet."""
    config = Settings(data_dir=tmp_path)
    writer = SegmentWriter(config.log_dir / "c0")
    for entry in build([event("bob", f"Step {i}", 1_700_000_000 + i) for i in range(10)]):
        writer.write_durable(encode_record(entry.record))
    writer.close()
    store = Store(config.store_path)
    try:
        yield Processor(config, store, keys=Keys)
    finally:
        store.close()


def events(processor: Processor) -> int:
    row = processor.store.con.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def test_catch_up_stops_after_the_batch_in_hand(ten_logged: Processor) -> None:
    stop = threading.Event()
    stop.set()
    assert ten_logged.catch_up(stop=stop, limit=3) == 3  # one batch, then it stops
    assert events(ten_logged) == 3
    assert ten_logged.catch_up(limit=3) == 7  # and resumes where it stopped
    assert events(ten_logged) == 10


def test_catch_up_pauses_when_asked_before_a_batch(ten_logged: Processor) -> None:
    asked: list[dict[str, int]] = []

    def pause_after_two(positions: dict[str, int]) -> bool:
        asked.append(positions)
        return len(asked) >= 2

    assert ten_logged.catch_up(pause=pause_after_two, limit=3) == 6
    # Asked before reading each further batch, with where it would start.
    entries = list(LogReader(ten_logged.settings.log_dir).read("c0"))
    assert asked == [{"c0": entries[2].next_position}, {"c0": entries[5].next_position}]
    assert ten_logged.store.positions() == {"c0": entries[5].next_position}
    assert ten_logged.catch_up(limit=3) == 4
    assert events(ten_logged) == 10


def test_the_garbage_collector_is_paused_and_restored() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()
