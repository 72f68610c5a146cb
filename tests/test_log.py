"""The log (DESIGN §2): frames, segments, the reader, and recovery of a torn tail."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.log import LogReader, Record, SegmentWriter
from tally.log.damage import Damage, Quarantine
from tally.log.record import (
    FRAME_HEADER,
    METHODS,
    CorruptFrame,
    encode_frame,
    encode_record,
    read_frame,
)
from tally.log.writer import (
    PREALLOCATE_BYTES,
    StreamLocked,
    durable_position,
    list_segments,
    segment_name,
    valid_prefix,
)

STREAM = "c0"

# -- helpers ----------------------------------------------------------------------------


def record(n: int, *, body: bytes = b"") -> Record:
    """A request; every ``record(n)`` without a body frames to the same size."""
    return Record(
        method="POST" if body else "GET",
        path="/e",
        query=f"_k=key&_p=user-{n:04d}&_n=Signed+Up&seq={n:04d}".encode(),
        body=body,
        recv_ns=1_700_000_000_000_000_000 + n,
        addr="127.0.0.1",
        user_agent="test-agent/1.0",
    )


def frames(records: list[Record]) -> bytes:
    return b"".join(encode_record(r) for r in records)


def write(stream_dir: Path, records: list[Record], *, segment_bytes: int = 1 << 20) -> int:
    """Append ``records`` one batch each with a fresh writer; the stream position."""
    writer = SegmentWriter(stream_dir, segment_bytes=segment_bytes)
    try:
        for r in records:
            writer.write_durable(encode_record(r))
        return writer.position
    finally:
        writer.close()


def read_all(log_dir: Path, position: int = 0) -> list[Record]:
    return [entry.record for entry in LogReader(log_dir).read(STREAM, position)]


def segments(stream_dir: Path) -> list[Path]:
    return [stream_dir / segment_name(base) for base in list_segments(stream_dir)]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


# -- frames -----------------------------------------------------------------------------

text = st.text(max_size=100)
int64 = st.integers(-(2**63), 2**63 - 1)
records = st.builds(
    Record,
    method=st.sampled_from(METHODS),
    path=text,
    query=st.binary(max_size=300),
    body=st.binary(max_size=300),
    recv_ns=int64,
    addr=text,
    user_agent=text,
    content_type=text,
    forwarded_for=text,
)


@given(records, st.binary(max_size=20), st.binary(max_size=20))
def test_a_record_survives_its_frame(rec: Record, before: bytes, after: bytes) -> None:
    frame = encode_record(rec)
    buffer = before + frame + after
    assert read_frame(buffer, len(before)) == (rec, len(before) + len(frame))


@given(
    st.integers(0, len(METHODS) - 1),
    *[st.binary(max_size=200)] * 3,
    int64,
    *[st.binary(max_size=200)] * 4,
)
def test_raw_bytes_are_kept_verbatim(
    method: int,
    path: bytes,
    query: bytes,
    body: bytes,
    recv_ns: int,
    addr: bytes,
    user_agent: bytes,
    content_type: bytes,
    forwarded_for: bytes,
) -> None:
    """Query and body are the bytes as received; header fields are decoded leniently."""
    frame = encode_frame(
        method, path, query, body, recv_ns, addr, user_agent, content_type, forwarded_for
    )
    decoded = read_frame(frame, 0)
    assert decoded is not None
    rec, end = decoded
    assert end == len(frame)
    assert rec == Record(
        method=METHODS[method],
        path=path.decode("utf-8", "replace"),
        query=query,
        body=body,
        recv_ns=recv_ns,
        addr=addr.decode("utf-8", "replace"),
        user_agent=user_agent.decode("utf-8", "replace"),
        content_type=content_type.decode("utf-8", "replace"),
        forwarded_for=forwarded_for.decode("utf-8", "replace"),
    )


@given(records, st.data())
def test_a_cut_frame_is_incomplete_not_a_record(rec: Record, data: st.DataObject) -> None:
    frame = encode_record(rec)
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    assert read_frame(frame[:cut], 0) is None


@given(records, st.data())
def test_a_flipped_bit_never_reads_as_a_record(rec: Record, data: st.DataObject) -> None:
    frame = bytearray(encode_record(rec))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")
    frame[bit // 8] ^= 1 << (bit % 8)
    try:
        result = read_frame(bytes(frame), 0)
    except CorruptFrame:
        return
    assert result is None  # only a length made larger can look like an unfinished frame
    assert 4 <= bit // 8 < 8  # the length follows the magic


# -- segments and the reader ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.lists(records, min_size=1, max_size=4), min_size=1, max_size=10),
    segment_bytes=st.integers(1, 1500),
)
def test_reading_from_any_record_position_returns_the_suffix(
    batches: list[list[Record]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        writer = SegmentWriter(log_dir / STREAM, segment_bytes=segment_bytes)
        positions = [writer.write_durable(frames(batch)) for batch in batches]
        writer.close()
        reader = LogReader(log_dir)
        entries = list(reader.read(STREAM))

        written = [r for batch in batches for r in batch]
        assert [e.record for e in entries] == written
        assert entries[0].position == 0
        for entry, following in itertools.pairwise(entries):
            assert entry.next_position == following.position
        assert entries[-1].next_position == positions[-1] == reader.size(STREAM)
        assert reader.count(STREAM) == (len(written), positions[-1])
        for i, entry in enumerate(entries):
            assert list(reader.read(STREAM, entry.position)) == entries[i:]
        assert list(reader.read(STREAM, positions[-1])) == []


def test_segments_roll_at_the_size_limit_and_read_as_one_stream(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    frame_size = len(encode_record(record(0)))
    segment_bytes = 3 * frame_size + 1  # four single-record batches per segment
    written = [record(n) for n in range(18)]
    position = write(stream_dir, written[:10], segment_bytes=segment_bytes)
    position = write(stream_dir, written[10:], segment_bytes=segment_bytes)  # reopened

    paths = segments(stream_dir)
    sizes = [p.stat().st_size for p in paths]
    assert sizes == [4 * frame_size] * 4 + [2 * frame_size]
    assert list_segments(stream_dir) == [sum(sizes[:i]) for i in range(len(sizes))]
    assert position == sum(sizes)
    for path in paths:  # every segment holds whole frames only
        assert valid_prefix(path.read_bytes())[0] == path.stat().st_size
    reader = LogReader(tmp_path / "log")
    assert read_all(tmp_path / "log") == written
    assert reader.size(STREAM) == position
    # From a segment boundary, and from inside a later segment.
    assert read_all(tmp_path / "log", 4 * frame_size) == written[4:]
    assert read_all(tmp_path / "log", 9 * frame_size) == written[9:]


def test_a_batch_is_never_split_across_segments(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    writer = SegmentWriter(stream_dir, segment_bytes=100)
    batches = [[record(3 * b + i) for i in range(3)] for b in range(4)]
    for batch in batches:
        writer.write_durable(frames(batch))
    writer.close()
    assert [p.read_bytes() for p in segments(stream_dir)] == [frames(b) for b in batches]


# -- the reader at the end of a stream and in damaged segments ---------------------------


def test_the_reader_stops_at_an_unfinished_last_frame(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    written = [record(n) for n in range(5)]
    position = write(stream_dir, written)
    frame = encode_record(record(5))
    last = segments(stream_dir)[-1]

    append(last, frame[:20])  # a frame the writer is still writing
    assert read_all(tmp_path / "log") == written
    assert LogReader(tmp_path / "log").count(STREAM) == (5, position)

    append(last, frame[20:])
    # Whole now, but no writer has said it is durable: readers do not see it yet.
    assert read_all(tmp_path / "log") == written
    SegmentWriter(stream_dir).close()  # a writer that opens the stream vouches for it
    assert read_all(tmp_path / "log") == [*written, record(5)]


def test_damage_inside_an_earlier_segment_is_skipped_and_reported(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    frame_size = len(encode_record(record(0)))
    written = [record(n) for n in range(9)]
    write(stream_dir, written, segment_bytes=3 * frame_size)
    first = segments(stream_dir)[0]
    data = bytearray(first.read_bytes())
    data[frame_size + FRAME_HEADER.size + 10] ^= 0xFF  # inside the second record's payload
    first.write_bytes(bytes(data))

    told: list[tuple[Damage, bytes]] = []
    reader = LogReader(tmp_path / "log", lambda d, b: told.append((d, b)))
    seen = [e.record for e in reader.read(STREAM)]
    assert seen == written[:1] + written[2:]  # every valid frame, before and after it
    [(damage, damaged)] = told
    assert damage == Damage(STREAM, first.name, frame_size, 2 * frame_size, "checksum mismatch")
    assert damaged == bytes(data[frame_size : 2 * frame_size])
    # Reading from a later segment does not touch the damaged one.
    assert read_all(tmp_path / "log", 3 * frame_size) == written[3:]


# -- recovery of a torn tail ------------------------------------------------------------

FRAME = encode_record(record(99))
TORN_TAILS = {
    "partial header": FRAME[:5],
    "partial frame": FRAME[: len(FRAME) // 2],
    "garbage": b"\xde\xad\xbe\xef not a frame " * 4,
    "damaged last frame": FRAME[:-1] + bytes([FRAME[-1] ^ 1]),
}


@pytest.mark.parametrize("zeros", [b"", bytes(8192)], ids=["end of file", "zeros after"])
@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS.keys())
def test_a_torn_tail_is_truncated_when_the_writer_opens(
    tmp_path: Path, tail: bytes, zeros: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    stream_dir = tmp_path / "log" / STREAM
    frame_size = len(encode_record(record(0)))
    written = [record(n) for n in range(5)]
    position = write(stream_dir, written, segment_bytes=2 * frame_size)
    *earlier, last = segments(stream_dir)
    earlier_bytes = [p.read_bytes() for p in earlier]
    kept = last.stat().st_size
    append(last, tail + zeros)  # and the preallocated zeros a crash leaves after it
    assert read_all(tmp_path / "log") == written  # the reader stops at the tail, without error

    with caplog.at_level(logging.WARNING, logger="tally.log"):
        writer = SegmentWriter(stream_dir, segment_bytes=2 * frame_size)
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert f"log stream {STREAM}: torn tail in {last.name}: truncated {len(tail)} bytes" in message
    [report] = Quarantine(tmp_path, "test").reports()
    assert (report["start"], report["end"]) == (position, position + len(tail) + len(zeros))
    assert (tmp_path / "quarantine" / str(report["file"])).read_bytes() == tail + zeros

    assert last.stat().st_size == kept
    assert writer.position == position
    assert [p.read_bytes() for p in earlier] == earlier_bytes
    more = [record(5), record(6, body=b"Plan=pro")]
    for r in more:
        writer.write_durable(encode_record(r))
    writer.close()
    assert read_all(tmp_path / "log") == written + more
    reader = LogReader(tmp_path / "log")
    assert reader.count(STREAM) == (7, reader.size(STREAM))


def test_preallocated_zeros_are_cut_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a crash leaves after the last synced batch: zeros only (writer.py)."""
    stream_dir = tmp_path / "log" / STREAM
    written = [record(n) for n in range(3)]
    position = write(stream_dir, written)
    [last] = segments(stream_dir)
    append(last, bytes(PREALLOCATE_BYTES))
    assert read_all(tmp_path / "log") == written
    assert LogReader(tmp_path / "log").backlog(STREAM, 0)[0] == 3
    with caplog.at_level(logging.DEBUG, logger="tally.log"):
        writer = SegmentWriter(stream_dir)
    assert caplog.records == []
    assert last.stat().st_size == position
    writer.write_durable(encode_record(record(3)))
    writer.close()
    assert read_all(tmp_path / "log") == [*written, record(3)]


