"""Each report's answer as one table: the numbers beneath the chart, and the CSV.

Cells are the answer's own values (rates as fractions, times in seconds), so
the table says exactly what the API says; :func:`cell` writes one as text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Any]]
    #: Per row, a person to link to (the people search), else empty.
    people: list[str | None]
    #: The answer's figures that are not rows (lifetime value, the winner…).
    summary: tuple[tuple[str, Any], ...] = ()


#: How a missing value (``null``) is shown: an en dash.
NONE = "\u2013"


def cell(value: Any) -> str:
    """A value as the table shows it: ``NONE`` (a dash) for none, floats to 4 decimals."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    if isinstance(value, list):
        return " ".join(cell(v) for v in value)
    return str(value)


def _metrics(a: dict[str, Any]) -> Table:
    segments = a.get("segments") or []
    headers = ["Start", "All", *(f"{s['value']}" for s in segments)]
    rows = [
        [point["start"], point["value"], *(s["series"][i]["value"] for s in segments)]
        for i, point in enumerate(a["series"])
    ]
    rows.append(["Total", a["total"], *(s["total"] for s in segments)])
    return Table(headers, rows, [None] * len(rows))


def _funnel(a: dict[str, Any]) -> Table:
    headers = ["Segment", "Step", "Event", "People", "Conversion from previous",
               "Conversion from first", "Median seconds from previous"]  # fmt: skip
    groups = [("All", a["steps"])] + [
        (str(s["value"]), s["steps"]) for s in a.get("segments") or []
    ]
    rows = [
        [name, n, step["event"], step["people"], step["conversion_from_previous"],
         step["conversion_from_first"], step["median_seconds_from_previous"]]
        for name, steps in groups
        for n, step in enumerate(steps, 1)
    ]  # fmt: skip
    return Table(headers, rows, [None] * len(rows))


def _cohort(a: dict[str, Any]) -> Table:
    width = max((len(c["values"]) for c in a["cohorts"]), default=0)
    headers = ["Cohort", "People", *(f"Bucket {k}" for k in range(width))]
    rows = [[c["start"], c["people"], *c["values"]] for c in a["cohorts"]]
    return Table(headers, rows, [None] * len(rows))


def _revenue(a: dict[str, Any]) -> Table:
    headers = ["Start", "Revenue", "Paying", "New", "Churned", "Average per customer"]
    rows = [[p["start"], p["revenue"], p["paying"], p["new"], p["churned"],
             p["average_per_customer"]] for p in a["series"]]  # fmt: skip
    rows.append(["Total", a["total_revenue"], a["paying"], None, None, None])
    return Table(headers, rows, [None] * len(rows), (("Lifetime value", a["lifetime_value"]),))


def _abtest(a: dict[str, Any]) -> Table:
    headers = ["Variant", "Participants", "Conversions", "Rate", "Improvement", "Certainty",
               "Winner"]  # fmt: skip
    rows = [[v["name"], v["participants"], v["conversions"], v["rate"], v["improvement"],
             v["certainty"], v["name"] == a["winner"]] for v in a["variants"]]  # fmt: skip
    summary = (("Baseline", a["baseline"]), ("Winner", a["winner"]))
    return Table(headers, rows, [None] * len(rows), summary)


def _path(a: dict[str, Any]) -> Table:
    headers = ["Path", "People", "Median seconds"]
    rows = [[" → ".join(p["steps"]) or "(direct)", p["people"], p["median_seconds"]]
            for p in a["paths"]]  # fmt: skip
    return Table(headers, rows, [None] * len(rows), (("People who converted", a["converted"]),))


def _people(a: dict[str, Any]) -> Table:
    headers = ["Person", "Identities", *a["columns"]]
    rows = [[p["display"], " ".join(p["identities"]), *p["columns"]] for p in a["people"]]
    return Table(headers, rows, [p["person"] for p in a["people"]])


TABLES: dict[str, Callable[[dict[str, Any]], Table]] = {
    "metrics": _metrics,
    "funnel": _funnel,
    "cohort": _cohort,
    "revenue": _revenue,
    "abtest": _abtest,
    "path": _path,
    "people": _people,
}
