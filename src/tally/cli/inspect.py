"""Looking at the data: status, person, events, rejects (and replaying them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tally import local
from tally.audit import REJECTS_REPLAY, local_actor
from tally.catalog import Catalog
from tally.cli.options import (
    blocked_set,
    data_dir_option,
    echo_json,
    echo_table,
    errors_to_exit,
    json_option,
    pipeline_options,
    product_option,
)
from tally.errors import Unavailable
from tally.log.reader import LogReader
from tally.reports.sql import Dialect
from tally.settings import Settings
from tally.store.contract import Cursor
from tally.views.events import events_view
from tally.views.person import person_view
from tally.views.rejects import rejects_view
from tally.views.status import status_view


def _fetch(
    settings: Settings,
    api_path: str,
    params: dict[str, Any],
    view: Callable[[Cursor], dict[str, Any]],
    product: str | None = None,
) -> dict[str, Any]:
    """Ask the running server, or read the store directly when none runs."""
    if local.server_running(settings):
        answer: dict[str, Any] = local.request(settings, "GET", api_path, params)
        return answer
    if product is not None:
        _check_product(settings, product)
    return read_store(settings, view)


def read_store(settings: Settings, view: Callable[[Cursor], dict[str, Any]]) -> dict[str, Any]:
    """``view`` on a cursor of the store, opened read-only (no server runs)."""
    return read_store_in_dialect(settings, lambda cursor, _: view(cursor))


def read_store_in_dialect(
    settings: Settings, view: Callable[[Cursor, Dialect], dict[str, Any]]
) -> dict[str, Any]:
    """``view`` on a cursor of the store and its dialect (a report), opened
    read-only (no server runs)."""
    if not settings.store_path.exists():
        raise Unavailable(f"no store in {settings.data_dir} yet: start `tally serve` first")
    from tally.server import open_store

    store = open_store(settings, read_only=True)
    try:
        with store.reading() as cursor:
            return view(cursor, store.dialect)
    finally:
        store.close()


@click.command()
@data_dir_option
@json_option
@errors_to_exit
def status(data_dir: Path, as_json: bool) -> None:
    """How the pipeline keeps up: the log, the processor's lag, the store's counts."""
    settings = Settings(data_dir=data_dir)
    log_dir = settings.log_dir
    doc = _fetch(
        settings,
        "/api/v1/status",
        {},
        lambda con: status_view(con, LogReader(log_dir)),
    )
    if as_json:
        echo_json(doc)
        return
    log_part, pipeline, store = doc["log"], doc["pipeline"], doc["store"]
    click.echo(f"Tally {doc['version']}")
    click.echo(
        f"Log:    {log_part['records']:,} records, {log_part['bytes']:,} bytes, "
        f"{log_part['streams']} streams"
    )
    waiting = (pipeline.get("processor") or {}).get("waiting_for_ingest")
    click.echo(
        f"Lag:    {pipeline['lag_records']:,} records, {pipeline['lag_seconds']} s"
        + (
            "  (the processor waits while ingest saturates the machine: --defer-seconds)"
            if waiting
            else ""
        )
    )
    click.echo(
        f"Store:  {store['events']:,} events, {store['people']:,} people, "
        f"{store['property_values']:,} property values, {store['aliases']:,} aliases"
    )
    click.echo(
        f"        {store['duplicates']:,} duplicates absorbed, {store['rejected']:,} "
        f"rejected, {store['properties_dropped']:,} properties dropped"
    )
    if store["rejects"]:
        click.echo("Rejects by reason:")
        echo_table(["reason", "records"], sorted(store["rejects"].items()))
    click.echo("Streams:")
    echo_table(
        ["stream", "log position", "applied", "lag records", "lag seconds"],
        [
            (
                s["name"],
                s["log_position"],
                s["applied_position"],
                s["lag_records"],
                s["lag_seconds"],
            )
            for s in pipeline["streams"]
        ],
    )
    processor = pipeline.get("processor")
    if processor and processor.get("error"):
        error = processor["error"]
        click.echo(f"Processor failing since {error['since']} ({error['attempts']} attempts; "
                   f"it retries, nothing is lost): {error['message']}")  # fmt: skip
    damage = log_part.get("damage") or []
    if damage:
        click.echo(f"Damage in the log: {len(damage)} ranges skipped, kept in "
                   f"{settings.data_dir / 'quarantine'} (see `tally check`):")  # fmt: skip
        echo_table(
            ["stream", "segment", "from", "to", "reason"],
            [(d["stream"], d["segment"], d["start"], d["end"], d["reason"]) for d in damage],
        )


@click.command()
@click.argument("identity")
@product_option
@click.option("--page", default=1, show_default=True, help="Page of the event timeline.")
@click.option("--page-size", default=20, show_default=True, help="Events per page.")
@data_dir_option
@json_option
@errors_to_exit
def person(
    identity: str, product: str, page: int, page_size: int, data_dir: Path, as_json: bool
) -> None:
    """One person: identities, properties with their history, why, and events.

    IDENTITY is any identity of the person (as sent in _p or aliased with /a).
    """
    settings = Settings(data_dir=data_dir)
    doc = _fetch(
        settings,
        local.product_path(product, "people", identity),
        {"page": page, "page_size": page_size},
        lambda con: person_view(con, product, identity, page=page, page_size=page_size),
        product,
    )
    if as_json:
        echo_json(doc)
        return
    click.echo(f"Person {doc['display']} in {doc['product']} (named {doc['person']})")
    click.echo(f"Identities: {', '.join(doc['identities'])}")
    for explanation in doc["aliases"]["explanations"]:
        steps = "; ".join(f"{e['a']} ~ {e['b']} at {e['time']}" for e in explanation["path"])
        click.echo(f"  {doc['identity']} ~ {explanation['identity']}: {steps}")
    click.echo("\nProperties:")
    echo_table(
        ["name", "value", "first value", "first time", "last time", "values"],
        [
            (p["name"], p["value"], p["first_value"], p["first_time"], p["last_time"], p["values"])
            for p in doc["properties"]
        ],
        empty="  (none)",
    )
    events = doc["events"]
    click.echo(f"\nEvents ({events['total']:,}, newest first, page {events['page']}):")
    echo_table(
        ["time", "event", "identity", "properties"],
        [
            (
                e["time"],
                e["event"],
                e["identity"],
                ", ".join(f"{k}={v}" for k, v in e["properties"].items()),
            )
            for e in events["items"]
        ],
        empty="  (none)",
    )


@click.command()
@product_option
@click.option("--event", "-e", help="Only this event (any spelling of its name).")
@click.option("--identity", "-i", help="Only this person (any of their identities).")
@click.option("--from", "time_from", help="From this ISO date or time (UTC), inclusive.")
@click.option("--to", "time_to", help="Until this ISO date or time (UTC), exclusive.")
@click.option("--page", default=1, show_default=True)
@click.option("--page-size", default=50, show_default=True)
@data_dir_option
@json_option
@errors_to_exit
def events(
    product: str,
    event: str | None,
    identity: str | None,
    time_from: str | None,
    time_to: str | None,
    page: int,
    page_size: int,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Events of a product, newest first."""
    settings = Settings(data_dir=data_dir)
    params = {
        "event": event,
        "identity": identity,
        "from": time_from,
        "to": time_to,
        "page": page,
        "page_size": page_size,
    }
    doc = _fetch(
        settings,
        local.product_path(product, "events"),
        params,
        lambda con: events_view(
            con,
            product,
            event=event,
            identity=identity,
            time_from=time_from,
            time_to=time_to,
            page=page,
            page_size=page_size,
        ),
        product,
    )
    if as_json:
        echo_json(doc)
        return
    echo_table(
        ["time", "event", "person", "identity", "properties"],
        [
            (
                e["time"],
                e["event"],
                e["display"],
                e["identity"],
                ", ".join(f"{k}={v}" for k, v in e["properties"].items()),
            )
            for e in doc["items"]
        ],
        empty="No events.",
    )
    click.echo(f"({len(doc['items'])} of {doc['total']:,}, page {doc['page']})")


