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

#: The parsed statements kept, least recently used dropped first: far more
#: than the shapes of questions asked in practice.
KEPT = 512

_parsed: OrderedDict[str, duckdb.Statement] = OrderedDict()
_lock = threading.Lock()


def execute(con: Cursor, query: Sql) -> Result:
    """``query`` run on ``con`` with its values bound (``con.execute``)."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return con.execute(parsed(con, query.text), list(query.params))
    return con.execute(query.text, list(query.params))


def parsed(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.Statement:
    """The one statement of ``text``, parsed by ``con`` the first time."""
    with _lock:
        statement = _parsed.get(text)
        if statement is not None:
            _parsed.move_to_end(text)
            return statement
    (statement,) = con.extract_statements(text)
    with _lock:
        _parsed[text] = statement
        while len(_parsed) > KEPT:
            _parsed.popitem(last=False)
    return statement
