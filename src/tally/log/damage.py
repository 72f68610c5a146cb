"""Damage in the log: finding it, and keeping it aside (DESIGN §2).

A *torn tail* is an incomplete last frame that a writer began after its last
sync: it was never acknowledged, and its writer cuts it when it reopens the
stream. *Damage* is anything else that is not a frame where frames should be: a
frame failing its checksum or length check, zeros, or bytes missing, below a
position the writer had made durable or with valid frames after it. Damage is
never repaired by cutting: readers go on at the next valid frame
(:func:`tally.log.record.resync`), and the damaged bytes are copied to
``DATA_DIR/quarantine/`` with a report, so that an operator can see what was
lost and nothing valid ever is (docs/log-format.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tally.log.record import MAGIC, CorruptFrame, check_frame, resync
from tally.replace import replace_file

log = logging.getLogger("tally.log")

QUARANTINE_DIR = "quarantine"
#: A quarantined range keeps at most this many of its bytes (the report says
#: how many it had): damage is usually a few bytes, a lost file can be 64 MiB.
KEEP_BYTES = 64 * 1024 * 1024


class Damage(NamedTuple):
    """A damaged range of a stream, in stream offsets (``end`` excluded)."""

    stream: str
    segment: str  # the file holding its first byte ("" when no file does)
    start: int
    end: int
    reason: str


class Span(NamedTuple):
    """A piece of a segment: a valid frame (``reason`` is ``None``) or not."""

    start: int
    end: int
    reason: str | None


def walk(data: bytes, start: int = 0, *, legacy: bool = False) -> Iterator[Span]:
    """The frames and damaged ranges of ``data`` from ``start``, in order.

    A range after which no valid frame follows is the last span, up to the end
    of ``data`` (zeros, an incomplete frame, or garbage); whether it is a torn
    tail or damage is the caller's to say, from where the stream was durable.
    """
    pos = start
    while pos < len(data):
        try:
            end = check_frame(data, pos)
            reason = None if end is not None else "incomplete frame"
        except CorruptFrame as exc:
            end, reason = None, str(exc)
        if end is not None:
            yield Span(pos, end, None)
            pos = end
            continue
        if not any(data[pos : pos + 4]):
            reason = "zeros where a frame should be"
        after = resync(data, pos, legacy=legacy)
        yield Span(pos, len(data) if after is None else after, reason)
        if after is None:
            return
        pos = after


def is_legacy(data: bytes) -> bool:
    """Whether a segment begins with a format-1 frame (Tally before log format
    2); only such a segment is searched for frames without the magic."""
    return bool(data) and not data.startswith(MAGIC) and any(data[:4])


class Quarantine:
    """Keeps damaged ranges in ``DATA_DIR/quarantine/``: the bytes, and a JSON
    report beside them. Each range is kept once, whoever meets it first (a
    collector opening its stream, the processor, ``tally check --repair``)."""

    def __init__(self, data_dir: Path, found_by: str) -> None:
        self.dir = data_dir / QUARANTINE_DIR
        self.found_by = found_by

    def keep(self, damage: Damage, data: bytes, *, quiet: bool = False) -> bool:
        """Keep ``damage`` (its bytes are ``data``, fewer when some are
        missing); ``False`` if it was kept before. ``quiet``: the caller logs."""
        name = f"{damage.stream}-{damage.start:020d}-{damage.end:020d}"
        report_path = self.dir / f"{name}.json"
        if report_path.exists():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        kept = data[:KEEP_BYTES]
        report = {
            **damage._asdict(),
            "length": damage.end - damage.start,
            "bytes_kept": len(kept),
            "file": f"{name}.bin",
            "found_by": self.found_by,
            "found_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # The bytes first, then the report: a report exists only beside its
        # whole bytes, and a kill in between is redone by the next finder.
        replace_file(self.dir / f"{name}.bin", kept, sync=True)
        replace_file(report_path, (json.dumps(report, indent=2) + "\n").encode(), sync=True)
        if quiet:
            return True
        log.warning(
            "log stream %s: damage in %s at stream offsets %d-%d (%d bytes): %s; valid frames "
            "before and after it are kept, the damaged bytes are in %s (report: %s)",
            damage.stream,
            damage.segment or "(no segment file)",
            damage.start,
            damage.end,
            damage.end - damage.start,
            damage.reason,
            self.dir / report["file"],
            report_path.name,
        )
        return True

    def reports(self) -> list[dict[str, object]]:
        """Every report kept, oldest range first."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return found
