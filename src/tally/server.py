"""``tally serve``: the supervisor, the core, and the collector processes.

The supervisor process runs the core (the JSON API, later the processor and the
dashboard) on a Unix socket in the data directory, and starts one collector
process per worker slot on the public port (DESIGN "Embedded default"). It
restarts a collector that dies, and on SIGTERM/SIGINT stops the collectors
first (each answers what it owes and fsyncs its stream), then the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import multiprocessing
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import uvicorn

from tally import heap
from tally.api import build_app
from tally.api_core import Core
from tally.backup.snapshot import remove_stale_snapshots
from tally.catalog import Catalog, FirstStart
from tally.collector.worker import run_collector, stream_name
from tally.errors import Unavailable
from tally.log.writer import SegmentWriter, StreamLocked, check_format
from tally.migrate.watch import ImportDir
from tally.permissions import FILE_MODE, restrict, warn_if_shared
from tally.processor import Processor
from tally.serverlog import Rotation, configure_logging
from tally.settings import Settings
from tally.store import Engine, open_engine
from tally.store.batch import Progress

log = logging.getLogger("tally.server")


@contextlib.contextmanager
def data_dir_lock(settings: Settings) -> Iterator[None]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.data_dir / "LOCK", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise Unavailable(
            f"another tally serve is using {settings.data_dir}", code="data_dir_in_use"
        ) from exc
    try:
        yield
    finally:
        os.close(fd)


def check_writable(settings: Settings) -> None:
    """Fail early, in one line, where the data directory cannot be written."""
    probe = settings.data_dir / ".tally-write-probe"
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise Unavailable(
            f"cannot write in the data directory {settings.data_dir}: {exc.strerror}; Tally "
            "needs it writable (its owner, mode 0700)",
            code="data_dir_unwritable",
        ) from exc


def check_port(host: str, port: int) -> None:
    """Fail early and clearly when the port is taken: the collectors bind with
    SO_REUSEPORT, which would otherwise share it with whoever holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise Unavailable(
                f"cannot listen on {host}:{port}: {exc.strerror}", code="port_unavailable"
            ) from exc


def recover_idle_streams(settings: Settings) -> None:
    """Recover the streams no collector will open (fewer workers than before,
    the operator stream), so that a torn tail is cut and readers are told how
    far each is durable."""
    own = {stream_name(i) for i in range(settings.worker_count)}
    if not settings.log_dir.is_dir():
        return
    for stream_dir in sorted(settings.log_dir.iterdir()):
        if stream_dir.is_dir() and stream_dir.name not in own:
            try:
                SegmentWriter(stream_dir).close()
            except StreamLocked:  # a CLI command is appending to it right now
                log.info("log stream %s is in use; its writer recovers it", stream_dir.name)


