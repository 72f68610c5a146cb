"""Reading the log: every stream, from any position (DESIGN §2).

The reader never writes. It stops at the first incomplete frame of a stream,
which is either a tail being written right now or a torn tail that the writer
will truncate when it next opens the stream; either way it is not a record yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tally.log.record import FRAME_HEADER, PAYLOAD_TIME, CorruptFrame, Record, read_frame
from tally.log.writer import (
    SEGMENT_SUFFIX,
    durable_counts,
    durable_position,
    list_segments,
    segment_name,
)

_CHUNK = 4 * 1024 * 1024
_NO_FRAME = bytes(FRAME_HEADER.size)


class Entry(NamedTuple):
    """A record and where it lies: ``next_position`` is where reading resumes."""

    stream: str
    position: int
    next_position: int
    record: Record


class LogCorrupt(RuntimeError):
    """A frame in the middle of a stream is damaged."""


class LogReader:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

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

    def read(self, stream: str, position: int = 0) -> Iterator[Entry]:
        """Every durable record of ``stream`` at or after ``position``."""
        stream_dir = self.log_dir / stream
        end = durable_position(stream_dir)
        for entry in self._read_all(stream, stream_dir, position, end):
            if end is not None and entry.next_position > end:
                return
            yield entry

    def durable(self, stream: str) -> int:
        """Stream offset up to which its records are durable."""
        end = durable_position(self.log_dir / stream)
        return self.size(stream) if end is None else min(end, self.size(stream))

    def _read_all(
        self, stream: str, stream_dir: Path, position: int, durable: int | None
    ) -> Iterator[Entry]:
        bases = list_segments(stream_dir)
        for index, base in enumerate(bases):
            end = bases[index + 1] if index + 1 < len(bases) else None
            if end is not None and end <= position:
                continue
            start = max(position - base, 0)
            path = stream_dir / segment_name(base)
            # The writer's segment has preallocated zeros past its durable end:
            # never read them (the processor polls here every few ms).
            stop = None if end is not None or durable is None else durable - base
            yield from self._read_segment(stream, path, base, start, end is None, stop)

    def _read_segment(
        self, stream: str, path: Path, base: int, offset: int, is_last: bool, stop: int | None
    ) -> Iterator[Entry]:
        with open(path, "rb") as f:
            f.seek(offset)
            buffer = b""
            buffer_start = offset
            while True:
                size = _CHUNK if stop is None else min(_CHUNK, stop - buffer_start - len(buffer))
                chunk = f.read(size) if size > 0 else b""
                if not chunk:
                    return
                buffer = buffer + chunk if buffer else chunk
                pos = 0
                while True:
                    try:
                        frame = read_frame(buffer, pos)
                    except CorruptFrame as exc:
                        # Damage in the newest segment's last bytes is a torn tail
                        # that its writer truncates on its next start; a zero
                        # header is where its preallocated zeros begin.
                        if is_last and (
                            os.fstat(f.fileno()).st_size <= buffer_start + len(buffer)
                            or buffer[pos : pos + FRAME_HEADER.size] == _NO_FRAME
                        ):
                            return
                        raise LogCorrupt(f"{path} at offset {buffer_start + pos}: {exc}") from exc
                    if frame is None:
                        break
                    record, after = frame
                    yield Entry(
                        stream, base + buffer_start + pos, base + buffer_start + after, record
                    )
                    pos = after
                buffer = buffer[pos:]
                buffer_start += pos

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
            while offset + FRAME_HEADER.size + PAYLOAD_TIME.size <= len(data):
                length = FRAME_HEADER.unpack_from(data, offset)[0]
                if not length:  # preallocated zeros: no frame here (writer.py)
                    break
                if first_ns is None:
                    first_ns = PAYLOAD_TIME.unpack_from(data, offset + FRAME_HEADER.size)[2]
                offset += FRAME_HEADER.size + length
                count += 1
        return count, first_ns

    def first_received(self, stream: str, position: int) -> int | None:
        """The receive time (ns) of the first durable record at or after
        ``position``, or ``None`` when there is none; reads one frame header."""
        for path, start, size in self._unread(stream, position):
            head = _read_at(path, start, min(size, FRAME_HEADER.size + PAYLOAD_TIME.size))
            if len(head) < FRAME_HEADER.size + PAYLOAD_TIME.size or head.startswith(_NO_FRAME):
                return None
            recv_ns: int = PAYLOAD_TIME.unpack_from(head, FRAME_HEADER.size)[2]
            return recv_ns
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
