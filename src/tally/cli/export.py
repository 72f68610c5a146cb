"""Exports (SPEC §10): `tally export events|people|km`."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click
import duckdb

from tally import local
from tally.cli.inspect import _check_product
from tally.cli.options import data_dir_option, errors_to_exit, product_option
from tally.cli.progress import progress_bar
from tally.errors import Unavailable
from tally.migrate.exports import count_rows, event_filter, export_bytes
from tally.migrate.kmexport import export_km
from tally.migrate.writers import EXPORT_FORMATS
from tally.settings import Settings
from tally.store.store import as_duckdb

#: DuckDB's memory for an export (issue 13: an export stays under 500 MiB).
EXPORT_MEMORY = "150MB"

_format = click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="csv",
                       show_default=True, help="CSV (a Prop:<name> column a property), JSON "
                       "lines, or Parquet (a row group a batch).")  # fmt: skip
_output = click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                       help="Write to FILE (whole or not at all) instead of stdout.")  # fmt: skip


@click.group()
def export() -> None:
    """Export a product's data (docs/migration.md); streamed, in bounded memory.

    Times are UTC, names their display names, and each identity's person is
    its person now. Works beside a running server (through it) or without one.
    """


@export.command("events")
@_format
@click.option("--from", "time_from", help="Only events at or after this time (ISO or Unix, UTC).")
@click.option("--to", "time_to", help="Only events before this time (ISO or Unix, UTC).")
@click.option("--event", help="Only this event (any spelling).")
@_output
@product_option
@data_dir_option
@errors_to_exit
def export_events(
    fmt: str,
    time_from: str | None,
    time_to: str | None,
    event: str | None,
    output: Path | None,
    product: str,
    data_dir: Path,
) -> None:
    """Every event: time, event, person, identity, properties (and metadata),
    oldest first."""
    params = {"format": fmt, "from": time_from, "to": time_to, "event": event}
    _export(Settings(data_dir=data_dir), product, "events", fmt, params, output)


@export.command("people")
@_format
@_output
@product_option
@data_dir_option
@errors_to_exit
def export_people(fmt: str, output: Path | None, product: str, data_dir: Path) -> None:
    """Every person: their identities and the current value of each property."""
    _export(Settings(data_dir=data_dir), product, "people", fmt, {"format": fmt}, output)


@export.command("km")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@product_option
@data_dir_option
@errors_to_exit
def export_kissmetrics(dest: Path, product: str, data_dir: Path) -> None:
    """Write KISSmetrics' export layout into DEST (new, or an empty folder):
    revisions/N.json (at most 64 MiB each), index.csv and status.csv.

    `tally import km DEST` into another data directory gives the same reports.
    """
    settings = Settings(data_dir=data_dir)
    if local.server_running(settings):
        done = local.request(settings, "POST", local.product_path(product, "export", "km"),
                             body={"dest": str(dest.resolve())}, timeout=24 * 3600)  # fmt: skip
        records, files = done["records"], done["files"]
    else:
        _check_product(settings, product)
        with _store(settings) as con:
            total = count_rows(con, product, "events")
            with progress_bar(f"Exporting {product}", total) as bar:
                written = export_km(con, product, dest,
                                    on_batch=lambda n: bar.update(n, n))  # fmt: skip
        records, files = written.records, len(written.files)
    click.echo(f"Exported {records:,} records of {product} into {dest} ({files} revision files).")


def _export(
    settings: Settings,
    product: str,
    kind: str,
    fmt: str,
    params: dict[str, str | None],
    output: Path | None,
) -> None:
    if local.server_running(settings):
        chunks = local.stream(settings, local.product_path(product, "export", kind), params)
        _write(chunks, output)
        return
    _check_product(settings, product)
    f = event_filter(params.get("from"), params.get("to"), params.get("event"))
    with _store(settings) as con:
        total = count_rows(con, product, kind, f)
        with progress_bar(f"Exporting {kind}", total) as bar:
            _write(export_bytes(con, product, kind, fmt, f), output)
            bar.update(total, total)


def _write(chunks: Iterator[bytes], output: Path | None) -> None:
    if output is None:
        out: BinaryIO = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return
    partial = output.with_name(output.name + ".partial")
    try:
        with open(partial, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


@contextlib.contextmanager
def _store(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store's DuckDB connection: exports read DuckDB's Arrow batches
    (docs/store.md, "What a second engine provides")."""
    if not settings.store_path.exists():
        raise Unavailable(f"no store in {settings.data_dir} yet: start `tally serve` first")
    from tally.server import open_store

    store = open_store(settings, read_only=True)
    # Bounded memory whatever the size: DuckDB spills the sort of a large
    # export to a temporary file beyond this.
    try:
        con = as_duckdb(store, "an export")
        con.execute(f"SET memory_limit = '{EXPORT_MEMORY}'")
        con.execute("SET temp_directory = ?", [tempfile.gettempdir()])
        yield con
    finally:
        store.close()
