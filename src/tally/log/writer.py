"""Appending to one log stream, durably.

A stream is a directory of segment files named by the stream offset of their
first byte (``00000000000000000000.seg``), so a record's position is one
integer. Only one process appends to a stream at a time (an ``flock`` on
``LOCK``). On open, the last segment is scanned: a torn tail, which only a crash
can leave past the last sync, is cut (and kept in the quarantine); damage below a
position that was durable or applied is left in place for readers to skip and
report, and the writer never writes below such a position (DESIGN §2,
:mod:`tally.log.damage`).

``write_durable`` is called from one thread at a time (the collector's commit
thread): it appends a batch of frames and returns only once they are on disk,
which is what lets the collector answer 200 (SPEC §1). Segments are opened with
``O_DSYNC``: each ``pwrite`` returns after the data it wrote is durable, as if an
``fdatasync`` followed it, in one system call instead of two. For the commit
thread that is one release of the GIL per batch instead of two, and each time it
takes the GIL back it may have to wait for the event loop (docs/benchmarks.md).

The segment being written is **preallocated**: extended by zero-filled, synced
chunks ahead of the frames (PostgreSQL does the same with its WAL). An
``fdatasync`` that changes a file's size also commits the file system's journal;
one that only overwrites allocated blocks does not, and takes a third less time
here, which the collector's round trip (request, sync, answer) feels at once
(docs/benchmarks.md). Readers take a zero frame header as the end of the data;
a segment is cut back to its frames when it is closed or rolled over, and the
zeros a crash leaves are cut when the writer reopens the stream.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import mmap
import os
import struct
from pathlib import Path

from tally.errors import Unavailable
from tally.log.damage import Damage, Quarantine, is_legacy, walk
from tally.log.record import LOG_FORMAT, CorruptFrame, read_frame
from tally.permissions import FILE_MODE
from tally.replace import replace_file

log = logging.getLogger("tally.log")

SEGMENT_SUFFIX = ".seg"
#: The stream position up to which records are durable, as 8 little-endian
#: bytes, rewritten after every sync (not itself synced: after a crash it can
#: only lag, and the writer rewrites it when it recovers the stream). Readers
#: stop there, so they never apply a record whose write may yet fail and be cut
#: back, nor one a power loss could take away. The writer updates it through a
#: shared memory map: a store to memory, not a system call, per batch. Two more
#: counters follow, from the writer's start: its writes and the records they
#: held (records per write tell how many requests wait for each sync, which the
#: processor reads as load: tally.pacing).
DURABLE_FILE = "DURABLE"
#: Every write to a segment is durable when it returns (see above).
_SEGMENT_FLAGS = os.O_WRONLY | os.O_DSYNC
_POSITION = struct.Struct("<Q")
_DURABLE = struct.Struct("<QQQ")  # position, writes, records
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
#: How far ahead of the frames a segment is zero-filled, at least.
PREALLOCATE_BYTES = 4 * 1024 * 1024
_ZEROS = memoryview(bytes(PREALLOCATE_BYTES))  # sliced without copying


#: In the log directory: the log format its frames use (record.LOG_FORMAT).
FORMAT_FILE = "FORMAT"
#: In the log directory: the positions the store has applied, per stream, as
#: JSON, rewritten by the processor (not synced: a hint). A writer never writes
#: below them, even when the stream's own files were damaged or removed.
APPLIED_FILE = "APPLIED"


def check_format(log_dir: Path) -> None:
    """Refuse a log written by a newer Tally; mark a new one with its format."""
    path = log_dir / FORMAT_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        log_dir.mkdir(parents=True, exist_ok=True)
        replace_file(path, f"{LOG_FORMAT}\n".encode())
        return
    except OSError as exc:
        raise Unavailable(f"cannot read {path}: {exc.strerror}", code="log_unreadable") from exc
    if not text.isdigit():
        raise Unavailable(f"{path} should hold the log's format number, not {text[:20]!r}: "
                          f"write {LOG_FORMAT} into it if this log is Tally's",
                          code="log_unreadable")  # fmt: skip
    if int(text) > LOG_FORMAT:
        raise Unavailable(f"the log in {log_dir} is of format {text}, from a newer Tally; this one "
                          f"reads formats up to {LOG_FORMAT}: run the newer Tally",
                          code="log_too_new")  # fmt: skip


def read_applied(log_dir: Path) -> dict[str, int]:
    """The positions the processor last said the store has applied."""
    try:
        found = json.loads((log_dir / APPLIED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, int)}


def write_applied(log_dir: Path, positions: dict[str, int]) -> None:
    replace_file(log_dir / APPLIED_FILE, json.dumps(positions, sort_keys=True).encode())


def segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


def list_segments(stream_dir: Path) -> list[int]:
    """Base offsets of the stream's segments, ascending."""
    bases = []
    for path in stream_dir.glob("*" + SEGMENT_SUFFIX):
        try:
            bases.append(int(path.name.removesuffix(SEGMENT_SUFFIX)))
        except ValueError:
            continue
    return sorted(bases)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_position(stream_dir: Path) -> int | None:
    """Where the stream's writer last said its records are durable; ``None``
    when no writer has said (the reader then trusts the whole stream)."""
    try:
        data = (stream_dir / DURABLE_FILE).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _POSITION.size:
        return None
    position: int = _POSITION.unpack_from(data)[0]
    return position


