"""Damage in the log is contained, never propagated (DESIGN §2, docs/log-format.md).

A torn tail past the last sync may be cut; anything else that is not a frame is
damage: readers skip it and report it, every valid frame before and after it is
read, and a writer never cuts it nor writes below a position that was durable or
applied.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tally.errors import Unavailable
from tally.log import LogReader, Record, SegmentWriter
from tally.log.damage import Damage, Quarantine
from tally.log.record import FRAME_HEADER, encode_record
from tally.log.writer import (
    FORMAT_FILE,
    durable_position,
    list_segments,
    segment_name,
    write_applied,
)

STREAM = "c0"


def record(n: int) -> Record:
    return Record("GET", "/e", f"_k=key&_p=user-{n:04d}&_n=Signed+Up".encode(), b"",
                  1_700_000_000_000_000_000 + n, "127.0.0.1", "test/1.0")  # fmt: skip


FRAME_SIZE = len(encode_record(record(0)))


class Log:
    """A data directory with one stream, written through the real writer."""

    def __init__(self, data_dir: Path, segment_bytes: int = 1 << 20) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "log"
        self.stream_dir = self.log_dir / STREAM
        self.segment_bytes = segment_bytes
        self.told: list[Damage] = []

    def write(self, records: list[Record]) -> int:
        writer = SegmentWriter(self.stream_dir, segment_bytes=self.segment_bytes)
        try:
            for r in records:
                writer.write_durable(encode_record(r))
            return writer.position
        finally:
            writer.close()

    def read(self, position: int = 0) -> list[Record]:
        self.told = []
        reader = LogReader(self.log_dir, lambda damage, _: self.told.append(damage))
        return [e.record for e in reader.read(STREAM, position)]

    def segments(self) -> list[Path]:
        return [self.stream_dir / segment_name(b) for b in list_segments(self.stream_dir)]

    def quarantined(self) -> list[tuple[int, int]]:
        return [(int(r["start"]), int(r["end"]))  # type: ignore[call-overload]
                for r in Quarantine(self.data_dir, "test").reports()]  # fmt: skip


def flip(path: Path, offset: int, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_bit_flip_in_the_newest_segment_is_never_cut_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    log = Log(tmp_path)
    written = [record(n) for n in range(10)]
    end = log.write(written)
    [segment] = log.segments()
    flip(segment, 4 * FRAME_SIZE + FRAME_HEADER.size + 5, 16)  # inside the fifth record

    more = [record(n) for n in range(10, 13)]
    assert log.write(more) == end + 3 * FRAME_SIZE  # appended after the damage, nothing cut
    assert log.read() == written[:4] + written[5:] + more
    damaged = (4 * FRAME_SIZE, 5 * FRAME_SIZE)
    assert [(d.start, d.end, d.reason) for d in log.told] == [(*damaged, "checksum mismatch")]
    assert log.quarantined() == [damaged]  # kept by the writer that met it on opening


def test_a_segment_that_lost_its_end_is_left_alone_and_the_stream_goes_on_past_it(
    tmp_path: Path,
) -> None:
    log = Log(tmp_path)
    written = [record(n) for n in range(6)]
    end = log.write(written)
    [segment] = log.segments()
    with open(segment, "r+b") as f:
        f.truncate(end - 7)  # the disk lost the last 7 bytes of a synced frame

    more = [record(n) for n in range(6, 9)]
    log.write(more)
    assert segment.stat().st_size == end - 7  # not cut further
    assert list_segments(log.stream_dir) == [0, end]  # new records begin where the old ended
    assert log.read() == written[:5] + more
    assert [(d.start, d.end) for d in log.told] == [(5 * FRAME_SIZE, end)]
    # Readers that start past the loss (the store had applied it) never meet it.
    assert log.read(end) == more
    assert log.told == []


def test_zeros_and_a_truncated_frame_in_a_sealed_segment_are_skipped(tmp_path: Path) -> None:
    log = Log(tmp_path, segment_bytes=4 * FRAME_SIZE)
    written = [record(n) for n in range(12)]
    log.write(written)
    first, second, _ = log.segments()
    data = bytearray(first.read_bytes())
    data[FRAME_SIZE : 2 * FRAME_SIZE] = bytes(FRAME_SIZE)  # a zero-filled range
    first.write_bytes(bytes(data))
    with open(second, "r+b") as f:  # a middle segment cut inside its third frame
        f.truncate(2 * FRAME_SIZE + 11)

    assert log.read() == [written[0], *written[2:6], *written[8:]]
    base = 4 * FRAME_SIZE
    assert [(d.start, d.end) for d in log.told] == [
        (FRAME_SIZE, 2 * FRAME_SIZE),
        (base + 2 * FRAME_SIZE, base + 4 * FRAME_SIZE),
    ]
    assert "zeros" in log.told[0].reason


def test_a_deleted_segment_file_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    log = Log(tmp_path, segment_bytes=3 * FRAME_SIZE)
    written = [record(n) for n in range(9)]
    log.write(written)
    log.segments()[1].unlink()
    assert log.read() == written[:3] + written[6:]
    assert [(d.start, d.end) for d in log.told] == [(3 * FRAME_SIZE, 6 * FRAME_SIZE)]


def test_a_writer_never_writes_below_what_was_durable_or_applied(tmp_path: Path) -> None:
    log = Log(tmp_path)
    end = log.write([record(n) for n in range(4)])
    for segment in log.segments():
        segment.unlink()  # every segment gone, DURABLE left
    log.write([record(4)])
    assert list_segments(log.stream_dir) == [end]
    assert log.read(end) == [record(4)]

    # The store's applied positions (log/APPLIED) count too, even with DURABLE gone.
    (log.stream_dir / "DURABLE").unlink()
    applied = end + 10 * FRAME_SIZE
    write_applied(log.log_dir, {STREAM: applied})
    log.write([record(5)])
    assert list_segments(log.stream_dir)[-1] == applied
    assert durable_position(log.stream_dir) == applied + FRAME_SIZE


def _v1_frame(r: Record) -> bytes:
    """A frame as Tally wrote it before log format 2: no magic."""
    payload = encode_record(r)[FRAME_HEADER.size :]
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_format_1_frames_are_read_resynced_and_continued_in_format_2(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.stream_dir.mkdir(parents=True)
    old = [record(n) for n in range(5)]
    v1 = [_v1_frame(r) for r in old]
    segment = log.stream_dir / segment_name(0)
    segment.write_bytes(b"".join(v1))
    assert log.read() == old

    flip(segment, len(v1[0]) + 3)  # the second frame's length: no magic to find the next by
    new = [record(n) for n in range(5, 7)]
    log.write(new)  # the writer appends format-2 frames to the same segment
    assert log.read() == [old[0], *old[2:], *new]
    assert [(d.start, d.end) for d in log.told] == [(len(v1[0]), 2 * len(v1[0]))]


def test_a_log_from_a_newer_tally_is_refused(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.write([record(0)])
    assert (log.log_dir / FORMAT_FILE).read_text() == "2\n"
    (log.log_dir / FORMAT_FILE).write_text("3\n")
    with pytest.raises(Unavailable, match="format 3, from a newer Tally"):
        log.write([record(1)])
