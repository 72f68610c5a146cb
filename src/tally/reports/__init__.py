"""Reports (SPEC §9, docs/reports.md): one function that the API and the CLI share.

A report is a frozen query value (:mod:`tally.reports.query`), compiled to SQL
through :mod:`tally.reports.sql` by its own module, and answered as JSON-ready
data. It runs on a cursor of the store and in the store's dialect (the read
side of tally.store.contract): the report modules name no engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tally.reports import abtest, cohort, funnel, metrics, path, people, query, revenue
from tally.reports.query import KINDS, Product, Query, parse
from tally.reports.sql import DIALECT, Dialect
from tally.store.contract import Cursor

__all__ = ["KINDS", "Product", "parse", "run_query", "run_report"]


def run_query(con: Cursor, q: Query, *, d: Dialect = DIALECT) -> dict[str, Any]:
    """The answer to ``q`` on ``con``, in the dialect ``d`` of its store."""
    runner: Callable[[Cursor, Any, Dialect], dict[str, Any]] = _RUNNERS[type(q)]
    return runner(con, q, d)


def run_report(
    con: Cursor,
    product: Product,
    kind: str,
    body: Any,
    *,
    now: float | None = None,
    d: Dialect = DIALECT,
) -> dict[str, Any]:
    """The answer to the report ``kind`` asked with the JSON ``body``, on a
    cursor of a store whose dialect is ``d`` (``Reader.dialect``)."""
    return run_query(con, parse(kind, body, product, now=now), d=d)


_RUNNERS: dict[type, Callable[[Cursor, Any, Dialect], dict[str, Any]]] = {
    query.Metrics: metrics.run,
    query.Revenue: revenue.run,
    query.ABTest: abtest.run,
    query.Path: path.run,
    query.Funnel: funnel.run,
    query.Cohort: cohort.run,
    query.People: people.run,
}
