"""Keeping the store true to the log: check, rebuild, and revoking an alias."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tally import local
from tally.audit import ALIAS_REVOKE, local_actor
from tally.catalog import Catalog
from tally.cli.options import (
    blocked_set,
    ctrl_c_asks_to_stop,
    data_dir_option,
    echo_json,
    echo_table,
    errors_to_exit,
    json_option,
    pipeline_options,
)
from tally.cli.progress import progress_bar
from tally.errors import InvalidInput, Unavailable
from tally.log.damage import Quarantine
from tally.log.reader import LogReader
from tally.operations import revoke_alias
from tally.preparing import WorkerEnded, default_jobs
from tally.settings import Settings

if TYPE_CHECKING:
    from tally.check import Applied, Report

#: Larger than the live processor's batches: fewer commits, and each table's
#: rows are written as whole row groups (two batches are in memory at once:
#: ~5 times their log bytes each, tally.processor.BATCH_BYTES). The live
#: processor's 8 MiB would cut them at ~33,000 tracking calls.
REBUILD_BATCH_RECORDS = 100_000
REBUILD_BATCH_BYTES = 48 * 1024 * 1024


@click.command()
@click.option("--accept-loss", is_flag=True,
              help="Rebuild even where the log lost records that the store holds.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(0), default=None,
              help="Processes preparing batches beside the one writing the store "
              "[default: one per CPU but one; 0: none, two threads in one process].")  # fmt: skip
@data_dir_option
@pipeline_options
@errors_to_exit
def rebuild(
    accept_loss: bool,
    jobs: int | None,
    data_dir: Path,
    blocked_identities: str,
    max_identities_per_person: int,
) -> None:
    """Recompute the whole store from the log (the server must be stopped).

    The new store is built beside the old one and replaces it only when it is
    complete, so an interrupted rebuild changes nothing: Ctrl-C stops it after
    the batch it is writing and removes what it built (exit status 130; a
    second Ctrl-C stops it at once). Use it after changing
    --blocked-identities or --max-identities-per-person, or to check that the
    live store is what the log says. If the log was damaged below what the
    store has applied (`tally check`), the store holds records the log lost and
    a rebuild would drop them: it refuses, unless --accept-loss.

    Worker processes (--jobs) prepare the batches, segment by segment of the
    log, while this process writes them in order; each takes about 0.4 GiB.
    Should one of them die, the rebuild stops and the old store stays.
    """
    from tally.check import check_log
    from tally.server import data_dir_lock

    settings = Settings(
        data_dir=data_dir,
        blocked_identities=blocked_set(blocked_identities),
        max_identities_per_person=max_identities_per_person,
    )
    with data_dir_lock(settings):
        if not accept_loss and settings.store_path.exists():
            click.echo("Checking that the log holds everything the store has applied…")
            report = check_log(settings.data_dir, _applied(settings))
            lossy = [s.name for s in report.streams if not s.derivable]
            if lossy:
                raise Unavailable(
                    f"the log of {', '.join(lossy)} lost records that the store holds (see "
                    "`tally check`): a rebuild would drop them; restore the log from a backup, "
                    "or pass --accept-loss",
                    code="log_lost_records",
                )
        with ctrl_c_asks_to_stop() as asked:
            records = rebuild_store(
                settings, jobs=default_jobs() if jobs is None else jobs, stop=asked
            )
    if records is None:
        click.echo(f"Interrupted: {settings.store_path} is as it was.", err=True)
        sys.exit(130)
    click.echo(f"Rebuilt {settings.store_path} from {records:,} log records.")


class _Stopped(Exception):
    """A rebuild stopped as asked: nothing is put in place."""


def rebuild_store(
    settings: Settings,
    *,
    jobs: int | None = None,
    batch_records: int = REBUILD_BATCH_RECORDS,
    stop: threading.Event | None = None,
) -> int | None:
    """Build the store from the log beside the old one, then put it in place
    (the caller holds the data directory's lock); the records read. ``jobs``
    worker processes prepare the batches (tally.preparing; by default
    :func:`default_jobs`, 0 for none); should one die, nothing is put in place.
    Once ``stop`` is set (Ctrl-C), it stops after the batch it is writing,
    removes what it built and returns ``None``: nothing is put in place."""
    from concurrent.futures.process import BrokenProcessPool

    from tally.processor import Processor
    from tally.store import open_engine

    target = settings.store_path
    building = target.with_name(target.name + ".rebuild")
    for stale in (building, building.with_name(building.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    reader = LogReader(settings.log_dir)
    total = sum(reader.durable(s) for s in reader.streams())
    store = open_engine(building)
    try:
        # DuckDB keeps what it wrote in its buffer pool up to 80% of the
        # machine's memory (measured: 2.5 GiB at 10M records); the server's
        # bound serves a rebuild as well, beside its workers (~0.4 GiB each).
        store.limit_memory(settings.query_memory, settings.query_spill)
        processor = Processor(settings, store)
        with store.bulk():
            with progress_bar("Rebuilding", total) as bar:
                records = 0

                def advance(n: int) -> None:
                    nonlocal records
                    records += n
                    bar.update(sum(store.positions().values()), records)

                try:
                    records = processor.catch_up_in_processes(
                        advance,
                        jobs=default_jobs() if jobs is None else jobs,
                        limit=batch_records,
                        limit_bytes=REBUILD_BATCH_BYTES,
                        stop=stop,
                    )
                except (BrokenProcessPool, WorkerEnded) as exc:
                    raise Unavailable(
                        "a process preparing the rebuild's batches ended abruptly (killed, or "
                        "out of memory?); the store is as it was: rebuild again, perhaps with "
                        "fewer --jobs",
                        code="rebuild_failed",
                    ) from exc
            if stop is not None and stop.is_set():
                raise _Stopped  # (out of bulk() without building its indexes)
            if processor.progress.writing_seconds:
                click.echo(
                    f"Wrote {processor.progress.batches:,} batches in "
                    f"{processor.progress.writing_seconds:.1f} s; waited "
                    f"{processor.progress.waiting_seconds:.1f} s for prepared batches."
                )
            click.echo("Indexing identities for the person page…")
        store.checkpoint()
    except BaseException as exc:
        store.close()
        for partial in (building, building.with_name(building.name + ".wal")):
            with contextlib.suppress(OSError):
                partial.unlink()
        if isinstance(exc, _Stopped):
            return None
        raise
    store.close()
    # The old store's WAL goes first: beside the new store it would not match
    # (DuckDB refuses to open the pair). Killed in between, the old store is as
    # of its last checkpoint, its positions with it: the processor re-applies
    # the rest from the log.
    with contextlib.suppress(FileNotFoundError):
        target.with_name(target.name + ".wal").unlink()
    os.replace(building, target)
    return records


@click.command()
@click.option("--repair", is_flag=True,
              help="Keep damage in the quarantine, and re-derive the store from the log where "
              "they disagree (the server must be stopped for that).")  # fmt: skip
@json_option
@data_dir_option
@errors_to_exit
def check(repair: bool, as_json: bool, data_dir: Path) -> None:
    """Verify the log and the store against it; exit 0 if all is well, 3 if not.

    Reads every segment (each frame's checksum and lengths; segments follow
    each other without gaps), then the store: each stream's applied position
    is on a frame boundary within the durable log, and the store counts as
    many records below it as the log holds. Read-only, and safe beside a
    running server. Damage already in DATA_DIR/quarantine is listed but does
    not fail the check; see docs/operations.md for what to do about the rest.
    """
    from tally.check import check_log, read_damage, total_bytes

    settings = Settings(data_dir=data_dir)
    if not settings.log_dir.is_dir():
        raise InvalidInput(f"{data_dir} holds no Tally log (no {settings.log_dir})",
                           field="data_dir")  # fmt: skip
    applied = _applied(settings)
    bar: Any
    try:
        with click.progressbar(length=total_bytes(data_dir), label="Checking the log",
                               file=sys.stderr, show_pos=True) as bar:  # fmt: skip
            report = check_log(data_dir, applied, bar.update)
    except OSError as exc:
        raise Unavailable(f"cannot read {exc.filename}: {exc.strerror}; make it readable "
                          "and check again", code="log_unreadable") from exc  # fmt: skip
    if repair:
        quarantine = Quarantine(data_dir, "tally check --repair")
        for stream in report.streams:
            for damage in stream.damage:
                quarantine.keep(damage, read_damage(data_dir, damage), quiet=True)
    if as_json:
        echo_json(report.to_json())
    else:
        _echo_report(report, data_dir)
    if repair:
        report = _repair(settings, report)
    sys.exit(0 if (report.clean if not repair else not _unrepaired(report)) else 3)


def _applied(settings: Settings) -> dict[str, Applied]:
    """The store's positions: from the running server, or from the store itself."""
    from tally.check import Applied

    if local.server_running(settings):
        status = local.request(settings, "GET", "/api/v1/status")
        return {
            s["name"]: Applied(s["applied_position"], s["applied_records"])
            for s in status["pipeline"]["streams"]
        }
    if not settings.store_path.exists():
        return {}
    from tally.server import open_store

    store = open_store(settings, read_only=True)
    try:
        with store.reading() as con:
            rows = con.execute("SELECT stream, position, records FROM positions").fetchall()
    finally:
        store.close()
    return {stream: Applied(position, records) for stream, position, records in rows}


def _echo_report(report: Report, data_dir: Path) -> None:
    echo_table(
        ["stream", "segments", "records", "bytes", "durable end", "damage", "store"],
        [
            (s.name, s.segments, f"{s.records:,}", f"{s.bytes:,}", f"{s.durable:,}",
             len(s.damage) + len(s.known_damage),
             "disagrees" if s.disagreements else "agrees")
            for s in report.streams
        ],
    )  # fmt: skip
    for s in report.streams:
        for damage in s.damage:
            click.echo(f"damage: {s.name} {damage.segment or '(no file)'} bytes {damage.start:,}"
                       f"-{damage.end:,}: {damage.reason}")  # fmt: skip
        for damage in s.known_damage:
            click.echo(f"known damage (in {data_dir / 'quarantine'}): {s.name} bytes "
                       f"{damage.start:,}-{damage.end:,}: {damage.reason}")  # fmt: skip
        for words in s.disagreements:
            click.echo(f"store: {s.name}: {words}")
    if report.clean:
        click.echo("The log is whole and the store agrees with it.")


def _unrepaired(report: Report) -> list[str]:
    return [f"{s.name}: {w}" for s in report.streams for w in s.disagreements]


def _repair(settings: Settings, report: Report) -> Report:
    """Re-derive the store where it disagrees with the log, if that loses nothing."""
    from tally.check import check_log

    disagreeing = [s for s in report.streams if s.disagreements]
    damaged = sum(len(s.damage) for s in report.streams)
    if damaged:
        click.echo(f"Kept {damaged} damaged ranges in {settings.data_dir / 'quarantine'}; "
                   "readers skip them, every valid frame around them is applied.")  # fmt: skip
    if not disagreeing:
        return report
    lossy = [s.name for s in disagreeing if not s.derivable]
    if lossy:
        click.echo(f"Not re-deriving the store: the log of {', '.join(lossy)} lost records "
                   "that the store holds, so a store made from the log would lose them too. "
                   "Restore the log from a backup (docs/operations.md).")  # fmt: skip
        return report
    if local.server_running(settings):
        raise Unavailable("stop tally serve to re-derive the store from the log "
                          "(damage, if any, is kept in the quarantine)")  # fmt: skip
    from tally.server import data_dir_lock

    with data_dir_lock(settings):
        records = rebuild_store(settings)
    click.echo(f"Re-derived the store from {records:,} log records.")
    return check_log(settings.data_dir, _applied(settings))


@click.group()
def alias() -> None:
    """Aliases: revoke one that should never have been made."""


@alias.command("revoke")
@click.argument("product")
@click.argument("identity_a")
@click.argument("identity_b")
@data_dir_option
@errors_to_exit
def alias_revoke(product: str, identity_a: str, identity_b: str, data_dir: Path) -> None:
    """Revoke the aliases between IDENTITY_A and IDENTITY_B in PRODUCT.

    The revocation goes into the log like any tracking call, so a rebuild keeps
    it; the people involved are re-derived as if those aliases had never been
    sent (aliases sent after the revocation count again).
    """
    settings = Settings(data_dir=data_dir)
    catalog = Catalog(settings.catalog_path)
    try:
        catalog.product(product)
        revoked = revoke_alias(settings.log_dir, product, identity_a, identity_b)
        catalog.record(local_actor(), ALIAS_REVOKE, product, {"a": revoked.a, "b": revoked.b})
    finally:
        catalog.close()
    running = local.server_running(settings)
    when = "now" if running else "when `tally serve` next starts"
    click.echo(
        f"Recorded the revocation of {identity_a} ~ {identity_b} in {product}; it applies {when}."
    )