@click.group(invoke_without_command=True)
@product_option
@click.option("--reason", "-r", help="Only this reason code (e.g. unknown_key).")
@click.option("--page", default=1, show_default=True)
@click.option("--page-size", default=50, show_default=True)
@data_dir_option
@json_option
@click.pass_context
@errors_to_exit
def rejects(
    ctx: click.Context,
    product: str,
    reason: str | None,
    page: int,
    page_size: int,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Rejected records with their reason and original parameters (SPEC §7).

    Records whose API key is unknown belong to no product yet and are listed
    with every product. `tally rejects replay` applies them again.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings(data_dir=data_dir)
    doc = _fetch(
        settings,
        local.product_path(product, "rejects"),
        {"reason": reason, "page": page, "page_size": page_size},
        lambda con: rejects_view(con, product, reason=reason, page=page, page_size=page_size),
        product,
    )
    if as_json:
        echo_json(doc)
        return
    echo_table(
        ["received", "reason", "path", "parameters", "detail"],
        [
            (
                r["received"],
                r["reason"],
                r["path"],
                "&".join(f"{k}={v}" for k, v in r["params"]),
                r["detail"],
            )
            for r in doc["items"]
        ],
        empty="No rejected records.",
    )
    by_reason = ", ".join(f"{k}: {v:,}" for k, v in doc["by_reason"].items())
    click.echo(f"({len(doc['items'])} of {doc['total']:,}; by reason: {by_reason or 'none'})")


@rejects.command("replay")
@product_option
@click.option("--reason", "-r", help="Only rejects with this reason code.")
@data_dir_option
@pipeline_options
@json_option
@errors_to_exit
def rejects_replay(
    product: str,
    reason: str | None,
    data_dir: Path,
    blocked_identities: str,
    max_identities_per_person: int,
    as_json: bool,
) -> None:
    """Apply rejected records again, e.g. after adding the API key they used."""
    settings = Settings(
        data_dir=data_dir,
        blocked_identities=blocked_set(blocked_identities),
        max_identities_per_person=max_identities_per_person,
    )
    if local.server_running(settings):
        result = local.request(
            settings,
            "POST",
            local.product_path(product, "rejects", "replay"),
            body={"reason": reason},
        )
    else:
        result = _replay_offline(settings, product, reason)
    if as_json:
        echo_json(result)
        return
    still = ", ".join(f"{k}: {v}" for k, v in result["rejected"].items()) or "none"
    click.echo(
        f"Replayed {result['replayed']:,} records: {result['applied']:,} applied, "
        f"{result['duplicates']:,} duplicates, still rejected: {still}"
    )


def _replay_offline(settings: Settings, product: str, reason: str | None) -> dict[str, Any]:
    from tally.processor import Processor
    from tally.server import data_dir_lock, open_store

    _check_product(settings, product)
    with data_dir_lock(settings):
        store = open_store(settings)
        try:
            result = Processor(settings, store).replay(product, reason)
        finally:
            store.close()
    # With a server running, the replay is the API's, and it records it.
    catalog = Catalog(settings.catalog_path)
    try:
        catalog.record(local_actor(), REJECTS_REPLAY, product, {"reason": reason, **result})
    finally:
        catalog.close()
    return result


def _check_product(settings: Settings, product: str) -> None:
    """NotFound, as the API answers, for a product that does not exist."""
    catalog = Catalog(settings.catalog_path)
    try:
        catalog.product(product)
    finally:
        catalog.close()
