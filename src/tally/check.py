"""``tally check``: is the log whole, and does the store agree with it?

Reads every segment of every stream (never writes; safe beside a running
server): each frame's CRC and lengths, that each segment begins where the one
before it ends, the newest up to its durable end. Then the store against the
log: each stream's applied position exists (at most the durable end) and falls
on a frame boundary, and the records the store counts for the stream are the
frames below that position. Damage found is told the way readers tell it
(:mod:`tally.log.damage`); ``--repair`` keeps it in the quarantine and re-derives
the store from the log where they disagree (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tally.log.damage import Damage, Quarantine, is_legacy, walk
from tally.log.reader import LogReader
from tally.log.writer import durable_position, list_segments, segment_name


@dataclass(frozen=True)
class Applied:
    """What the store says of one stream."""

    position: int
    records: int


@dataclass
class StreamReport:
    name: str
    segments: int = 0
    records: int = 0
    bytes: int = 0
    durable: int = 0
    damage: list[Damage] = field(default_factory=list)
    #: Ranges read as damage that are already in the quarantine.
    known_damage: list[Damage] = field(default_factory=list)
    #: Where the store disagrees with the log, in words.
    disagreements: list[str] = field(default_factory=list)
    #: Whether re-deriving the store from the log would lose nothing it holds.
    derivable: bool = True
    tail: int = 0  # bytes past the durable end not yet cut (a writer's business)

    @property
    def clean(self) -> bool:
        return not self.damage and not self.disagreements

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.name,
            "segments": self.segments,
            "records": self.records,
            "bytes": self.bytes,
            "durable": self.durable,
            "damage": [d._asdict() for d in self.damage],
            "known_damage": [d._asdict() for d in self.known_damage],
            "disagreements": self.disagreements,
        }


@dataclass
class Report:
    streams: list[StreamReport]

    @property
    def clean(self) -> bool:
        return all(s.clean for s in self.streams)

    def to_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "streams": [s.to_json() for s in self.streams]}


def check_log(
    data_dir: Path,
    applied: dict[str, Applied],
    progress: Callable[[int], None] = lambda _: None,
) -> Report:
    """Check every stream of ``data_dir``'s log against ``applied`` (the
    store's positions); ``progress`` is told the bytes read as they are."""
    log_dir = data_dir / "log"
    quarantine = Quarantine(data_dir, "tally check")
    known = {(r["stream"], r["start"], r["end"]) for r in quarantine.reports()}
    names = sorted(p.name for p in log_dir.iterdir() if p.is_dir()) if log_dir.is_dir() else []
    reports = []
    for name in sorted(set(names) | set(applied)):
        report = StreamReport(name)
        _check_stream(log_dir / name, report, applied.get(name), progress)
        for damage in list(report.damage):
            if (damage.stream, damage.start, damage.end) in known:
                report.damage.remove(damage)
                report.known_damage.append(damage)
        reports.append(report)
    return Report(reports)


def total_bytes(data_dir: Path) -> int:
    """What :func:`check_log` reads, for a progress bar."""
    log_dir = data_dir / "log"
    if not log_dir.is_dir():
        return 0
    return sum(p.stat().st_size for p in log_dir.glob("*/*.seg"))


def _check_stream(
    stream_dir: Path,
    report: StreamReport,
    applied: Applied | None,
    progress: Callable[[int], None],
) -> None:
    name = report.name
    durable = durable_position(stream_dir)
    bases = list_segments(stream_dir)
    report.segments = len(bases)
    end = durable if durable is not None else LogReader(stream_dir.parent).size(name)
    report.durable = end
    target = applied.position if applied else -1
    on_boundary = target in (0, end)  # an applied position lies between frames
    frames_below = 0  # valid frames before the applied position
    damaged_below = False  # damage before it: the store may hold what the log lost

    def damaged(damage: Damage) -> None:
        nonlocal damaged_below, on_boundary
        report.damage.append(damage)
        damaged_below = damaged_below or damage.start < target
        on_boundary = on_boundary or damage.end == target

    if bases and bases[0] > 0:
        damaged(Damage(name, "", 0, bases[0], "no segment file holds these bytes"))
    for index, base in enumerate(bases):
        last = index + 1 == len(bases)
        stop = bases[index + 1] - base if not last else end - base
        path = stream_dir / segment_name(base)
        data = path.read_bytes()
        progress(len(data))
        on_boundary = on_boundary or base == target
        if len(data) > stop:
            if last:
                report.tail = len(data) - stop  # zeros ahead, or a tail past the sync
            else:
                report.disagreements.append(
                    f"{path.name} runs {len(data) - stop} bytes into the next segment"
                )
        region = data[:stop] if len(data) > stop else data
        covered = 0
        for start, span_end, reason in _spans(region):
            if reason is None:
                report.records += 1
                report.bytes += span_end - start
                if base + span_end <= target:
                    frames_below += 1
                on_boundary = on_boundary or base + span_end == target
            elif span_end == len(region) and last and durable is None:
                report.tail += span_end - start  # no writer said it is durable: a tail
            else:
                if span_end == len(region):  # and bytes missing after it, if any
                    span_end = max(span_end, stop)  # noqa: PLW2901
                damaged(Damage(name, path.name, base + start, base + span_end, reason))
            covered = span_end
        if covered < stop:
            damaged(Damage(name, path.name, base + covered, base + stop,
                           f"segment ends {stop - covered} bytes early"))  # fmt: skip
    if applied is None:
        return
    if not bases and applied.position:
        report.disagreements.append(
            f"the store has applied {applied.records:,} records up to {applied.position:,}, "
            "but the log has no segment for this stream"
        )
        report.derivable = False
    elif applied.position > end:
        report.disagreements.append(
            f"the store has applied up to {applied.position:,}, past the log's durable end "
            f"{end:,}: the log lost records that the store holds"
        )
        report.derivable = False
    elif not on_boundary:
        report.disagreements.append(
            f"the store's position {applied.position:,} is not on a frame boundary"
        )
    elif frames_below != applied.records and not damaged_below:
        report.disagreements.append(
            f"the store counts {applied.records:,} records below position "
            f"{applied.position:,}, the log holds {frames_below:,}"
        )
    if damaged_below:
        report.derivable = False


def read_damage(data_dir: Path, damage: Damage) -> bytes:
    """The bytes of a damaged range that are still on disk."""
    if not damage.segment:
        return b""
    path = data_dir / "log" / damage.stream / damage.segment
    base = int(damage.segment.removesuffix(".seg"))
    with open(path, "rb") as f:
        f.seek(damage.start - base)
        return f.read(damage.end - damage.start)


def _spans(region: bytes) -> Iterator[tuple[int, int, str | None]]:
    for span in walk(region, legacy=is_legacy(region)):
        yield span.start, span.end, span.reason
