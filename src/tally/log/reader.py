"""Reading the log: every stream, from any position (DESIGN §2).

The reader never writes to the log. It reads a stream up to where its writer
said it is durable (``DURABLE``); below that every byte was acknowledged, so
anything that is not a valid frame there is damage: the reader reports it (to
``on_damage``, which the processor points at the quarantine) and goes on at the
next valid frame (:mod:`tally.log.damage`). Past the durable end, an incomplete
frame is a tail being written, or a torn one its writer will cut: not a record
yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from tally.log.damage import Damage, is_legacy, walk
from tally.log.record import (
    FRAME_HEADER,
    MAGIC,
    PAYLOAD_TIME,
    CorruptFrame,
    Record,
    read_frame,
)
from tally.log.writer import (
    SEGMENT_SUFFIX,
    durable_counts,
    durable_position,
    list_segments,
    segment_name,
)

_CHUNK = 4 * 1024 * 1024
_NO_FRAME = bytes(4)  # a zero length (format 1) or no magic (format 2): no frame here
_HEAD = FRAME_HEADER.size + PAYLOAD_TIME.size

#: Told of each damaged range met while reading, with the bytes it holds.
OnDamage = Callable[[Damage, bytes], object]


class Entry(NamedTuple):
    """A record and where it lies: ``next_position`` is where reading resumes."""

    stream: str
    position: int
    next_position: int
    record: Record


def ignore_damage(damage: Damage, data: bytes) -> None:
    """For readers that only look (status, benchmarks): damage is the
    processor's and ``tally check``'s to report."""


class LogReader:
    def __init__(self, log_dir: Path, on_damage: OnDamage = ignore_damage) -> None:
        self.log_dir = log_dir
        self.on_damage = on_damage

    def streams(self) -> list[str]:
        if not self.log_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.log_dir.iterdir()
            if p.is_dir() and any(p.glob("*" + SEGMENT_SUFFIX))
        )

    def size(self, stream: str) -> int:
        """Stream offset of the end of its last segment (bytes on disk)."""
        bases = list_segments(self.log_dir / stream)
        if not bases:
            return 0
        return bases[-1] + (self.log_dir / stream / segment_name(bases[-1])).stat().st_size

    def durable(self, stream: str) -> int:
        """Stream offset up to which its records are durable."""
        end = durable_position(self.log_dir / stream)
        return self.size(stream) if end is None else end

    def read(
        self, stream: str, position: int = 0, on_damage: OnDamage | None = None
    ) -> Iterator[Entry]:
        """Every durable record of ``stream`` at or after ``position``; damage
        on the way is told to ``on_damage`` (by default the reader's)."""
        stream_dir = self.log_dir / stream
        # The durable end first, then the segments: a writer creates a segment
        # before it says anything in it is durable, so every byte below this
        # end is in a segment listed below.
        end = durable_position(stream_dir)
        told = on_damage or self.on_damage
        bases = list_segments(stream_dir)
        if bases and position < bases[0] and (end is None or position < end):
            # Bytes no segment holds (a deleted file): nothing to read there.
            told(Damage(stream, "", position, bases[0], "no segment file holds these bytes"), b"")
        for index, base in enumerate(bases):
            last = index + 1 == len(bases)
            region_end = bases[index + 1] if not last else end
            if region_end is not None and region_end <= position:
                continue
            path = stream_dir / segment_name(base)
            start = max(position - base, 0)
            stop = None if region_end is None else region_end - base
            yield from self._read_segment(stream, path, base, start, stop, told)

    def _read_segment(
        self, stream: str, path: Path, base: int, offset: int, stop: int | None, told: OnDamage
    ) -> Iterator[Entry]:
        """The records of one segment from ``offset`` up to ``stop`` (the next
        segment's base, or the durable end; ``None`` when no writer said where
        the stream is durable: then an incomplete frame or zeros end it)."""
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:  # removed since it was listed
            if stop is not None and stop > offset:
                told(Damage(stream, path.name, base + offset, base + stop, "segment file missing"),
                     b"")  # fmt: skip
            return
        with f:
            f.seek(offset)
            buffer = b""
            buffer_start = offset
            while True:
                size = _CHUNK if stop is None else min(_CHUNK, stop - buffer_start - len(buffer))
                chunk = f.read(size) if size > 0 else b""
                if not chunk:
                    break
                buffer = buffer + chunk if buffer else chunk
                pos = 0
                while True:
                    try:
                        frame = read_frame(buffer, pos)
                    except CorruptFrame:
                        frame = None
                        if stop is not None or buffer[pos : pos + 4] != _NO_FRAME:
                            # Damage (or a torn tail nobody vouched for): the slow path.
                            yield from self._after_damage(
                                stream, path, base, buffer_start + pos, stop, told
                            )
                            return
                        return  # no durable end known: zeros end the frames
                    if frame is None:
                        break
                    record, after = frame
                    yield Entry(
                        stream, base + buffer_start + pos, base + buffer_start + after, record
                    )
                    pos = after
                buffer = buffer[pos:]
                buffer_start += pos
            if buffer and stop is not None:  # an incomplete frame below the durable end
                yield from self._after_damage(stream, path, base, buffer_start, stop, told)
            elif stop is not None and buffer_start < stop:  # the file ends short of it
                told(Damage(stream, path.name, base + buffer_start, base + stop,
                            f"segment ends {stop - buffer_start} bytes early"), b"")  # fmt: skip

    def _after_damage(
        self,
        stream: str,
        path: Path,
        base: int,
        offset: int,
        stop: int | None,
        told: OnDamage,
    ) -> Iterator[Entry]:
        """The rest of a segment from a damaged frame at ``offset``: every valid
        frame after it is read, every damaged range told."""
        with open(path, "rb") as whole:
            data = whole.read() if stop is None else whole.read(stop)
        covered = offset
        for span in walk(data, offset, legacy=is_legacy(data)):
            if span.reason is None:
                frame = read_frame(data, span.start)
                assert frame is not None  # walk checked it
                yield Entry(stream, base + span.start, base + span.end, frame[0])
            elif span.end < len(data) or stop is not None:
                end, reason = span.end, span.reason
                if end == len(data) and stop is not None and stop > end:
                    end, reason = stop, f"{reason}; the segment ends {stop - end} bytes early"
                told(Damage(stream, path.name, base + span.start, base + end, reason),
                     data[span.start : span.end])  # fmt: skip
                covered = end
                continue
            else:
                return  # past every durable end we know of: a tail, not damage yet
            covered = span.end
        if stop is not None and covered < stop:  # the file ends short of where it should
            told(Damage(stream, path.name, base + covered, base + stop,
                        f"segment ends {stop - covered} bytes early"), b"")  # fmt: skip

    def _unread(self, stream: str, position: int) -> Iterator[tuple[Path, int, int]]:
        """Where the durable records at or after ``position`` lie: per segment,
        its path, the offset in it and the length to read."""
        stream_dir = self.log_dir / stream
        end = self.durable(stream)
        bases = list_segments(stream_dir)
        for index, base in enumerate(bases):
            stop = min(bases[index + 1] if index + 1 < len(bases) else end, end)
            if stop > position and base < end:
                start = max(position - base, 0)
                yield stream_dir / segment_name(base), start, stop - base - start

    def backlog(self, stream: str, position: int) -> tuple[int, int | None]:
        """How many durable records lie at or after ``position``, and the receive
        time of the first; reads only frame headers, so it is cheap."""
        count, first_ns = 0, None
        for path, start, size in self._unread(stream, position):
            data = _read_at(path, start, size)  # only the part not applied yet
            offset = 0
            while offset + _HEAD <= len(data):
                magic, length, _ = FRAME_HEADER.unpack_from(data, offset)
                if magic != MAGIC:  # a format-1 frame, or damage: read it properly
                    return self._count_slowly(stream, position)
                if first_ns is None:
                    first_ns = PAYLOAD_TIME.unpack_from(data, offset + FRAME_HEADER.size)[2]
                offset += FRAME_HEADER.size + length
                count += 1
            if offset != len(data):  # the frames did not end where the durable part does
                return self._count_slowly(stream, position)
        return count, first_ns

    def _count_slowly(self, stream: str, position: int) -> tuple[int, int | None]:
        count, first_ns = 0, None
        for entry in self.read(stream, position, ignore_damage):
            if first_ns is None:
                first_ns = entry.record.recv_ns
            count += 1
        return count, first_ns

    def first_received(self, stream: str, position: int) -> int | None:
        """The receive time (ns) of the first durable record at or after
        ``position``, or ``None`` when there is none; reads one frame header."""
        for path, start, size in self._unread(stream, position):
            head = _read_at(path, start, min(size, _HEAD))
            if len(head) == _HEAD and head.startswith(MAGIC):
                recv_ns: int = PAYLOAD_TIME.unpack_from(head, FRAME_HEADER.size)[2]
                return recv_ns
            return self._count_slowly(stream, position)[1]  # format 1, or damage
        return None

    def write_counts(self) -> tuple[int, int]:
        """Writes, and the records they held, that the streams' writers have made
        durable since each started, summed over the streams."""
        writes = records = 0
        for stream in self.streams():
            w, r = durable_counts(self.log_dir / stream)
            writes, records = writes + w, records + r
        return writes, records

    def count(self, stream: str, position: int = 0) -> tuple[int, int]:
        """How many records lie at or after ``position``, and where they end."""
        n, end = 0, position
        for entry in self.read(stream, position):
            n += 1
            end = entry.next_position
        return n, end


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
