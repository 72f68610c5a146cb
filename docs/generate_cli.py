"""Write docs/cli.md from the commands' own --help (run: python docs/generate_cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tally.cli import main

HEADER = """# Command-line reference

Generated from `--help` by `docs/generate_cli.py`; `make test` checks it is current.
"""


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        with click.Context(command) as ctx:
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                found += _walk(sub, [*path, name])
    return found


def render() -> str:
    parts = [HEADER]
    for path, command in _walk(main, ["tally"]):
        with click.Context(
            command,
            info_name=" ".join(path),
            terminal_width=100,
            help_option_names=["-h", "--help"],  # as the real command line inherits them
        ) as ctx:
            help_text = command.get_help(ctx)
        parts.append(f"\n## `{' '.join(path)}`\n\n```\n{help_text}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    target = Path(__file__).with_name("cli.md")
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
