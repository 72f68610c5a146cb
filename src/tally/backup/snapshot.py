"""A consistent copy of the store, and the log positions it has applied.

While ``tally serve`` runs, its core makes the copy (``POST
/api/v1/backup/snapshot``) into ``DATA_DIR/run/snapshots/``, on a cursor of the
store the processor writes; when no server runs, the CLI opens the store
read-only and makes it itself. Either way it is one DuckDB transaction, so the
processor goes on meanwhile and the copy is the store as of one batch.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tally.errors import Unavailable
from tally.settings import Settings
from tally.store.contract import Cursor

#: Under ``DATA_DIR/run/``: where the core writes store snapshots for the CLI.
SNAPSHOTS = "snapshots"


@dataclass(frozen=True)
class Snapshot:
    """A copy of the store, and the log positions it has applied."""

    path: Path
    positions: dict[str, int]
    #: Per stream, how many records lie before its position.
    records: dict[str, int]


def snapshot_store(con: Cursor, target: Path) -> Snapshot:
    """Copy the store that ``con`` is on into a new file ``target``, as of one
    transaction: writers go on meanwhile (DuckDB's MVCC), and the positions
    read in the same transaction are those of the copy.

    Only the store's own database is copied, not the in-memory staging
    database that the processor attaches beside it (store.STAGING)."""
    alias = "tally_snapshot_" + secrets.token_hex(8)
    try:
        row = con.execute("SELECT current_database()").fetchone()
        assert row is not None
        source = '"' + str(row[0]).replace('"', '""') + '"'
        # READ_WRITE: from a store opened read-only, ATTACH would be read-only too.
        con.execute(f"ATTACH ? AS {alias} (READ_WRITE)", [str(target)])
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                rows = con.execute(
                    f"SELECT stream, position, records FROM {source}.positions"
                ).fetchall()
                con.execute(f"COPY FROM DATABASE {source} TO {alias}")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.execute(f"DETACH {alias}")  # checkpoints the copy into its file
    except BaseException as exc:
        for stale in (target, target.with_name(target.name + ".wal")):
            stale.unlink(missing_ok=True)
        if isinstance(exc, duckdb.Error):
            raise Unavailable(f"cannot snapshot the store: {exc}", code="snapshot_failed") from exc
        raise
    return Snapshot(
        target,
        {stream: position for stream, position, _ in rows},
        {stream: records for stream, _, records in rows},
    )


def snapshot_stopped_store(store_path: Path, target: Path) -> Snapshot:
    """:func:`snapshot_store` of a store that no server holds open (the caller
    holds the data directory's lock), opened read-only."""
    try:
        con = duckdb.connect(str(store_path), read_only=True)
    except duckdb.Error as exc:
        raise Unavailable(f"cannot open the store {store_path}: {exc}") from exc
    try:
        return snapshot_store(con, target)
    finally:
        con.close()


def new_snapshot_path(settings: Settings) -> Path:
    """A fresh file for the core's snapshot, in ``run/snapshots/``."""
    directory = settings.run_dir / SNAPSHOTS
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{secrets.token_hex(8)}.duckdb"


def remove_stale_snapshots(settings: Settings) -> None:
    """At the server's start: snapshots that a killed ``tally backup`` never
    took away (nothing else can be using them: the server holds the lock).
    One it cannot remove must not keep the server from starting."""
    shutil.rmtree(settings.run_dir / SNAPSHOTS, ignore_errors=True)
