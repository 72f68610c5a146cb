"""What the migration tests share: source lines, and the store a data directory makes."""

from __future__ import annotations

import json
from pathlib import Path

from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store


def apply(data_dir: Path) -> Store:
    """The store after the real processor has applied the whole log."""
    settings = Settings(data_dir=data_dir)
    store = Store(settings.store_path)
    Processor(settings, store).catch_up()
    return store


def lines(*records: object) -> str:
    """JSON lines: a dict as JSON, a str as it is."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
