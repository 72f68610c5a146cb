"""``manifest.json``: what a backup holds, and the check that it is whole.

Every file of a backup is listed with its size and SHA-256; each stream with
where its copied log ends and where the store snapshot had applied it to. The
format is a number: a Tally refuses a backup of a newer one, and says to
upgrade, rather than misread it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tally import __version__
from tally.errors import InvalidInput, NotFound
from tally.log.record import LOG_FORMAT

FORMAT = 1
MANIFEST = "manifest.json"
LOG = "log"
STORE = "store.duckdb"
CATALOG = "catalog.sqlite"


@dataclass(frozen=True)
class File:
    """A file of a backup: its path inside the backup (POSIX), size and SHA-256."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Stream:
    name: str
    #: Where the copied log of the stream ends (its durable end when copied).
    end: int
    #: Where the store snapshot had applied it to, and how many records that is.
    applied: int
    applied_records: int
    segments: tuple[File, ...]


@dataclass(frozen=True)
class Manifest:
    format: int
    tally_version: str
    created_ns: int
    source: str
    #: The log's format (``log/FORMAT``; ``None`` for a log from before it).
    log_format: int | None
    streams: tuple[Stream, ...]
    store: File | None
    catalog: File | None
    #: The store snapshot's positions table (streams it has applied anything of).
    positions: dict[str, int]

    def files(self) -> list[File]:
        found = [f for s in self.streams for f in s.segments]
        return found + [f for f in (self.store, self.catalog) if f is not None]

    @property
    def log_bytes(self) -> int:
        return sum(f.size for s in self.streams for f in s.segments)

    def to_json(self) -> dict[str, Any]:
        created = datetime.fromtimestamp(self.created_ns / 1e9, UTC)
        return {
            "format": self.format,
            "tally_version": self.tally_version,
            "created": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "created_ns": self.created_ns,
            "source": self.source,
            "log_format": self.log_format,
            "streams": {
                s.name: {
                    "log_end": s.end,
                    "applied": s.applied,
                    "applied_records": s.applied_records,
                    "segments": [f.to_json() for f in s.segments],
                }
                for s in self.streams
            },
            "store": None
            if self.store is None
            else {**self.store.to_json(), "positions": self.positions},
            "catalog": None if self.catalog is None else self.catalog.to_json(),
        }


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Written (and synced) last: a backup without its manifest is not whole."""
    with open(directory / MANIFEST, "x") as f:
        json.dump(manifest.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def new_manifest(
    *,
    source: Path,
    log_format: int | None,
    streams: list[Stream],
    store: File | None,
    catalog: File | None,
    positions: dict[str, int],
    now_ns: int | None = None,
) -> Manifest:
    return Manifest(
        format=FORMAT,
        tally_version=__version__,
        created_ns=time.time_ns() if now_ns is None else now_ns,
        source=str(source.resolve()),
        log_format=log_format,
        streams=tuple(sorted(streams, key=lambda s: s.name)),
        store=store,
        catalog=catalog,
        positions=dict(sorted(positions.items())),
    )


def read_manifest(backup: Path) -> Manifest:
    """The manifest of ``backup``, checked: a one-line error for anything that
    is not a whole backup this Tally can restore."""
    path = backup / MANIFEST
    if not backup.is_dir():
        raise NotFound(f"no backup at {backup}", field="backup")
    if not path.is_file():
        if backup.name.endswith(".partial"):
            raise InvalidInput(
                f"{backup} is a backup that was interrupted before it was complete: "
                "run `tally backup` again",
                field="backup",
            )
        raise InvalidInput(f"{backup} is not a Tally backup (no {MANIFEST})", field="backup")
    try:
        doc = json.loads(path.read_text())
        version = doc["format"]
        if not isinstance(version, int):
            raise ValueError("its format is not a number")
        if version > FORMAT:
            raise InvalidInput(
                f"{backup} is of backup format {version}, made by Tally "
                f"{doc.get('tally_version', '?')}; this Tally ({__version__}) reads format "
                f"{FORMAT}: upgrade Tally to restore it",
                code="backup_too_new",
                field="backup",
            )
        manifest = _parse(doc)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{path} is damaged: {_why(exc)}", field="backup") from exc
    if (manifest.log_format or 0) > LOG_FORMAT:
        raise InvalidInput(
            f"the log in {backup} is of format {manifest.log_format}, from Tally "
            f"{manifest.tally_version}; this Tally ({__version__}) reads formats up to "
            f"{LOG_FORMAT}: upgrade Tally to restore it",
            code="backup_too_new",
            field="backup",
        )
    return manifest


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc}"
    if isinstance(exc, ValueError | OSError):
        return str(exc)
    return f"not what `tally backup` writes ({exc})"


def _parse(doc: dict[str, Any]) -> Manifest:
    def file(item: dict[str, Any], inside: PurePosixPath, name: str | None = None) -> File:
        path = PurePosixPath(item["path"])
        # Every path stays where it belongs in the backup (and in the data
        # directory made of it): never outside.
        misplaced = path.name in ("", ".", "..") or (name is not None and path.name != name)
        if path.parent != inside or misplaced:
            raise ValueError(f"a file where none belongs: {item['path']!r}")
        size, sha256 = item["size"], item["sha256"]
        if not isinstance(size, int) or size < 0 or not isinstance(sha256, str):
            raise ValueError(f"no size or SHA-256 for {item['path']!r}")
        return File(str(path), size, sha256)

    streams = []
    for name, s in doc["streams"].items():
        if PurePosixPath(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"a stream named {name!r}")
        segments = tuple(file(f, PurePosixPath(LOG, name)) for f in s["segments"])
        streams.append(
            Stream(name, int(s["log_end"]), int(s["applied"]), int(s["applied_records"]), segments)
        )
    store, catalog, log_format = doc["store"], doc["catalog"], doc["log_format"]
    return Manifest(
        format=int(doc["format"]),
        tally_version=str(doc["tally_version"]),
        created_ns=int(doc["created_ns"]),
        source=str(doc["source"]),
        log_format=None if log_format is None else int(log_format),
        streams=tuple(streams),
        store=None if store is None else file(store, PurePosixPath("."), STORE),
        catalog=None if catalog is None else file(catalog, PurePosixPath("."), CATALOG),
        positions={} if store is None else {str(k): int(v) for k, v in store["positions"].items()},
    )
