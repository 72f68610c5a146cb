"""The store (DESIGN §4): the tables that the processor alone writes and the
reports read, behind one contract (:mod:`tally.store.contract`), with DuckDB
(:mod:`tally.store.store`) as the engine behind it. Engines are chosen by
name (:data:`ENGINES`, :func:`open_engine`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tally.errors import InvalidInput
from tally.store.batch import ApplyStats, Progress
from tally.store.contract import Cursor, Engine, Opener, Reader, Writer
from tally.store.store import Store, open_duckdb

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "ApplyStats",
    "Cursor",
    "Engine",
    "Reader",
    "Store",
    "Writer",
    "open_engine",
]

#: Every engine, by name: a second one (ClickHouse) is a module beside
#: store.py and one entry here, and passes tests/test_store_contract.py.
ENGINES: dict[str, Opener] = {"duckdb": open_duckdb}
DEFAULT_ENGINE = "duckdb"


def open_engine(
    path: Path,
    *,
    engine: str = DEFAULT_ENGINE,
    read_only: bool = False,
    progress: Progress | None = None,
) -> Engine:
    """The store at ``path``, in ``engine`` (read-only: for commands that only
    look; ``progress`` is told how far a conversion on opening is)."""
    try:
        opener = ENGINES[engine]
    except KeyError:
        raise InvalidInput(
            f"no store engine {engine!r}; there is {', '.join(sorted(ENGINES))}", field="engine"
        ) from None
    return opener(path, read_only=read_only, progress=progress)


if TYPE_CHECKING:  # mypy --strict proves that the DuckDB engine keeps the contract
    import duckdb

    from tally.store.contract import Result, Staging
    from tally.store.store import DuckDBStaging

    def _conforms(
        store: Store, staging: DuckDBStaging, con: duckdb.DuckDBPyConnection
    ) -> tuple[Engine, Writer, Reader, Staging, Cursor, Result]:
        return store, store, store, staging, con, con
