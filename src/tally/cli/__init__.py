"""The ``tally`` command: a thin shell over the same functions as the API."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import click

from tally import __version__
from tally.audit import DEFAULT_LIMIT, MAX_LIMIT
from tally.catalog import Catalog
from tally.cli.options import (
    blocked_set,
    data_dir_option,
    echo_json,
    echo_table,
    errors_to_exit,
    json_option,
    pipeline_options,
    setting_option,
    show_time,
    size,
)
from tally.errors import Unavailable
from tally.permissions import restrict
from tally.settings import Settings


def _catalog(data_dir: Path) -> Catalog:
    return Catalog(Settings(data_dir=data_dir).catalog_path)


class _LazyGroup(click.Group):
    """Commands that read the store live in modules imported only when used, so
    that `tally serve`'s collector processes (which import this module) do not
    load DuckDB and Arrow."""

    lazy: ClassVar[dict[str, str]] = {
        "status": "tally.cli.inspect:status",
        "person": "tally.cli.inspect:person",
        "events": "tally.cli.inspect:events",
        "rejects": "tally.cli.inspect:rejects",
        "rebuild": "tally.cli.maintenance:rebuild",
        "check": "tally.cli.maintenance:check",
        "report": "tally.cli.report:report",
        "alias": "tally.cli.maintenance:alias",
        "backup": "tally.cli.backup:backup",
        "restore": "tally.cli.backup:restore",
        "import": "tally.cli.migrate:import_",
        "imports": "tally.cli.migrate:imports",
        "export": "tally.cli.export:export",
        "users": "tally.cli.users:users",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="tally")
def main() -> None:
    """Tally: self-hosted product analytics that speaks the KISSmetrics API.

    Start with `tally serve`, then point your KISSmetrics clients' tracking host
    at it. Every command takes --data-dir (or TALLY_DATA_DIR).
    """
    restrict()  # what any command creates in the data directory is the owner's only


# -- serve ------------------------------------------------------------------------------


@main.command()
@data_dir_option
@setting_option("host")
@setting_option("port", type=click.IntRange(1, 65535))
@setting_option("workers", type=click.IntRange(1, 256))
@setting_option("timeout", type=click.FloatRange(min=0.1))
@setting_option("backlog_mib", type=click.IntRange(1, 65536))
@setting_option("max_connections", type=click.IntRange(1, 1_000_000))
@setting_option("query_timeout", type=click.FloatRange(min=0.1))
@setting_option("query_memory", callback=size(minimum="16MB"), metavar="SIZE")
@setting_option("query_spill", callback=size(), metavar="SIZE")
@setting_option("query_concurrency", type=click.IntRange(1, 1024))
@setting_option("session_idle_minutes", type=click.FloatRange(min=0.01))
@setting_option("segment_mib", type=click.IntRange(1, 1024))
@setting_option("log_max_mib", type=click.IntRange(1, 65536))
@setting_option("defer_seconds", type=click.FloatRange(min=0))
@setting_option("catch_up_jobs", type=click.IntRange(0, 64))
@setting_option("import_dir", type=click.Path(file_okay=False, path_type=Path))
@setting_option("import_product")
@setting_option("max_import_bytes", callback=size(minimum="1MiB"), metavar="SIZE")
@pipeline_options
@errors_to_exit
def serve(
    data_dir: Path,
    host: str,
    port: int,
    workers: int | None,
    timeout: float,
    backlog_mib: int,
    max_connections: int,
    query_timeout: float,
    query_memory: int,
    query_spill: int,
    query_concurrency: int | None,
    session_idle_minutes: float,
    segment_mib: int,
    log_max_mib: int,
    defer_seconds: float,
    catch_up_jobs: int | None,
    import_dir: Path | None,
    import_product: str,
    max_import_bytes: int,
    blocked_identities: str,
    max_identities_per_person: int,
) -> None:
    """Run Tally: tracking endpoints, the JSON API, the dashboard and the log, on one port.

    On first start it creates the product `default` with an API key, an
    operator token and the dashboard account `admin` with a one-time password,
    and prints them. SIGTERM or Ctrl-C stop it cleanly: every
    request already answered is on disk.
    """
    from tally.cli.progress import BarOnDemand
    from tally.server import Started
    from tally.server import serve as run

    settings = Settings(
        data_dir=data_dir,
        host=host,
        port=port,
        workers=workers or 0,
        timeout=timeout,
        backlog_mib=backlog_mib,
        max_connections=max_connections,
        query_timeout=query_timeout,
        query_memory=query_memory,
        query_spill=query_spill,
        query_concurrency=query_concurrency or 0,
        session_idle_minutes=session_idle_minutes,
        segment_mib=segment_mib,
        log_max_mib=log_max_mib,
        defer_seconds=defer_seconds,
        catch_up_jobs=catch_up_jobs,
        blocked_identities=blocked_set(blocked_identities),
        max_identities_per_person=max_identities_per_person,
        import_dir=import_dir,
        import_product=import_product,
        max_import_bytes=max_import_bytes,
    )

    def announce(started: Started) -> None:
        click.echo(f"Tally {__version__} listening on {started.url} (data in {data_dir})")
        if started.first_start is None:
            return
        first = started.first_start
        product, token = first.product, first.token
        key = product.keys[0].key
        click.echo(f"\nCreated product '{product.name}' with API key:  {key}")
        click.echo(f"Operator token (shown once, keep it):   {token}")
        click.echo(f"Dashboard:  {started.url}/  account: {first.admin}  "
                   f"one-time password: {first.password}")  # fmt: skip
        click.echo("\nRecord an event:")
        click.echo(f"  curl '{started.url}/e?_k={key}&_p={quote('bob@example.com')}&_n=Signed+Up'")
        click.echo("See the log:")
        click.echo(f"  curl -H 'Authorization: Bearer {token}' {started.url}/api/v1/status\n")

    converting = BarOnDemand("Converting the store")  # only when an old store is converted
    try:
        run(settings, announce, converting)
    except OSError as exc:  # a file Tally needs and cannot use: one line, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        raise Unavailable(f"tally serve stopped:{where}: {exc.strerror or exc}") from exc
    finally:
        converting.close()


# -- products, keys, tokens ----------------------------------------------------------------


@main.group()
def products() -> None:
    """Create and list products (each has its own API keys and data)."""


@products.command("create")
@click.argument("name")
@click.option("--key", help="Use this API key (e.g. your existing KISSmetrics key).")
@click.option("--timezone", default="UTC", show_default=True,
              help="IANA time zone that reports use to cut days.")  # fmt: skip
@data_dir_option
@errors_to_exit
def products_create(name: str, key: str | None, timezone: str, data_dir: Path) -> None:
    """Create product NAME and print its API key."""
    product = _catalog(data_dir).create_product(name, key=key, timezone=timezone)
    click.echo(f"Created product '{product.name}' ({product.timezone}); API key: "
               f"{product.keys[0].key}")  # fmt: skip


@products.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_dir_option
@errors_to_exit
def products_list(as_json: bool, data_dir: Path) -> None:
    """List products with their keys."""
    items = _catalog(data_dir).products()
    if as_json:
        click.echo(json.dumps([
            {"name": p.name, "timezone": p.timezone, "revenue_property": p.revenue_property,
             "keys": [{"key": k.key, "revoked": k.revoked_ns is not None} for k in p.keys]}
            for p in items
        ], indent=2))  # fmt: skip
        return
    if not items:
        click.echo("No products yet: `tally serve` creates 'default' on first start.")
        return
    click.echo(f"{'PRODUCT':<20} {'TIME ZONE':<20} {'API KEY':<42} STATUS")
    for p in items:
        for k in p.keys:
            state = f"revoked {show_time(k.revoked_ns)}" if k.revoked_ns else "active"
            click.echo(f"{p.name:<20} {p.timezone:<20} {k.key:<42} {state}")


@main.group()
def keys() -> None:
    """Add and revoke API keys."""


@keys.command("add")
@click.argument("product")
@click.option("--key", help="Use this key instead of a generated one.")
@data_dir_option
@errors_to_exit
def keys_add(product: str, key: str | None, data_dir: Path) -> None:
    """Add an API key to PRODUCT and print it."""
    added = _catalog(data_dir).add_key(product, key=key)
    click.echo(added.key)


@keys.command("revoke")
@click.argument("key")
@data_dir_option
@errors_to_exit
def keys_revoke(key: str, data_dir: Path) -> None:
    """Revoke KEY: tracking calls received after now with it are rejected."""
    revoked = _catalog(data_dir).revoke_key(key)
    click.echo(f"Revoked key of product '{revoked.product}' at {show_time(revoked.revoked_ns)}")


@main.group()
def tokens() -> None:
    """Operator tokens for the API (Authorization: Bearer TOKEN).

    Each active token has a name of its own, by which it is listed and revoked.
    Changes take effect at once, also while the server runs.
    """


@tokens.command("create")
@click.option("--name", default="operator", show_default=True,
              help="The token's name: 1 to 64 letters, digits, '.', '_' or '-', not the name "
                   "of another active token.")  # fmt: skip
@data_dir_option
@errors_to_exit
def tokens_create(name: str, data_dir: Path) -> None:
    """Create an operator token and print it once (only its hash is stored).

    To replace a token, create one with another name and revoke the old one,
    or revoke the old one first and reuse its name.
    """
    click.echo(_catalog(data_dir).create_token(name))


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_dir_option
@errors_to_exit
def tokens_list(as_json: bool, data_dir: Path) -> None:
    """List operator tokens: name, created, last used, and whether revoked.

    "Last used" is the last request the API let in with the token, noted at
    most once a minute. Secrets are never shown: only their hashes are kept.
    """
    items = _catalog(data_dir).tokens()
    if as_json:
        click.echo(json.dumps([t.to_json() for t in items], indent=2))
        return
    if not items:
        click.echo("No operator tokens yet: `tally tokens create` makes one.")
        return
    width = max(len("TOKEN"), *(len(t.name) for t in items))
    click.echo(f"{'TOKEN':<{width}}  {'CREATED':<20}  {'LAST USED':<20}  STATUS")
    for t in items:
        used = show_time(t.last_used_ns) if t.last_used_ns else "never"
        state = f"revoked {show_time(t.revoked_ns)}" if t.revoked_ns else "active"
        click.echo(f"{t.name:<{width}}  {show_time(t.created_ns):<20}  {used:<20}  {state}")


@tokens.command("revoke")
@click.argument("name")
@click.option("--all", "every", is_flag=True,
              help="Revoke every active token named NAME (catalogs from before names were "
                   "unique may hold several).")  # fmt: skip
@data_dir_option
@errors_to_exit
def tokens_revoke(name: str, every: bool, data_dir: Path) -> None:
    """Revoke the active token named NAME, at once.

    The API refuses it from the next request on (401 revoked_token), also while
    the server runs. Revoking the last active token is allowed: `tally tokens
    create` on this machine makes a new one, and the CLI beside a running
    server needs none. Revoking a revoked token again changes nothing.
    """
    for t in _catalog(data_dir).revoke_token(name, every=every):
        click.echo(f"Revoked token '{t.name}' (created {show_time(t.created_ns)}) "
                   f"at {show_time(t.revoked_ns)}")  # fmt: skip


# -- audit ------------------------------------------------------------------------------------


@main.command("audit")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT,
              show_default=True, help="Show this many entries, the newest.")  # fmt: skip
@json_option
@data_dir_option
@errors_to_exit
def audit_log(limit: int, as_json: bool, data_dir: Path) -> None:
    """What operators changed, and who did it: newest first.

    Every change to products, API keys and operator tokens, every alias
    revocation and every replay of rejects, from the CLI or the API, and every
    import through the API (POST .../import). The actor
    is "token NAME" for the API, "cli" for this CLI through a running server,
    "cli (unix user NAME)" for a command that wrote the catalog itself. Never
    a token's secret; "user NAME" for the dashboard account NAME. Actions:
    product.create, product.update, key.add, key.revoke, token.create,
    token.revoke, alias.revoke, rejects.replay, user.create, user.delete,
    user.password, saved.create, saved.delete, import.write.
    """
    entries = _catalog(data_dir).audit_entries(limit)
    if as_json:
        echo_json({"entries": [e.to_json() for e in entries]})
        return
    echo_table(
        ["time", "actor", "action", "target", "details"],
        [(show_time(e.time_ns), e.actor, e.action, e.target, _details(e.details))
         for e in entries],
        empty="No changes recorded yet.",
    )  # fmt: skip


def _details(details: dict[str, object]) -> str:
    return ", ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}"
        for k, v in details.items()
        if v is not None
    )
