"""One collector process: a listening socket, one log stream, a group commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import uvloop

from tally.collector.commit import GroupCommit
from tally.collector.protocol import TrackingProtocol
from tally.collector.proxy import close_kept
from tally.collector.stats import Stats
from tally.log.writer import SegmentWriter, StreamLocked
from tally.serverlog import configure_logging
from tally.settings import Settings

log = logging.getLogger("tally.collector")

#: How often a collector checks that its supervisor is still there.
SUPERVISOR_CHECK_SECONDS = 0.5


def stream_name(index: int) -> str:
    """The log stream of collector slot ``index``: stable across restarts."""
    return f"c{index}"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound with ``SO_REUSEPORT``: the kernel spreads connections
    evenly over the collector processes, each with its own accept queue."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Worker:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        writer: SegmentWriter,
        core_socket: Path | None,
        stats: Stats,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.core_socket = core_socket
        self.stats = stats
        self.commit = GroupCommit(
            loop, writer, max_pending_bytes=settings.backlog_mib << 20, stats=stats
        )
        self.connections: set[TrackingProtocol] = set()
        self.tasks: set[asyncio.Task[bool]] = set()  # requests relayed to the core

    def protocol(self) -> TrackingProtocol:
        return TrackingProtocol(self)

    async def sweep(self) -> None:
        """Close idle and slow connections (SPEC §1)."""
        timeout = self.settings.timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = self.loop.time()
            for connection in list(self.connections):
                connection.close_idle(now, timeout)
            self.stats.publish(len(self.connections))  # for /metrics

    async def stop(self) -> None:
        """Answer what is owed, make everything durable, close."""
        for connection in list(self.connections):
            connection.shutdown()
        await self.commit.drain()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        for _ in range(50):  # let the last answers leave
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        self.commit.close()
        if self.core_socket is not None:
            close_kept(self.core_socket)


async def _watch_supervisor(supervisor: int, stopping: asyncio.Event) -> None:
    """Stop if the supervisor is gone (the OOM killer's choice, say): an orphaned
    collector would keep its stream locked and its port open, and the next
    ``tally serve`` could not start its own."""
    while os.getppid() == supervisor:
        await asyncio.sleep(SUPERVISOR_CHECK_SECONDS)
    log.error("the supervisor (pid %d) is gone: stopping", supervisor)
    stopping.set()


async def _serve(index: int, settings: Settings, ready: Connection, supervisor: int) -> None:
    loop = asyncio.get_running_loop()
    writer = SegmentWriter(
        settings.log_dir / stream_name(index), segment_bytes=settings.segment_mib << 20
    )
    worker = Worker(loop, settings, writer, settings.core_socket, Stats(settings.run_dir, index))
    server = await loop.create_server(
        worker.protocol, sock=listening_socket(settings.host, settings.port)
    )
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    sweeper = loop.create_task(worker.sweep())
    watcher = loop.create_task(_watch_supervisor(supervisor, stopping))
    with contextlib.suppress(BrokenPipeError):  # nobody waits for a restarted collector
        ready.send_bytes(b"listening")
    ready.close()
    log.info("collector %d listening on %s:%d", index, settings.host, settings.port)
    await stopping.wait()
    server.close()
    sweeper.cancel()
    watcher.cancel()
    await worker.stop()
    log.info("collector %d stopped; log stream %s at %d", index, stream_name(index),
             writer.position)  # fmt: skip


def run_collector(
    index: int, settings: Settings, log_level: int, ready: Connection, supervisor: int
) -> None:
    """Entry point of a collector process; says so on ``ready`` once it listens
    (a pipe, not a ``multiprocessing.Event``: an Event's semaphores live in
    /dev/shm and stay there when the server is killed with SIGKILL), and stops
    when the process ``supervisor`` is no longer its parent."""
    configure_logging(settings, log_level)
    # Ctrl-C reaches the whole process group: the supervisor decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Past a file-size limit, a write must fail (and be answered 503), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        uvloop.run(_serve(index, settings, ready, supervisor))
    except (StreamLocked, OSError) as exc:  # e.g. its stream held by another process
        log.error("collector %d cannot run: %s", index, exc)
        sys.exit(1)
