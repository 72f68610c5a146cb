"""Running a report's :class:`~tally.reports.sql.Sql` on DuckDB, each text parsed once.

A report's text depends only on the shape of its question (how many steps,
which filters), never on its values, which are bound (DESIGN §5): the same
few texts come back request after request. DuckDB's parser takes 0.5 to 0.7 ms
of a funnel's or a people search's 3 to 5 ms on a store where their SQL finds
nothing (docs/benchmarks.md, "API floor"), so each text is parsed once and
its parsed statement kept; DuckDB copies a parsed statement to run it, so one
serves every cursor and thread. Binding and planning still happen on every
call: DuckDB's Python API cannot keep a plan. A cursor of another engine
(tally.store.contract.Cursor) is given the text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import duckdb

from tally.store.contract import Cursor, Result

if TYPE_CHECKING:  # (tally.reports.sql runs its own queries through this module)
    from tally.reports.sql import Sql

#: The parsed statements kept, least recently used dropped first, bounded by
#: the length of their texts: a parsed statement takes about 20 bytes per
#: character of its text (a funnel's 1,769 characters, 33 KiB; a people search
#: of 50 conditions, 7,596 characters, 149 KiB), so that a client asking ever
#: new shapes holds at most ~5 MiB here (issue 14), while the ~100 shapes of
#: everyday questions all stay parsed.
KEPT_CHARS = 256 * 1024
#: A text longer than this is parsed every time (it is a rare, heavy question).
LONGEST_KEPT = 32 * 1024


class _Kept:
    """The parsed statements by text, most recently used last, and the
    length of their texts."""

    def __init__(self) -> None:
        self.statements: OrderedDict[str, duckdb.Statement] = OrderedDict()
        self.chars = 0
        self.lock = threading.Lock()


_kept = _Kept()


def execute(con: Cursor, query: Sql) -> Result:
    """``query`` run on ``con`` with its values bound (``con.execute``)."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return con.execute(parsed(con, query.text), list(query.params))
    return con.execute(query.text, list(query.params))


def parsed(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.Statement:
    """The one statement of ``text``, parsed by ``con`` the first time."""
    with _kept.lock:
        statement = _kept.statements.get(text)
        if statement is not None:
            _kept.statements.move_to_end(text)
            return statement
    (statement,) = con.extract_statements(text)
    if len(text) > LONGEST_KEPT:
        return statement
    with _kept.lock:
        if text not in _kept.statements:
            _kept.statements[text] = statement
            _kept.chars += len(text)
        while _kept.chars > KEPT_CHARS:
            dropped, _ = _kept.statements.popitem(last=False)
            _kept.chars -= len(dropped)
    return statement
