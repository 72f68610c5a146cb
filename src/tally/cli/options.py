"""What every command shares: settings as options, errors as exit codes, tables."""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from tally.errors import TallyError
from tally.settings import SETTINGS, parse_size

F = TypeVar("F", bound=Callable[..., Any])

_SETTINGS = {s.name: s for s in SETTINGS}


def setting_option(name: str, **kwargs: Any) -> Callable[[F], F]:
    """A flag for a setting of the table in tally.settings, with its variable."""
    setting = _SETTINGS[name]
    return click.option(
        setting.flag,
        name,
        envvar=setting.envvar,
        default=setting.default,
        show_default=setting.default is not None,
        show_envvar=True,
        help=setting.help,
        **kwargs,
    )


def size(minimum: str = "0B") -> Callable[[click.Context, click.Parameter, Any], int]:
    """An option's callback: a size such as ``1GB`` or ``512MiB``
    (tally.settings.parse_size), as bytes, at least ``minimum``."""

    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> int:
        try:
            found = parse_size(str(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        if found < parse_size(minimum):
            raise click.BadParameter(f"{value!r} is less than {minimum}", ctx, param)
        return found

    return convert


data_dir_option = setting_option("data_dir", type=click.Path(file_okay=False, path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
product_option = click.option(
    "--product", "-p", default="default", show_default=True, help="The product to look in."
)


def errors_to_exit(func: F) -> F:
    """A TallyError becomes one line on stderr and exit status 1 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TallyError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def show_time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "") -> None:
    """A plain aligned table; long cells are cut so that rows stay on one line."""
    if not rows:
        if empty:
            click.echo(empty)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def pipeline_options(func: F) -> F:
    """The settings that decide how records apply: serve, rebuild and replay share them,
    so that a rebuild gives what the live pipeline gave."""
    func = setting_option("blocked_identities")(func)
    return setting_option("max_identities_per_person", type=click.IntRange(1, 10**7))(func)


def blocked_set(text: str) -> frozenset[str]:
    return frozenset(item.strip() for item in text.split(",") if item.strip())


@contextmanager
def ctrl_c_asks_to_stop() -> Iterator[threading.Event]:
    """Ctrl-C sets the event, for a long command to stop where it can (an
    import after the chunk it is writing, a rebuild after its batch).
    Raised wherever the main thread happened to be, KeyboardInterrupt could
    leave a lock held that another thread then waits on forever; a second
    Ctrl-C raises it all the same."""
    asked = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def ask(signum: int, frame: FrameType | None) -> None:
        asked.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, ask)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)
