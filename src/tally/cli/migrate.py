"""Imports (SPEC §10): `tally import km|csv|json` and `tally imports`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tally import local
from tally.catalog import Catalog
from tally.cli.options import (
    ctrl_c_asks_to_stop,
    data_dir_option,
    echo_json,
    echo_table,
    errors_to_exit,
    json_option,
    show_time,
)
from tally.cli.progress import progress_bar
from tally.errors import Unavailable
from tally.migrate.checkpoint import (
    ImportState,
    check_name,
    default_name,
    list_imports,
    read_state,
)
from tally.migrate.formats import open_source
from tally.migrate.importer import (
    ReadAhead,
    check_resumable,
    product_key,
    write_chunks,
)
from tally.migrate.parallel import framed_in_parallel
from tally.migrate.sources import Position
from tally.settings import Settings

_product = click.option("--product", "-p", default="default", show_default=True,
                        help="The product the records belong to.")  # fmt: skip
_jobs = click.option("--jobs", "-j", type=click.IntRange(1, 64),
                     help="Worker processes that parse the source (JSON lines); default: one "
                     "per CPU (at most 4) for a source over 16 MiB, else none.")  # fmt: skip
_name = click.option("--name", help="The import's name (its log stream is i-NAME); default: "
                     "from the source's file or folder name.")  # fmt: skip


@click.group("import")
def import_() -> None:
    """Import history into a product, through the log (docs/migration.md).

    Each import writes a log stream of its own, i-NAME, and keeps a checkpoint
    beside it: interrupted, the same command continues where it stopped; run
    again once complete, it does nothing (and records written twice are
    absorbed as duplicates, SPEC §4). Records apply at once when `tally serve`
    runs, else when it next starts. A record that cannot be applied is a
    reject naming its file and line (`tally rejects`).
    """


@import_.command("km")
@click.argument("path", type=click.Path(path_type=Path))
@_product
@_name
@_jobs
@data_dir_option
@errors_to_exit
def import_km(path: Path, product: str, name: str | None, jobs: int | None, data_dir: Path) -> None:
    """Import a KISSmetrics raw data export: a folder of revisions/N.json (in
    index.csv's order when there is one, else by number), or one such file.

    One JSON object a line: events (_n), property sets, aliases (_p2); the
    time is each record's _t (a record without one is rejected). Octal
    escapes (\\302\\243) are decoded; gzip files are read as they are.
    """
    _run("km", path, product, name, jobs, data_dir)


@import_.command("csv")
@click.argument("path", type=click.Path(path_type=Path))
@_product
@_name
@data_dir_option
@errors_to_exit
def import_csv(path: Path, product: str, name: str | None, data_dir: Path) -> None:
    """Import a file in the KISSmetrics CSV import format.

    Columns: Identity, Timestamp (Unix time or ISO 8601), and Event and/or
    Prop:<name>; a row with an Alias cell aliases its Identity to it. A header
    without these is refused before anything is written.
    """
    _run("csv", path, product, name, 1, data_dir)


@import_.command("json")
@click.argument("path", type=click.Path(path_type=Path))
@_product
@_name
@_jobs
@data_dir_option
@errors_to_exit
def import_json(
    path: Path, product: str, name: str | None, jobs: int | None, data_dir: Path
) -> None:
    """Import JSON lines in the KISSmetrics export's record shape
    ({"_p", "_t", "_n", properties…}, {"_p", "_t", "_p2"} for an alias)."""
    _run("json", path, product, name, jobs, data_dir)


#: A source larger than this is parsed by worker processes (--jobs).
PARALLEL_BYTES = 16 * 1024 * 1024
MAX_JOBS = 4


def _run(
    fmt: str, path: Path, product: str, name: str | None, jobs: int | None, data_dir: Path
) -> None:
    settings = Settings(data_dir=data_dir)
    if not settings.catalog_path.exists():
        raise Unavailable(f"no Tally data in {data_dir}: start `tally serve` once (it creates "
                          "the product default), or pass --data-dir")  # fmt: skip
    source = open_source(fmt, path)  # refuses what is not of the format, before any write
    name = check_name(name or default_name(path))
    fresh = ImportState(name, fmt, str(path.resolve()), product, total=source.total)
    state = check_resumable(read_state(settings.log_dir, name), fresh)
    if state.complete:
        click.echo(f"The import {name} is complete ({state.records:,} records from "
                   f"{state.source}); nothing to do.")  # fmt: skip
        return
    catalog = Catalog(settings.catalog_path)
    try:
        key = product_key(catalog, product)
    finally:
        catalog.close()
    resumed = state.position != Position()
    if resumed:
        click.echo(f"Continuing the import {name} from {state.records:,} records.", err=True)
    if jobs is None:  # worth the workers' start only for a large source
        jobs = min(os.cpu_count() or 1, MAX_JOBS) if source.total > PARALLEL_BYTES else 1
    if fmt == "csv":
        jobs = 1  # a quoted cell can span lines: one process reads them in order
    with ctrl_c_asks_to_stop() as asked:
        try:
            with progress_bar(f"Importing {name}", state.total) as bar:
                if jobs > 1:
                    made = framed_in_parallel(source.files, state.position, key, jobs)
                else:
                    made = source.chunks(state.position, key)
                with ReadAhead(made, stop=asked.is_set) as chunks:
                    state = write_chunks(settings.log_dir, state, chunks,
                                         lambda s: bar.update(s.position.done, s.records),
                                         stop=asked.is_set)  # fmt: skip
        except KeyboardInterrupt:  # a second Ctrl-C
            asked.set()
    if asked.is_set() and not state.complete:
        saved = read_state(settings.log_dir, name) or state
        click.echo(f"Interrupted after {saved.records:,} records: run the same command again "
                   "to continue.", err=True)  # fmt: skip
        sys.exit(130)
    when = "now" if local.server_running(settings) else "when `tally serve` next starts"
    click.echo(f"Imported {state.records:,} records from {state.source} into {product} "
               f"(log stream {state.stream}); they apply {when}.")  # fmt: skip
    if state.rejected:
        shown = ", ".join(f"{n:,} {reason}" for reason, n in sorted(state.rejected.items()))
        click.echo(f"Lines that are not records: {shown}; `tally rejects` lists each with its "
                   "file and line.")  # fmt: skip


@click.command()
@json_option
@data_dir_option
@errors_to_exit
def imports(as_json: bool, data_dir: Path) -> None:
    """List imports: name, source, product, records written, progress, state."""
    found = list_imports(Settings(data_dir=data_dir).log_dir)
    if as_json:
        echo_json({"imports": [s.to_json() for s in found]})
        return
    echo_table(
        ["name", "format", "product", "state", "records", "rejected", "progress", "updated",
         "source"],
        [(s.name, s.format, s.product, s.state, f"{s.records:,}", sum(s.rejected.values()),
          _percent(s), show_time(s.updated_ns), s.source) for s in found],
        empty="No imports yet.",
    )  # fmt: skip


def _percent(state: ImportState) -> str:
    if state.complete:
        return "100%"
    if not state.total:
        return "-"
    return f"{min(state.position.done / state.total, 1):.0%}"
