"""Parsing and framing a JSON-lines source on several cores.

JSON lines are independent of each other, so worker processes frame chunks
of lines (tally.migrate.blocks) while this process reads the source and
writes the chunks' records, in the source's order, as they come back. At most
two chunks a worker are in flight, so memory stays bounded whatever the size.
(CSV keeps to one process: a quoted cell can span lines.)
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from multiprocessing.pool import AsyncResult

from tally.migrate.blocks import BlockFramer, chunk_blocks
from tally.migrate.importer import Framed, next_time
from tally.migrate.sources import Block, Position, SourceFile, line_blocks
from tally.orphans import start_pool_worker

#: (a chunk's blocks of lines, the API key, its receive time)
_Task = tuple[list[Block], str, int]


def framed_in_parallel(
    files: list[SourceFile], start: Position, key: str, jobs: int
) -> Iterator[Framed]:
    """The records of JSON-lines files framed by ``jobs`` worker processes, in order."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with context.Pool(jobs, initializer=start_pool_worker, initargs=(os.getpid(),)) as pool:
        pending: deque[AsyncResult[Framed]] = deque()
        recv_ns = next_time(0)
        for blocks in chunk_blocks(line_blocks(files, start)):
            pending.append(pool.apply_async(_frame_blocks, ((blocks, key, recv_ns),)))
            recv_ns = next_time(recv_ns)
            if len(pending) >= 2 * jobs:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


#: A worker's framer (its plans last from block to block).
_framers: dict[str, BlockFramer] = {}


def _frame_blocks(task: _Task) -> Framed:
    blocks, key, recv_ns = task
    framer = _framers.get(key)
    if framer is None:
        framer = _framers[key] = BlockFramer(key)
    return framer.framed(blocks, recv_ns)
