"""Reports (SPEC §9, docs/reports.md): one function that the API and the CLI share.

A report is a frozen query value (:mod:`tally.reports.query`), compiled to SQL
through :mod:`tally.reports.sql` by its own module, and answered as JSON-ready
data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb

from tally.reports import abtest, cohort, funnel, metrics, path, people, query, revenue
from tally.reports.query import KINDS, Product, Query, parse

__all__ = ["KINDS", "Product", "parse", "run_query", "run_report"]


def run_query(con: duckdb.DuckDBPyConnection, q: Query) -> dict[str, Any]:
    runner: Callable[[duckdb.DuckDBPyConnection, Any], dict[str, Any]] = _RUNNERS[type(q)]
    return runner(con, q)


def run_report(
    con: duckdb.DuckDBPyConnection,
    product: Product,
    kind: str,
    body: Any,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """The answer to the report ``kind`` asked with the JSON ``body``."""
    return run_query(con, parse(kind, body, product, now=now))


_RUNNERS: dict[type, Callable[[duckdb.DuckDBPyConnection, Any], dict[str, Any]]] = {
    query.Metrics: metrics.run,
    query.Revenue: revenue.run,
    query.ABTest: abtest.run,
    query.Path: path.run,
    query.Funnel: funnel.run,
    query.Cohort: cohort.run,
    query.People: people.run,
}