def test_the_segment_being_written_is_preallocated_and_cut_back(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    writer = SegmentWriter(stream_dir)
    frame = encode_record(record(0))
    position = writer.write_durable(frame)
    [segment] = segments(stream_dir)
    assert segment.stat().st_size >= PREALLOCATE_BYTES  # zeros ahead of the frames
    assert segment.read_bytes()[position:] == bytes(segment.stat().st_size - position)
    assert read_all(tmp_path / "log") == [record(0)]  # readers stop at the zeros
    assert LogReader(tmp_path / "log").count(STREAM) == (1, position)
    writer.close()
    assert segment.stat().st_size == position  # a closed segment ends at its last frame


def test_preallocating_ahead_keeps_half_a_chunk_of_zeros(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    writer = SegmentWriter(stream_dir)
    position = writer.write_durable(encode_record(record(0)))
    [segment] = segments(stream_dir)
    allocated = segment.stat().st_size
    writer.preallocate_ahead()  # plenty left: nothing to do
    assert segment.stat().st_size == allocated
    body = b"x" * (allocated - position - PREALLOCATE_BYTES // 4 - 200)
    position = writer.write_durable(encode_record(record(1, body=body)))
    assert segment.stat().st_size == allocated  # it fitted in what was zero-filled
    writer.preallocate_ahead()  # about a quarter of a chunk left: one more chunk
    assert segment.stat().st_size == position + PREALLOCATE_BYTES
    assert segment.read_bytes()[position:] == bytes(PREALLOCATE_BYTES)
    writer.close()
    assert read_all(tmp_path / "log") == [record(0), record(1, body=body)]


def test_a_clean_stream_reopens_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stream_dir = tmp_path / "log" / STREAM
    position = write(stream_dir, [record(n) for n in range(3)])
    with caplog.at_level(logging.DEBUG, logger="tally.log"):
        writer = SegmentWriter(stream_dir)
    writer.close()
    assert writer.position == position
    assert caplog.records == []


# -- one writer per stream --------------------------------------------------------------


def test_a_second_writer_on_a_stream_is_refused(tmp_path: Path) -> None:
    stream_dir = tmp_path / "log" / STREAM
    writer = SegmentWriter(stream_dir)
    writer.write_durable(encode_record(record(0)))
    last = segments(stream_dir)[-1]
    append(last, FRAME[:10])  # as if a write were in progress: not a tail to cut
    before = last.read_bytes()

    with pytest.raises(StreamLocked):
        SegmentWriter(stream_dir)
    assert last.read_bytes() == before

    writer.close()
    SegmentWriter(stream_dir).close()  # free again once the first one is closed


# -- a failed write ---------------------------------------------------------------------

_FAILING_WRITER = """
import json, resource, signal, sys
from pathlib import Path
from tally.log.writer import SegmentWriter

args = json.load(sys.stdin)
batches = [bytes.fromhex(b) for b in args["batches"]]
writer = SegmentWriter(Path(args["stream_dir"]))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (args["limit"], resource.RLIM_INFINITY))
result = {"positions": []}
for batch in batches:
    try:
        result["positions"].append(writer.write_durable(batch))
    except OSError as exc:
        result["positions"].append(None)
        result["errno"] = exc.errno
        result["failed"] = writer.failed.errno if writer.failed else None
        result["position_after_failure"] = writer.position
        result["file_after_failure"] = Path(writer.stream_dir, "0" * 20 + ".seg").stat().st_size
result["failed_at_end"] = writer.failed and writer.failed.errno
writer.close()
json.dump(result, sys.stdout)
"""


def test_a_failed_write_is_cut_back_and_the_stream_goes_on(tmp_path: Path) -> None:
    """A file size limit makes the second batch fail half-way through (EFBIG)."""
    stream_dir = tmp_path / "log" / STREAM
    first = [record(n) for n in range(3)]
    failing = [record(n) for n in range(3, 13)]
    after = [record(13)]
    limit = len(frames(first)) + len(frames(failing)) // 2
    assert len(frames(first)) + len(frames(after)) <= limit
    child = subprocess.run(
        [sys.executable, "-c", _FAILING_WRITER],
        input=json.dumps(
            {
                "stream_dir": str(stream_dir),
                "limit": limit,
                "batches": [frames(b).hex() for b in (first, failing, after)],
            }
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(child.stdout)

    assert result["errno"] == errno.EFBIG
    assert result["failed"] == errno.EFBIG  # the writer remembers why, for /healthz
    assert result["positions"] == [
        len(frames(first)),
        None,
        len(frames(first)) + len(frames(after)),
    ]
    assert result["position_after_failure"] == len(frames(first))
    assert result["file_after_failure"] == len(frames(first))  # the half batch is cut off
    assert result["failed_at_end"] is None  # the next good write clears it
    assert segments(stream_dir)[-1].read_bytes() == frames(first) + frames(after)
    assert read_all(tmp_path / "log") == first + after


@pytest.mark.parametrize("segment_bytes", [1 << 20, 200])
def test_backlog_counts_the_records_from_a_position_and_dates_the_first(
    tmp_path: Path, segment_bytes: int
) -> None:
    written = [record(n) for n in range(7)]
    write(tmp_path / "log" / STREAM, written, segment_bytes=segment_bytes)
    reader = LogReader(tmp_path / "log")
    entries = list(reader.read(STREAM))
    for index, entry in enumerate(entries):
        assert reader.backlog(STREAM, entry.position) == (7 - index, written[index].recv_ns)
    assert reader.backlog(STREAM, entries[-1].next_position) == (0, None)
    assert all(  # and first_received agrees, reading one frame header each time
        reader.first_received(STREAM, entry.position) == written[index].recv_ns
        for index, entry in enumerate(entries)
    )
    assert reader.first_received(STREAM, entries[-1].next_position) is None


def test_first_received_stops_at_the_durable_end_of_the_segment_being_written(
    tmp_path: Path,
) -> None:
    writer = SegmentWriter(tmp_path / "log" / STREAM)
    try:
        writer.write_durable(encode_record(record(0)))
        end = writer.position
        # The frames are followed by preallocated zeros: nothing there yet.
        assert (tmp_path / "log" / STREAM / segment_name(0)).stat().st_size > end
        assert LogReader(tmp_path / "log").first_received(STREAM, end) is None
        writer.write_durable(encode_record(record(1)))
        assert LogReader(tmp_path / "log").first_received(STREAM, end) == record(1).recv_ns
    finally:
        writer.close()


def test_the_writer_counts_its_writes_and_their_records_in_durable(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path / "log" / STREAM)
    try:
        assert LogReader(tmp_path / "log").write_counts() == (0, 0)
        writer.write_durable(frames([record(0), record(1), record(2)]), 3)
        writer.write_durable(encode_record(record(3)))
        assert LogReader(tmp_path / "log").write_counts() == (2, 4)
        assert durable_position(tmp_path / "log" / STREAM) == writer.position
    finally:
        writer.close()
    SegmentWriter(tmp_path / "log" / STREAM).close()  # a new writer counts from zero
    assert LogReader(tmp_path / "log").write_counts() == (0, 0)
    assert durable_position(tmp_path / "log" / STREAM) == len(frames([record(n) for n in range(4)]))


def test_a_write_into_a_deleted_segment_is_not_durable(tmp_path: Path) -> None:
    """What lands in a segment someone deleted is in no file anyone can read:
    that write fails (its records get 503, never 200), and so does every later
    one until a restart starts a new segment."""
    stream_dir = tmp_path / "log" / STREAM
    writer = SegmentWriter(stream_dir)
    writer.write_durable(frames([record(0)]))
    for segment in segments(stream_dir):
        segment.unlink()
    with pytest.raises(OSError, match="deleted"):
        writer.write_durable(frames([record(1)]))
    assert writer.broken
    with pytest.raises(OSError, match="unusable until restart"):
        writer.write_durable(frames([record(2)]))
    writer.close()
