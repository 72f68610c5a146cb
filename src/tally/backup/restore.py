"""Restoring a backup: a new data directory that ``tally serve`` starts from.

The store snapshot's positions lie at or before the ends of the copied log,
so the restored server's processor applies the rest of it and catches up, as
after any restart.
"""

from __future__ import annotations

from pathlib import Path

from tally.backup.manifest import CATALOG, LOG, STORE, Manifest
from tally.backup.partial import (
    Advance,
    check_empty_target,
    copy_file,
    ignore,
    write_durable,
    write_file,
)
from tally.errors import Conflict, InvalidInput
from tally.log.writer import FORMAT_FILE, fsync_dir


def check_new_data_dir(data_dir: Path) -> None:
    """A restore makes a new data directory: never over one that has data."""
    held = [name for name in (LOG, STORE, CATALOG) if (data_dir / name).exists()]
    if held:
        raise Conflict(
            f"{data_dir} already holds Tally data ({', '.join(held)}): "
            "restore into a new directory",
            field="data_dir",
        )
    check_empty_target(data_dir, "data_dir")


def check_sizes(backup: Path, manifest: Manifest) -> None:
    """Every file of the manifest is there with its size, before anything is copied."""
    for f in manifest.files():
        path = backup / f.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InvalidInput(
                f"{path} is missing: the backup is incomplete", field="backup"
            ) from None
        if size != f.size:
            raise InvalidInput(
                f"{path} is {size} bytes, the manifest says {f.size}: the backup is damaged",
                field="backup",
            )


def restore_files(
    backup: Path, manifest: Manifest, partial: Path, advance: Advance = ignore
) -> None:
    """Copy every file of the manifest into ``partial``, checking each one's
    SHA-256, and give each stream its DURABLE file and the log its FORMAT;
    everything synced."""
    for f in manifest.files():
        target = partial / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        copied = copy_file(backup / f.path, target, None, advance)
        if copied.sha256 != f.sha256 or copied.size != f.size:
            raise InvalidInput(
                f"{backup / f.path} does not match its SHA-256 in the manifest: "
                "the backup is damaged",
                field="backup",
            )
    for stream in manifest.streams:
        stream_dir = partial / LOG / stream.name
        stream_dir.mkdir(parents=True, exist_ok=True)
        write_durable(stream_dir, stream.end)
        fsync_dir(stream_dir)
    if manifest.log_format is not None:
        (partial / LOG).mkdir(exist_ok=True)
        write_file(partial / LOG / FORMAT_FILE, f"{manifest.log_format}\n".encode())
    if (partial / LOG).is_dir():
        fsync_dir(partial / LOG)
