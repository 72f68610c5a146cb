"""``tally backup DEST`` and ``tally restore BACKUP``: the shell over tally.backup."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click

from tally import local
from tally.backup import manifest as manifests
from tally.backup import restore as restoring
from tally.backup import take
from tally.backup.manifest import CATALOG, LOG, STORE, Manifest
from tally.backup.partial import check_empty_target, digest_file, os_errors, partial_dir
from tally.backup.snapshot import Snapshot, snapshot_stopped_store
from tally.cli.options import data_dir_option, echo_table, errors_to_exit, show_time
from tally.errors import InvalidInput, NotFound
from tally.settings import Settings

#: How long the CLI waits for the server's store snapshot: it copies the whole
#: store, on the one DuckDB thread the processor leaves itself (Processor.start).
SNAPSHOT_TIMEOUT_SECONDS = 6 * 3600.0


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@data_dir_option
@errors_to_exit
def backup(dest: Path, data_dir: Path) -> None:
    """Back up the data directory into DEST.

    The copy is consistent, with `tally serve` running or not. DEST gets the
    log of every stream up to where it is durable, a snapshot of the store as
    of known log positions, the catalog (products, API keys, operator-token
    hashes: keep DEST private) and manifest.json, which lists every file with
    its size and SHA-256. While `tally serve` runs, the server makes the store
    snapshot and goes on taking tracking calls; when none runs, the backup
    holds the data directory's lock until it is done.

    DEST must not exist or be empty. The backup is written as DEST.partial and
    renamed to DEST once complete, so DEST is always a whole backup; a
    DEST.partial that an interrupted run left is removed by the next. Restore
    it with `tally restore DEST --data-dir NEW_DIR`.
    """
    from tally.server import data_dir_lock

    settings = Settings(data_dir=data_dir)
    started = time.monotonic()
    _check_source(settings, dest)
    check_empty_target(dest, "dest")
    with contextlib.ExitStack() as stack:
        running = local.server_running(settings)
        if not running:  # nothing may write the store, or start a server, meanwhile
            stack.enter_context(data_dir_lock(settings))
        stack.enter_context(os_errors("write the backup"))
        partial = stack.enter_context(partial_dir(dest, mode=0o700))
        if partial.removed_stale:
            click.echo(f"Removed {partial.path}, left by a backup that was interrupted.")
        snapshot = _snapshot(settings, running, partial.path / STORE)
        # After the snapshot: the log copied covers every record it has applied.
        plan = take.plan_log(settings.log_dir, snapshot.positions if snapshot else {})
        # After the log's ends: the catalog knows every key its records were sent with.
        catalog = take.copy_catalog(settings.catalog_path, partial.path / CATALOG)
        store_bytes = snapshot.path.stat().st_size if snapshot else 0
        with click.progressbar(length=plan.bytes + store_bytes, label="Copying") as bar:
            store = digest_file(snapshot.path, bar.update) if snapshot else None
            log = take.copy_log(plan, partial.path / LOG, bar.update)
        manifest = manifests.new_manifest(
            source=settings.data_dir,
            log_format=take.log_format(settings.log_dir),
            streams=take.streams(plan, log, snapshot),
            store=store,
            catalog=catalog,
            positions=snapshot.positions if snapshot else {},
        )
        manifests.write_manifest(partial.path, manifest)
        partial.finish()
    for short in log.short:
        click.echo(f"warning: {short}: damage, copied as it is", err=True)
    _summarise(manifest, dest, time.monotonic() - started)


def _check_source(settings: Settings, dest: Path) -> None:
    data_dir = settings.data_dir
    if not (settings.catalog_path.exists() or settings.log_dir.is_dir()):
        raise NotFound(f"no Tally data in {data_dir}", field="data_dir")
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise InvalidInput(
            f"{dest} is inside the data directory {data_dir}: back up to somewhere else",
            field="dest",
        )


def _snapshot(settings: Settings, running: bool, target: Path) -> Snapshot | None:
    """The store's snapshot, at ``target``: made by the running server, or
    from the store itself when none runs (``None`` when there is no store yet)."""
    if not running:
        if not settings.store_path.exists():
            return None
        click.echo("Snapshotting the store…")
        return snapshot_stopped_store(settings.store_path, target)
    click.echo("Snapshotting the store (tally serve makes it, and goes on)…")
    answer = local.request(
        settings, "POST", "/api/v1/backup/snapshot", timeout=SNAPSHOT_TIMEOUT_SECONDS
    )
    made = Path(answer["path"])
    try:
        take.adopt_store(made, target)
    finally:
        made.unlink(missing_ok=True)  # (gone already once adopted)
    return Snapshot(target, answer["positions"], answer["records"])


def _summarise(manifest: Manifest, dest: Path, seconds: float) -> None:
    records = sum(s.applied_records for s in manifest.streams)
    click.echo(f"Backed up {manifest.source} into {dest} in {seconds:.1f} s.")
    echo_table(
        ["stream", "log bytes", "applied", "records applied"],
        [
            [s.name, f"{s.end:,}", f"{s.applied:,}", f"{s.applied_records:,}"]
            for s in manifest.streams
        ],
    )
    store = f"{manifest.store.size:,} bytes" if manifest.store else "none yet"
    click.echo(
        f"Log: {len(manifest.streams)} streams, {manifest.log_bytes:,} bytes. "
        f"Store snapshot: {store}, {records:,} records applied."
    )
    click.echo(f"Restore it with: tally restore {dest} --data-dir NEW_DIR")


@click.command()
@click.argument("backup_dir", metavar="BACKUP", type=click.Path(file_okay=False, path_type=Path))
@data_dir_option
@errors_to_exit
def restore(backup_dir: Path, data_dir: Path) -> None:
    """Restore a backup into a new data directory.

    BACKUP is a directory that `tally backup` made; --data-dir names the new
    data directory, which must not exist yet or be empty. Every file is checked
    against the manifest, its size before anything is copied and its SHA-256
    as it is; the data directory is written as DATA_DIR.partial and renamed
    once complete. `tally serve --data-dir DATA_DIR` then starts from the store
    snapshot and applies the rest of the copied log.
    """
    started = time.monotonic()
    manifest = manifests.read_manifest(backup_dir)
    restoring.check_new_data_dir(data_dir)
    with os_errors("restore the backup"):
        restoring.check_sizes(backup_dir, manifest)
        with partial_dir(data_dir) as partial:
            if partial.removed_stale:
                click.echo(f"Removed {partial.path}, left by a restore that was interrupted.")
            total = sum(f.size for f in manifest.files())
            with click.progressbar(length=total, label="Restoring") as bar:
                restoring.restore_files(backup_dir, manifest, partial.path, bar.update)
            partial.finish()
    behind = sum(s.end - s.applied for s in manifest.streams)
    click.echo(
        f"Restored the backup of {manifest.source} taken {show_time(manifest.created_ns)} "
        f"(Tally {manifest.tally_version}) into {data_dir} in {time.monotonic() - started:.1f} s: "
        f"{len(manifest.streams)} streams, {manifest.log_bytes:,} bytes of log, "
        f"{behind:,} of them after the store snapshot."
    )
    click.echo(f"Start it with: tally serve --data-dir {data_dir}")
