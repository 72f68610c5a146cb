"""``tally users``: the dashboard's accounts (tally.accounts)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tally.accounts import ROLES, Accounts
from tally.catalog import Catalog
from tally.cli.options import data_dir_option, echo_json, echo_table, errors_to_exit, show_time
from tally.errors import InvalidInput
from tally.settings import Settings


def _accounts(data_dir: Path) -> Accounts:
    return Accounts(Catalog(Settings(data_dir=data_dir).catalog_path))


def _read_password() -> str:
    """Prompted (twice, hidden) on a terminal; else the first line of standard input."""
    if sys.stdin.isatty():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise InvalidInput("no password on standard input", field="password")
    return line


@click.group()
def users() -> None:
    """Accounts that sign in to the dashboard.

    An admin changes products, keys, tokens and accounts from the dashboard; a
    viewer reads every page of every product and changes nothing. Passwords are
    read from standard input when it is not a terminal (one line), prompted
    otherwise; they are stored as argon2 hashes.
    """


@users.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True,
              help="admin: may change things; viewer: reads only.")  # fmt: skip
@data_dir_option
@errors_to_exit
def users_create(name: str, role: str, data_dir: Path) -> None:
    """Create the account NAME (its password from standard input or a prompt)."""
    user = _accounts(data_dir).create(name, _read_password(), role=role)
    click.echo(f"Created {user.role} account '{user.name}'")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_dir_option
@errors_to_exit
def users_list(as_json: bool, data_dir: Path) -> None:
    """List the accounts (never their passwords)."""
    found = _accounts(data_dir).users()
    if as_json:
        echo_json({"users": [u.to_json() for u in found]})
        return
    echo_table(
        ["name", "role", "created", "must change password"],
        [(u.name, u.role, show_time(u.created_ns), "yes" if u.must_change else "no")
         for u in found],
        empty="No accounts.",
    )  # fmt: skip


@users.command("delete")
@click.argument("name")
@data_dir_option
@errors_to_exit
def users_delete(name: str, data_dir: Path) -> None:
    """Delete the account NAME; its sessions end at once."""
    _accounts(data_dir).delete(name)
    click.echo(f"Deleted account '{name}'")


@users.command("password")
@click.argument("name")
@data_dir_option
@errors_to_exit
def users_password(name: str, data_dir: Path) -> None:
    """Set a new password for NAME (from standard input or a prompt); its sessions end."""
    _accounts(data_dir).set_password(name, _read_password())
    click.echo(f"Changed the password of '{name}'")
