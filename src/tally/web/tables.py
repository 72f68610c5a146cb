"""Each report's answer as one table: the numbers beneath the chart, and the CSV.

Cells are the answer's own values (rates as fractions, times in seconds), so
the CSV says exactly what the API says; :func:`cell` writes one as the page
shows it, a rate as a percentage and seconds as a duration when the column
says that is what it holds (``Table.units``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

#: What a column's numbers are, when a person reads them otherwise than as
#: written: a ``rate`` (a fraction, shown as a percentage) or ``seconds``
#: (shown as a duration).
Unit = Literal["rate", "seconds"] | None


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Any]]
    #: Per row, a person to link to (the people search), else empty.
    people: list[str | None]
    #: The answer's figures that are not rows (lifetime value, the winner…).
    summary: tuple[tuple[str, Any], ...] = ()
    #: Per column, what its numbers are; a column past the end is plain.
    units: tuple[Unit, ...] = ()

    def unit(self, column: int) -> Unit:
        return self.units[column] if column < len(self.units) else None

    def csv_headers(self) -> list[str]:
        """The headers of the CSV, whose cells are raw: a duration column says its unit."""
        return [f"{h} (seconds)" if self.unit(i) == "seconds" else h
                for i, h in enumerate(self.headers)]  # fmt: skip


#: How a missing value (``null``) is shown: an en dash.
NONE = "\u2013"


def cell(value: Any, unit: Unit = None) -> str:
    """A value as the table shows it: ``NONE`` (a dash) for none, floats to 4
    decimals, a ``rate`` as a percentage and ``seconds`` as a duration."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and unit == "rate":
        return percent(value)
    if isinstance(value, int | float) and unit == "seconds":
        return duration(value)
    if isinstance(value, float):
        return _decimal(value, 4)
    if isinstance(value, list):
        return " ".join(cell(v) for v in value)
    return str(value)


def _decimal(value: float, places: int) -> str:
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def percent(rate: float) -> str:
    """A fraction as a percentage to one decimal: 0.4235 is ``42.4%``, 1 is ``100%``."""
    return _decimal(rate * 100, 1) + "%"


def duration(seconds: float) -> str:
    """Seconds as a person reads them, in the two largest units: ``42s``,
    ``2m 5s``, ``1h 2m`` (3,725 s), ``1d 4h``; a unit that rounds to zero is
    left out (``2m``), and under a minute a tenth of a second is kept (``0.5s``)."""
    if seconds < 59.95:
        return _decimal(seconds, 1) + "s"
    if round(seconds) < 3600:
        return _two_units(round(seconds), 60, "m", "s")
    if round(seconds / 60) < 24 * 60:
        return _two_units(round(seconds / 60), 60, "h", "m")
    return _two_units(round(seconds / 3600), 24, "d", "h")


def _two_units(count: int, per: int, big: str, small: str) -> str:
    high, low = divmod(count, per)
    return f"{high}{big}" + (f" {low}{small}" if low else "")


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
               "Conversion from first", "Median time from previous"]  # fmt: skip
    groups = [("All", a["steps"])] + [
        (str(s["value"]), s["steps"]) for s in a.get("segments") or []
    ]
    rows = [
        [name, n, step["event"], step["people"], step["conversion_from_previous"],
         step["conversion_from_first"], step["median_seconds_from_previous"]]
        for name, steps in groups
        for n, step in enumerate(steps, 1)
    ]  # fmt: skip
    units: tuple[Unit, ...] = (None, None, None, None, "rate", "rate", "seconds")
    return Table(headers, rows, [None] * len(rows), units=units)


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
    units: tuple[Unit, ...] = (None, None, None, "rate", "rate", "rate")
    return Table(headers, rows, [None] * len(rows), summary, units)


def _path(a: dict[str, Any]) -> Table:
    headers = ["Path", "People", "Median time"]
    rows = [[" → ".join(p["steps"]) or "(direct)", p["people"], p["median_seconds"]]
            for p in a["paths"]]  # fmt: skip
    converted = (("People who converted", a["converted"]),)
    return Table(headers, rows, [None] * len(rows), converted, (None, None, "seconds"))


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