class _CoreServer(uvicorn.Server):
    """uvicorn without its own signal handling: the supervisor owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Started:
    """What ``serve`` tells the person who started it."""

    url: str
    first_start: FirstStart | None


def serve(
    settings: Settings, announce: Callable[[Started], None], progress: Progress | None = None
) -> None:
    restrict()  # the collectors, started later, inherit it
    heap.fix_mmap_threshold()  # a large answer's blocks go back when freed (tally.heap)
    existed = settings.data_dir.exists()
    check_writable(settings)
    configure_logging(settings)
    if existed:
        warn_if_shared(settings.data_dir)
    with data_dir_lock(settings):
        check_port(settings.host, settings.port)
        check_format(settings.log_dir)
        recover_idle_streams(settings)
        catalog = Catalog(settings.catalog_path)
        first_start = catalog.initialise()
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_snapshots(settings)
        with contextlib.suppress(FileNotFoundError):
            settings.core_socket.unlink()
        store = open_store(settings, progress=progress)  # a conversion's progress (docs/store.md)
        processor = Processor(settings, store)
        core = Core(
            settings,
            catalog,
            processor,
            local_token_hash=write_local_token(settings),
        )
        processor.start()
        watcher = _watch_import_dir(settings)
        try:
            asyncio.run(_supervise(settings, core, first_start, announce))
        finally:
            if watcher is not None:
                watcher.stop()
            processor.stop()
            store.close()
            catalog.close()
            with contextlib.suppress(FileNotFoundError):
                settings.local_token_path.unlink()


def _watch_import_dir(settings: Settings) -> ImportDir | None:
    """The --import-dir watcher, started (tally.migrate.watch)."""
    if settings.import_dir is None:
        return None
    watcher = ImportDir(settings)
    watcher.start()
    return watcher


def open_store(
    settings: Settings, *, read_only: bool = False, progress: Progress | None = None
) -> Engine:
    """The data directory's store, through the store contract (tally.store):
    ``tally serve`` and every CLI command that reads or writes it open it here."""
    return open_engine(settings.store_path, read_only=read_only, progress=progress)


def write_local_token(settings: Settings) -> str:
    """A token for the local CLI, readable only by whoever can read the data
    directory; its hash lets the CLI in for as long as this server runs."""
    token = secrets.token_urlsafe(32)
    path = settings.local_token_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return hashlib.sha256(token.encode()).hexdigest()


async def _supervise(
    settings: Settings,
    core: Core,
    first_start: FirstStart | None,
    announce: Callable[[Started], None],
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    config = uvicorn.Config(
        build_app(core),
        uds=str(settings.core_socket),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    core_server = _CoreServer(config)
    core_task = loop.create_task(core_server.serve())
    while not core_server.started:
        if core_task.done():
            core_task.result()
        await asyncio.sleep(0.01)
    # uvicorn makes its Unix socket 0666; only the owner may talk to the core.
    os.chmod(settings.core_socket, FILE_MODE)

    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()

    def start(index: int) -> tuple[BaseProcess, Connection]:
        ready, tell = context.Pipe(duplex=False)
        process = context.Process(
            target=run_collector,
            args=(index, settings, level, tell, os.getpid()),
            name=f"tally-collector-{index}",
        )
        process.start()
        tell.close()  # the collector's end
        return process, ready

    started = [start(i) for i in range(settings.worker_count)]
    workers = [process for process, _ in started]
    rotation = Rotation(settings)
    try:
        await _wait_ready(started)
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
        if ":" in host:
            host = f"[{host}]"
        announce(Started(f"http://{host}:{settings.port}", first_start))
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=0.5)
            rotation.check()
            for index, process in enumerate(workers):
                if not process.is_alive() and not stopping.is_set():
                    log.error("collector %d exited with %s; restarting it", index, process.exitcode)
                    workers[index], ready = start(index)
                    ready.close()  # nobody waits for a restarted collector
        log.info("stopping: collectors first, then the core")
    finally:
        await _stop(workers)
        core_server.should_exit = True
        await core_task
    log.info("stopped")


async def _stop(workers: list[BaseProcess]) -> None:
    loop = asyncio.get_running_loop()
    for process in workers:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in workers:
        await loop.run_in_executor(None, process.join, 30)
        if process.is_alive():
            log.error("collector %s did not stop in 30 s; killing it", process.name)
            process.kill()


async def _wait_ready(started: list[tuple[BaseProcess, Connection]]) -> None:
    """Until every collector has recovered its stream and listens."""
    loop = asyncio.get_running_loop()
    for process, ready in started:
        try:
            for _ in range(600):
                said = await loop.run_in_executor(None, _said, ready, 0.1)
                if said:
                    break
                if said is None or not process.is_alive():  # it closed the pipe: it died
                    raise Unavailable("a collector process failed to start; see the log above")
            else:
                raise Unavailable("the collectors did not start in 60 s")
        finally:
            ready.close()


def _said(ready: Connection, timeout: float) -> bool | None:
    """Whether the collector said it listens; ``None`` if it closed its end
    without saying so (it died)."""
    try:
        return ready.poll(timeout) and ready.recv_bytes() == b"listening"
    except EOFError:
        return None
