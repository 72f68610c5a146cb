"""A directory written as ``TARGET.partial`` and renamed to ``TARGET`` when whole.

A backup and a restored data directory are both written this way: every file
synced as it is written, the directory synced, then one rename, then its
parent synced. A run killed half-way leaves only the ``.partial``, which is
never taken for a whole one and which the next run removes. While a run
writes into it, it holds an ``flock`` on it, which the kernel releases when
the run dies: a ``.partial`` that is locked belongs to a run still going, and
is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tally.backup.manifest import File
from tally.errors import Conflict, TallyError, Unavailable
from tally.log.writer import DURABLE_FILE, durable_record, fsync_dir

#: Told how many more bytes have been copied (a progress bar).
Advance = Callable[[int], None]
_CHUNK = 4 * 1024 * 1024


def ignore(_: int) -> None:
    """An :data:`Advance` that tells nobody."""


@dataclass(frozen=True)
class Partial:
    path: Path
    target: Path
    #: Whether a ``.partial`` left by a run that died was removed first.
    removed_stale: bool

    def finish(self) -> None:
        """Rename to the target, durably: the last step, after which it is whole."""
        fsync_dir(self.path)
        try:
            os.rename(self.path, self.target)  # (over an empty directory too)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"{self.target} is not empty any more") from exc
            raise
        fsync_dir(self.target.parent)


@contextlib.contextmanager
def partial_dir(target: Path, *, mode: int = 0o777) -> Iterator[Partial]:
    """``TARGET.partial``, new and locked; removed again if the block fails."""
    path = target.with_name(target.name + ".partial")
    busy = f"another run is writing {path} right now"
    path.parent.mkdir(parents=True, exist_ok=True)
    removed = False
    if path.is_symlink() or path.exists():
        if path.is_symlink() or not path.is_dir():
            raise Conflict(f"{path} is in the way: move it elsewhere")
        fd = _lock(path, busy)
        try:
            shutil.rmtree(path)
        finally:
            os.close(fd)
        removed = True
    try:
        path.mkdir(mode=mode)
    except FileExistsError as exc:
        raise Conflict(busy) from exc
    fd = _lock(path, busy)
    try:
        yield Partial(path, target, removed)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _lock(directory: Path, busy: str) -> int:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise Conflict(busy) from exc
    return fd


def check_empty_target(target: Path, what: str) -> None:
    """``target`` may not exist yet, or be an empty directory."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise Conflict(f"{target} exists and is not a directory", field=what)
    if target.is_dir() and any(target.iterdir()):
        raise Conflict(f"{target} exists and is not empty", field=what)


def copy_file(source: Path, target: Path, length: int | None, advance: Advance) -> File:
    """Copy ``length`` bytes (all when ``None``; fewer if the source ends
    before) into a new file, synced; the copy's size and SHA-256 (``path`` is
    the target's name)."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "xb") as dst:
        while length is None or size < length:
            chunk = src.read(_CHUNK if length is None else min(_CHUNK, length - size))
            if not chunk:
                break
            dst.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            advance(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    return File(target.name, size, digest.hexdigest())


def digest_file(path: Path, advance: Advance = ignore) -> File:
    """The size and SHA-256 of a file written by other means, synced."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            advance(len(chunk))
        os.fsync(f.fileno())
    return File(path.name, size, digest.hexdigest())


def write_durable(stream_dir: Path, end: int) -> None:
    """The stream's DURABLE file: its copied segments are durable to ``end``."""
    write_file(stream_dir / DURABLE_FILE, durable_record(end))


def write_file(path: Path, data: bytes) -> None:
    """A new file holding ``data``, synced."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """An ``OSError`` (a full disk, a permission) as one line, not a traceback."""
    try:
        yield
    except TallyError:
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise Unavailable(f"cannot {what}: {exc.strerror or exc}{where}") from exc