def durable_record(position: int) -> bytes:
    """The bytes of a ``DURABLE`` file saying the stream is durable to
    ``position`` (no writes counted: a copy's, tally.backup)."""
    return _DURABLE.pack(position, 0, 0)


def durable_counts(stream_dir: Path) -> tuple[int, int]:
    """How many writes the stream's writer has made durable since it started,
    and how many records they held ((0, 0) when it has not said)."""
    try:
        data = (stream_dir / DURABLE_FILE).read_bytes()
    except FileNotFoundError:
        return 0, 0
    if len(data) < _DURABLE.size:
        return 0, 0
    _, writes, records = _DURABLE.unpack_from(data)
    return writes, records


def valid_prefix(data: bytes) -> tuple[int, int]:
    """Length of the longest prefix of whole, valid frames, and their count."""
    offset = count = 0
    while offset < len(data):
        try:
            frame = read_frame(data, offset)
        except CorruptFrame:
            break
        if frame is None:
            break
        offset = frame[1]
        count += 1
    return offset, count


class StreamLocked(RuntimeError):
    """Another process is appending to this stream."""


class SegmentWriter:
    """The appending end of one stream."""

    def __init__(self, stream_dir: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.stream_dir = stream_dir
        self.segment_bytes = segment_bytes
        stream_dir.mkdir(parents=True, exist_ok=True)
        check_format(stream_dir.parent)
        self._lock_fd = os.open(stream_dir / "LOCK", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise StreamLocked(f"{stream_dir} is in use by another process") from exc
        known_durable = durable_position(stream_dir)  # before this writer rewrites it
        self._durable_fd = os.open(stream_dir / DURABLE_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if os.fstat(self._durable_fd).st_size != _DURABLE.size:
            os.ftruncate(self._durable_fd, _DURABLE.size)
        self._durable = mmap.mmap(self._durable_fd, _DURABLE.size)
        self._writes = self._records = 0
        # Where this stream was durable or applied: nothing at or below it may
        # be cut, and nothing is ever written below it.
        floor = max(known_durable or 0, read_applied(stream_dir.parent).get(stream_dir.name, 0))
        bases = list_segments(stream_dir)
        if not bases:
            if floor:
                log.error(
                    "log stream %s: no segment file left, though the stream was durable up to "
                    "%d: its records go on from there",
                    stream_dir.name,
                    floor,
                )
            self._base = floor
            self._fd = self._create_segment(floor)
            self._size = 0
        else:
            self._base = bases[-1]
            self._fd = os.open(stream_dir / segment_name(self._base), _SEGMENT_FLAGS)
            self._size = self._recover_tail(floor)
        self._allocated = self._size  # the file's length: frames, then zeros
        self.failed: OSError | None = None
        self._broken: OSError | None = None
        self._publish()

    @property
    def broken(self) -> bool:
        """Whether the stream refuses writes until its collector restarts."""
        return self._broken is not None

    @property
    def position(self) -> int:
        """Stream offset just past the last durable record."""
        return self._base + self._size

    def _create_segment(self, base: int) -> int:
        path = self.stream_dir / segment_name(base)
        fd = os.open(path, _SEGMENT_FLAGS | os.O_CREAT | os.O_EXCL, FILE_MODE)
        fsync_dir(self.stream_dir)
        return fd

    def _recover_tail(self, floor: int) -> int:
        """Scan the newest segment; the length to append at.

        Bytes past ``floor`` after the last valid frame are a torn tail: never
        synced, never acknowledged, cut (and kept in the quarantine unless they
        are the preallocated zeros). Anything else that is not a frame is damage
        and stays where it is, for readers to skip and report. If the segment
        is shorter than ``floor`` (a disk lost its end), it is left as it is and
        the stream goes on in a new segment at ``floor``.
        """
        path = self.stream_dir / segment_name(self._base)
        data = path.read_bytes()
        quarantine = Quarantine(self.stream_dir.parent.parent, "collector")
        spans = list(walk(data, legacy=is_legacy(data)))
        frames_end = max((s.end for s in spans if s.reason is None), default=0)
        keep = max(frames_end, floor - self._base)
        lost = f"the segment ends {keep - len(data)} bytes before the position it was durable to"
        for span in spans:
            if span.reason is None or span.start >= keep:
                continue
            end, reason = min(span.end, keep), span.reason
            if span.end == len(data) < keep:
                end, reason = keep, f"{reason}; {lost}"
            damage = Damage(
                self.stream_dir.name, path.name, self._base + span.start, self._base + end, reason
            )
            quarantine.keep(damage, data[span.start : span.end])
        if keep > len(data):
            if frames_end == len(data):  # no damaged span reached the end: only bytes missing
                quarantine.keep(Damage(self.stream_dir.name, path.name, self._base + len(data),
                                       self._base + keep, lost), b"")  # fmt: skip
            os.close(self._fd)
            self._base += keep
            self._fd = self._create_segment(self._base)
            return 0
        tail = data[keep:]
        if tail.strip(b"\0"):
            # A crash can only tear the batch being written; the bytes are kept
            # anyway, since a disk's damage at the very end looks the same.
            quarantine.keep(Damage(self.stream_dir.name, path.name, self._base + keep,
                                   self._base + len(data), "torn tail: written after the last "
                                   "sync, never acknowledged; cut"), tail, quiet=True)  # fmt: skip
            log.warning(
                "log stream %s: torn tail in %s: truncated %d bytes at offset %d (written after "
                "the last sync, so never acknowledged; kept in the quarantine)",
                self.stream_dir.name,
                path.name,
                len(tail.rstrip(b"\0")),
                keep,
            )
        if keep < len(data):  # a torn tail, or the zeros a crash left ahead of the frames
            os.truncate(path, keep)
            os.fsync(self._fd)
            fsync_dir(self.stream_dir)
        return keep

    def write_durable(self, data: bytes, records: int = 1) -> int:
        """Append whole frames (``records`` of them) and make them durable; the
        new stream position.

        On failure the segment is cut back to its last durable length, so a
        half-written batch never precedes later records, and the error is raised:
        the caller answers 503 for every request of the batch (SPEC §1).
        """
        if self._broken is not None:
            raise OSError(self._broken.errno, f"log stream unusable until restart: {self._broken}")
        if self._size >= self.segment_bytes:
            self._roll()
        view = memoryview(data)
        written = 0
        try:
            if self._size + len(data) > self._allocated:
                self._preallocate(self._size + len(data))
            while written < len(data):  # O_DSYNC: durable when pwrite returns
                written += os.pwrite(self._fd, view[written:], self._size + written)
            if os.fstat(self._fd).st_nlink == 0:
                # Someone deleted the segment (or the data directory) under us: what
                # we wrote is in a file nobody can read again. Not acknowledged
                # (503), and no later write either: a restart makes a new segment.
                self._broken = OSError(errno.ENOENT, f"log segment deleted: {self.stream_dir}")
                log.error("log stream %s: its segment was deleted while open; refusing "
                          "writes until restart", self.stream_dir.name)  # fmt: skip
                raise self._broken
        except OSError as exc:
            self.failed = exc
            if self._broken is None:
                self._cut_back()
            raise
        self.failed = None
        self._size += len(data)
        self._writes += 1
        self._records += records
        self._publish()
        return self.position

    def preallocate_ahead(self) -> None:
        """Zero-fill the next chunk now if less than half of one is left: the
        commit thread calls this after a batch's answers are on their way, so
        that the zero-fill seldom holds up a batch (failures are left for the
        next write, which retries and answers 503 if it must)."""
        headroom = self._allocated - self._size
        if (
            self._broken is None
            and self._size < self.segment_bytes
            and (headroom < PREALLOCATE_BYTES // 2)
        ):
            with contextlib.suppress(OSError):
                self._preallocate(self._size)

    def _preallocate(self, needed: int) -> None:
        """Zero-fill the segment up to ``needed`` bytes and a chunk beyond,
        synced: later syncs then change no file size. Where the chunk does not
        fit (a nearly full disk, a file size limit), only ``needed``; where that
        does not either, the batch fails here and gets its 503."""
        try:
            self._zero_fill(needed + PREALLOCATE_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            self._zero_fill(needed)

    def _zero_fill(self, end: int) -> None:
        offset = self._allocated
        while offset < end:  # O_DSYNC: synced when pwrite returns
            offset += os.pwrite(self._fd, _ZEROS[: end - offset], offset)
        self._allocated = end

    def _publish(self) -> None:
        """Tell readers how far the stream is durable (see ``DURABLE_FILE``)."""
        _DURABLE.pack_into(self._durable, 0, self.position, self._writes, self._records)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            os.fdatasync(self._fd)
            self._allocated = self._size
        except OSError as exc:
            # Later records must not follow a half-written batch: refuse every
            # write (503) until a restart recovers the tail.
            self._broken = exc
            log.error("log stream %s: could not cut back a failed write, refusing writes "
                      "until restart: %s", self.stream_dir.name, exc)  # fmt: skip

    def _roll(self) -> None:
        self._cut_to_frames()
        os.fsync(self._fd)  # before the next segment exists: only the last may end in zeros
        new_base = self._base + self._size
        fd = self._create_segment(new_base)
        os.close(self._fd)
        self._fd, self._base, self._size, self._allocated = fd, new_base, 0, 0

    def _cut_to_frames(self) -> None:
        """Drop the preallocated zeros: a segment not being written ends at its
        last frame."""
        if os.fstat(self._fd).st_size > self._size:  # (a failed zero-fill may have grown it)
            os.ftruncate(self._fd, self._size)
        self._allocated = self._size

    def close(self) -> None:
        try:
            if self._broken is None:
                self._cut_to_frames()
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
        finally:
            with contextlib.suppress(BufferError, ValueError):
                self._durable.close()
            for fd in (self._fd, self._durable_fd, self._lock_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
