"""Taking a backup: the log up to its durable ends, the catalog, the store's snapshot.

The order is what makes it consistent (tally.backup): the store snapshot
first, then each stream's durable end, then the catalog.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tally.backup.manifest import LOG, File, Stream
from tally.backup.partial import (
    Advance,
    copy_file,
    digest_file,
    ignore,
    write_durable,
)
from tally.backup.snapshot import Snapshot
from tally.errors import Unavailable
from tally.log.reader import LogReader
from tally.log.writer import FORMAT_FILE, fsync_dir, list_segments, segment_name


@dataclass(frozen=True)
class _Piece:
    """Bytes ``[0, length)`` of a segment, to copy."""

    source: Path
    length: int


@dataclass(frozen=True)
class LogPlan:
    """How far each stream is copied, and the segments that holds."""

    ends: dict[str, int]
    pieces: dict[str, list[_Piece]]

    @property
    def bytes(self) -> int:
        return sum(p.length for pieces in self.pieces.values() for p in pieces)


def plan_log(log_dir: Path, applied: dict[str, int]) -> LogPlan:
    """Each stream's segments up to its durable end, read now: after the
    snapshot that has applied ``applied``, so that the copy covers it."""
    reader = LogReader(log_dir)
    ends: dict[str, int] = {}
    pieces: dict[str, list[_Piece]] = {}
    for stream in reader.streams():
        # The durable end first, then the segments: a writer creates a segment
        # before it says that anything in it is durable. The snapshot's position
        # was durable when it was applied; DURABLE lags behind it only after a
        # crash, until the stream's writer recovers it (writer.py).
        end = max(reader.durable(stream), applied.get(stream, 0))
        bases = list_segments(log_dir / stream)
        # Sealed segments whole, the one being written up to the end (it has
        # preallocated zeros beyond; docs/log-format.md).
        pieces[stream] = [
            _Piece(log_dir / stream / segment_name(base), min(after, end) - base)
            for base, after in zip(bases, [*bases[1:], end], strict=True)
            if base < end
        ]
        ends[stream] = end
    missing = sorted(set(applied) - set(ends))
    if missing:
        raise Unavailable(
            f"the store has applied log stream {missing[0]}, which is not in {log_dir} any more",
            code="log_missing",
        )
    return LogPlan(ends, pieces)


def log_format(log_dir: Path) -> int | None:
    """The format the log says its frames are in (``None`` when it does not
    say: a log from before formats were written down)."""
    try:
        text = (log_dir / FORMAT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise Unavailable(f"{log_dir / FORMAT_FILE} holds no format number", code="log_unreadable")
    return int(text)


@dataclass(frozen=True)
class CopiedLog:
    segments: dict[str, list[File]]
    #: Segments that held fewer bytes than their stream says are durable:
    #: damage, which the server reports and reads past (docs/log-format.md).
    #: They are copied as they are, so that the restored log reads as this one.
    short: list[str]


def copy_log(plan: LogPlan, target_log: Path, advance: Advance = ignore) -> CopiedLog:
    """Copy the planned segments into ``target_log``, with a DURABLE file per
    stream that says they are durable to their end; every file synced. (The
    log's FORMAT is in the manifest, and restore writes it; its APPLIED hint is
    left out: it may be ahead of the copy, and a writer never writes below it.)"""
    copied = CopiedLog({}, [])
    target_log.mkdir()
    for stream, pieces in plan.pieces.items():
        stream_dir = target_log / stream
        stream_dir.mkdir()
        files = []
        for piece in pieces:
            done = copy_file(piece.source, stream_dir / piece.source.name, piece.length, advance)
            files.append(File(f"{LOG}/{stream}/{done.path}", done.size, done.sha256))
            if done.size < piece.length:
                advance(piece.length - done.size)
                copied.short.append(
                    f"{piece.source} holds {done.size:,} bytes, not the {piece.length:,} "
                    "that its stream says are durable"
                )
        write_durable(stream_dir, plan.ends[stream])
        fsync_dir(stream_dir)
        copied.segments[stream] = files
    fsync_dir(target_log)
    return copied


def copy_catalog(source: Path, target: Path) -> File | None:
    """A consistent copy of the catalog through SQLite's online backup (the
    server and the CLI may write it meanwhile), as one self-contained file."""
    if not source.exists():
        return None
    try:
        src = sqlite3.connect(source, timeout=10)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")  # no -wal beside the copy
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise Unavailable(f"cannot copy the catalog {source}: {exc}") from exc
    return digest_file(target)


def adopt_store(snapshot: Path, target: Path) -> None:
    """Move the core's snapshot into the backup (a copy when it is on another
    file system)."""
    try:
        snapshot.rename(target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(snapshot, target)
        snapshot.unlink()


def streams(plan: LogPlan, copied: CopiedLog, snapshot: Snapshot | None) -> list[Stream]:
    """The manifest's streams: where each copy ends, and where the snapshot is."""
    applied = snapshot.positions if snapshot else {}
    records = snapshot.records if snapshot else {}
    return [
        Stream(name, end, applied.get(name, 0), records.get(name, 0), tuple(copied.segments[name]))
        for name, end in plan.ends.items()
    ]
