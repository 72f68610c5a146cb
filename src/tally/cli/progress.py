"""Progress bars for long commands (import, export, rebuild), with rich.

A bar shows how much is done, the records so far, their rate and the time
left; on stderr, and only when stderr is a terminal: a command whose output
goes to a file or a pipe says nothing but its result.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Rate(ProgressColumn):
    """Records per second since the bar started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        records = int(task.fields.get("records", 0))
        rate = records / elapsed if elapsed > 0 else 0.0
        return Text(f"{records:,} records  {rate:,.0f}/s", style="progress.data.speed")


class Bar:
    """What a command tells its bar: how far it is (in the bar's unit, e.g.
    bytes of the source) and how many records it has done."""

    def __init__(self, progress: Progress | None = None, task: int = 0) -> None:
        self._progress = progress
        self._task = task
        self.started = time.monotonic()

    def update(self, done: int, records: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, records=records)  # type: ignore[arg-type]


class BarOnDemand:
    """A bar that appears when a long step first says how far it is (the
    store's conversion, :class:`tally.store.store.Store`'s ``progress``), and
    goes when it is done or :meth:`close` is called."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._open = ExitStack()
        self._bar: Bar | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = self._open.enter_context(progress_bar(self.label, total))
        self._bar.update(done, done)
        if done >= total:
            self.close()

    def close(self) -> None:
        self._open.close()


@contextmanager
def progress_bar(label: str, total: int | None) -> Iterator[Bar]:
    """A bar on stderr when it is a terminal, else one that says nothing."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield Bar()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=total or None, records=0)
        yield Bar(progress, task)
