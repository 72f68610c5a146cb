"""Parsing and framing a JSON-lines source on several cores.

One core's Python parses and frames about 60,000 records a second
(docs/benchmarks.md); JSON lines are independent of each other, so worker
processes parse and frame chunks of lines while this process reads the source
and writes the chunks, in the source's order, as they come back. At most two
chunks a worker are in flight, so memory stays bounded whatever the size. (CSV
keeps to one process: a quoted cell can span lines.)
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterator
from multiprocessing.pool import AsyncResult

from tally.migrate.formats import Source
from tally.migrate.importer import CHUNK_RECORDS, Framed, next_time
from tally.migrate.kmjson import parse_line
from tally.migrate.records import Bad, frame
from tally.migrate.sources import Position, lines

#: (lines with their source, the API key, the receive time, the position after them)
_Task = tuple[list[tuple[bytes, str]], str, int, Position]


def framed_in_parallel(source: Source, start: Position, key: str, jobs: int) -> Iterator[Framed]:
    """The source's records framed by ``jobs`` worker processes, in order."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with context.Pool(jobs, initializer=_ignore_interrupts) as pool:
        pending: deque[AsyncResult[Framed]] = deque()
        for task in _tasks(source, start, key):
            pending.append(pool.apply_async(_frame_lines, (task,)))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _tasks(source: Source, start: Position, key: str) -> Iterator[_Task]:
    recv_ns = next_time(0)
    batch: list[tuple[bytes, str]] = []
    reached = start
    for item, raw, position in lines(source.files, start):
        reached = position
        if raw:
            batch.append((raw, f"{item.name}:{position.line}"))
        if len(batch) >= CHUNK_RECORDS:
            yield batch, key, recv_ns, position
            batch = []
            recv_ns = next_time(recv_ns)
    yield batch, key, recv_ns, reached


def _frame_lines(task: _Task) -> Framed:
    batch, key, recv_ns, position = task
    framed: list[bytes] = []
    rejected: dict[str, int] = {}
    for raw, where in batch:
        parsed = parse_line(raw, where)
        if parsed is None:
            continue
        if isinstance(parsed, Bad):
            if not raw.endswith(b"\n"):
                parsed = parsed._replace(why=f"truncated last line ({parsed.why})")
            rejected[parsed.reason] = rejected.get(parsed.reason, 0) + 1
        framed.append(frame(parsed, key, recv_ns))
    return Framed(b"".join(framed), len(framed), rejected, position)


def _ignore_interrupts() -> None:
    # Ctrl-C is the importing process's to handle: it stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
