"""Changing the store from the log: rebuild, and revoking an alias."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click

from tally import local
from tally.catalog import Catalog
from tally.cli.options import (
    blocked_set,
    data_dir_option,
    errors_to_exit,
    pipeline_options,
)
from tally.log.reader import LogReader
from tally.operations import revoke_alias
from tally.settings import Settings

#: Larger than the live processor's batches: fewer commits, and each table's
#: rows are written as whole row groups (two batches are in memory at once).
REBUILD_BATCH_RECORDS = 100_000


@click.command()
@data_dir_option
@pipeline_options
@errors_to_exit
def rebuild(data_dir: Path, blocked_identities: str, max_identities_per_person: int) -> None:
    """Recompute the whole store from the log (the server must be stopped).

    The new store is built beside the old one and replaces it only when it is
    complete, so an interrupted rebuild changes nothing. Use it after changing
    --blocked-identities or --max-identities-per-person, or to check that the
    live store is what the log says.
    """
    from tally.processor import Processor
    from tally.server import data_dir_lock
    from tally.store import Store

    settings = Settings(
        data_dir=data_dir,
        blocked_identities=blocked_set(blocked_identities),
        max_identities_per_person=max_identities_per_person,
    )
    with data_dir_lock(settings):
        target = settings.store_path
        building = target.with_name(target.name + ".rebuild")
        for stale in (building, building.with_name(building.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        reader = LogReader(settings.log_dir)
        total = sum(reader.durable(s) for s in reader.streams())
        store = Store(building)
        try:
            processor = Processor(settings, store)
            bar: Any
            with store.bulk():
                with click.progressbar(
                    length=total, label="Rebuilding", show_pos=True, item_show_func=lambda _: None
                ) as bar:
                    done = 0

                    def advance(_: int) -> None:
                        nonlocal done
                        reached = sum(store.positions().values())
                        bar.update(reached - done)
                        done = reached

                    records = processor.catch_up(advance, limit=REBUILD_BATCH_RECORDS)
                click.echo("Indexing identities for the person page…")
            store.con.execute("CHECKPOINT")
        finally:
            store.close()
        os.replace(building, target)
        with contextlib.suppress(FileNotFoundError):
            target.with_name(target.name + ".wal").unlink()
    click.echo(f"Rebuilt {target} from {records:,} log records.")


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
    finally:
        catalog.close()
    revoke_alias(settings.log_dir, product, identity_a, identity_b)
    running = local.server_running(settings)
    when = "now" if running else "when `tally serve` next starts"
    click.echo(
        f"Recorded the revocation of {identity_a} ~ {identity_b} in {product}; it applies {when}."
    )
