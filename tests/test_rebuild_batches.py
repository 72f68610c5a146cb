"""``tally rebuild`` reads larger batches than the live processor: a catch-up's
byte bound is its caller's (``Processor.catch_up(limit_bytes=...)``)."""

from __future__ import annotations

from pathlib import Path

from journeys import Keys, build, event
from tally.cli.maintenance import REBUILD_BATCH_BYTES
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.processor import BATCH_BYTES, Processor
from tally.settings import Settings
from tally.store import Store


def test_a_catch_up_reads_batches_of_the_bytes_it_is_given(tmp_path: Path) -> None:
    big = "x" * (256 * 1024)
    rows = [event(f"p{i}", "Uploaded", 1_700_000_000 + i, {"Blob": big}) for i in range(80)]
    logged = sum(len(encode_record(entry.record)) for entry in build(rows))
    assert BATCH_BYTES < logged < REBUILD_BATCH_BYTES
    applied = {}
    for name, limit in (("live", BATCH_BYTES), ("rebuild", REBUILD_BATCH_BYTES)):
        config = Settings(data_dir=tmp_path / name)
        writer = SegmentWriter(config.log_dir / "c0")
        for entry in build(rows):
            writer.write_durable(encode_record(entry.record))
        writer.close()
        store = Store(config.store_path)
        processor = Processor(config, store, keys=Keys)
        assert processor.catch_up(limit=100_000, limit_bytes=limit) == len(rows)
        applied[name] = (processor.progress.batches, store.con.execute(
            "SELECT count(*) FROM events").fetchone())  # fmt: skip
        store.close()
    assert applied["rebuild"] == (1, (80,))
    assert applied["live"] == (3, (80,))  # 8 MiB each, and the rest
