"""``tally report KIND``: the reports of docs/reports.md, as tables, JSON or CSV.

Each subcommand builds the same JSON body that the API takes (``--body`` gives
one outright, for every option the flags do not cover) and asks the running
server, or reads the store itself when no server runs.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from tally import local
from tally.catalog import Catalog
from tally.cli.inspect import read_store_in_dialect
from tally.cli.options import data_dir_option, echo_json, echo_table, errors_to_exit, product_option
from tally.errors import InvalidInput
from tally.reports import Product, run_report
from tally.reports.query import json_object
from tally.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

#: ``--where`` and ``--has``: PROPERTY OP VALUE, or PROPERTY exists / missing.
_FILTER = re.compile(r"^(?P<p>.+?)\s*(?P<op>!=|>=|<=|\^=|\$=|~|=|>|<)\s*(?P<v>.*)$", re.S)
_PRESENCE = re.compile(r"^(?P<p>.+?)\s+(?P<op>exists|missing)$")
_OPS = {"=": "equals", "!=": "not_equals", "~": "contains", "^=": "begins_with",
        "$=": "ends_with", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}  # fmt: skip
_COUNT = re.compile(r"^(?P<e>.+?)\s*(?P<op>>=|<=|=)\s*(?P<n>\d+)$")
_BAR = 30


def parse_filter(text: str, option: str = "--where") -> dict[str, Any]:
    """``plan=pro``, ``amount>=10``, ``name~ann``, ``plan exists`` as a filter object."""
    presence = _PRESENCE.match(text.strip())
    if presence:
        op = "has_any_value" if presence["op"] == "exists" else "has_no_value"
        return {"property": presence["p"], "op": op}
    match = _FILTER.match(text.strip())
    if not match:
        raise InvalidInput(
            f"{option} {text!r} is PROPERTY OP VALUE (ops: = != ~ ^= $= > >= < <=) "
            "or 'PROPERTY exists' / 'PROPERTY missing'",
            field=option,
        )
    return {"property": match["p"], "op": _OPS[match["op"]], "value": match["v"]}


def _segment(text: str | None, default: str) -> dict[str, str] | None:
    if not text:
        return None
    prop, _, attribution = text.partition(":")
    return {"property": prop, "attribution": attribution or default}


def report_options(func: F) -> F:
    """What every report takes: product, range, filters, output, and --body."""
    options = [
        product_option,
        click.option("--from", "time_from", help="Start date or time (product's zone), inclusive."),
        click.option("--to", "time_to", help="End date or time, exclusive [default: tomorrow]."),
        click.option("--where", "where", multiple=True, metavar="FILTER",
                     help="Event property filter, e.g. 'plan=pro', 'amount>=10', "
                     "'plan exists'. Repeatable."),
        click.option("--person-where", multiple=True, metavar="FILTER",
                     help="Person property filter on current values. Repeatable."),
        click.option("--body", type=click.File("r"), metavar="FILE",
                     help="A JSON body as the API takes it ('-' for stdin); flags override."),
        data_dir_option,
        click.option("--json", "as_json", is_flag=True, help="Print the JSON answer."),
        click.option("--csv", "as_csv", is_flag=True, help="Print CSV."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _common(kwargs: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    source = kwargs.pop("body")
    if source is not None:
        body.update(json_object(source.read(), "--body", "--body"))
    time_from, time_to = kwargs.pop("time_from"), kwargs.pop("time_to")
    if time_from:
        body["from"] = time_from
    if time_to:
        body["to"] = time_to
    where, person_where = kwargs.pop("where"), kwargs.pop("person_where")
    if where:
        body["where"] = [parse_filter(w) for w in where]
    if person_where:
        body["person_where"] = [parse_filter(w, "--person-where") for w in person_where]
    return body


def ask(data_dir: Path, product: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The answer from the running server, or from the store when none runs."""
    settings = Settings(data_dir=data_dir)
    if local.server_running(settings):
        answer: dict[str, Any] = local.request(
            settings, "POST", local.product_path(product, "reports", kind), body=body
        )
        return answer
    catalog = Catalog(settings.catalog_path)
    try:
        found = catalog.product(product)
    finally:
        catalog.close()
    asked = Product(found.name, found.timezone, found.revenue_property)
    return read_store_in_dialect(settings, lambda con, d: run_report(con, asked, kind, body, d=d))


def _output(
    answer: dict[str, Any],
    as_json: bool,
    as_csv: bool,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    show: Callable[[], None],
) -> None:
    if as_json:
        echo_json(answer)
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    else:
        show()


def _bar(value: float | None, top: float) -> str:
    if not value or top <= 0:
        return ""
    return "█" * max(1, round(_BAR * value / top)) if value > 0 else ""


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if not value.is_integer() else f"{int(value):,}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _series_rows(series: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    top = max((abs(p["value"] or 0) for p in series), default=0)
    return [(p["start"], _number(p["value"]), _bar(p["value"], top)) for p in series]


@click.group()
def report() -> None:
    """Reports: metrics, funnel, cohort, revenue, abtest, path, people (docs/reports.md)."""


def _command(func: F) -> F:
    return report.command()(report_options(errors_to_exit(func)))  # type: ignore[return-value]


@_command
@click.argument("event")
@click.option("--measure", type=click.Choice(["people", "times", "average_per_person", "sum",
              "average"]), help="What to count [default: people].")  # fmt: skip
@click.option("--property", "prop", help="The numeric property for sum and average.")
@click.option("--interval", type=click.Choice(["hour", "day", "week", "month"]))
@click.option("--segment", metavar="PROPERTY[:first_ever|last_ever|at_event]",
              help="Split by a person property.")  # fmt: skip
def metrics(event: str, measure: str | None, prop: str | None, interval: str | None,
            segment: str | None, product: str, data_dir: Path, as_json: bool, as_csv: bool,
            **kwargs: Any) -> None:  # fmt: skip
    """How often EVENT happened, per interval."""
    body = _common(kwargs) | {"event": event}
    for name, value in (("measure", measure), ("property", prop), ("interval", interval),
                        ("segment", _segment(segment, "first_ever"))):  # fmt: skip
        if value is not None:
            body[name] = value
    answer = ask(data_dir, product, "metrics", body)
    rows = [(p["start"], p["value"]) for p in answer["series"]]

    def show() -> None:
        echo_table(["start", "value", ""], _series_rows(answer["series"]))
        click.echo(f"Total: {_number(answer['total'])}")
        for seg in answer.get("segments", []):
            click.echo(f"\nSegment {seg['value'] if seg['value'] is not None else '(none)'}: "
                       f"total {_number(seg['total'])}")  # fmt: skip
            echo_table(["start", "value", ""], _series_rows(seg["series"]))

    _output(answer, as_json, as_csv, ["start", "value"], rows, show)


@_command
@click.argument("steps", nargs=-1, required=True)
@click.option("--mode", type=click.Choice(["strict", "skip"]), help="[default: strict]")
@click.option("--window", type=click.IntRange(0), help="Conversion window in seconds from step 1.")
@click.option("--segment", metavar="PROPERTY[:first_ever|last_ever|at_step_1]",
              help="Split by a person property.")  # fmt: skip
def funnel(steps: tuple[str, ...], mode: str | None, window: int | None, segment: str | None,
           product: str, data_dir: Path, as_json: bool, as_csv: bool,
           **kwargs: Any) -> None:  # fmt: skip
    """How many people went through STEPS (event names) in order."""
    body = _common(kwargs) | {"steps": [{"event": s} for s in steps]}
    for name, value in (("mode", mode), ("window", window),
                        ("segment", _segment(segment, "first_ever"))):  # fmt: skip
        if value is not None:
            body[name] = value
    answer = ask(data_dir, product, "funnel", body)

    def table(step_list: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        top = step_list[0]["people"] if step_list else 0
        return [
            (s["event"], _number(s["people"]), _percent(s["conversion_from_previous"]),
             _percent(s["conversion_from_first"]), _number(s["median_seconds_from_previous"]),
             _bar(s["people"], max(top, *(x["people"] for x in step_list))))
            for s in step_list
        ]  # fmt: skip

    headers = ["step", "people", "from previous", "from first", "median s", ""]

    def show() -> None:
        echo_table(headers, table(answer["steps"]))
        for seg in answer.get("segments", []):
            click.echo(f"\nSegment {seg['value'] if seg['value'] is not None else '(none)'}:")
            echo_table(headers, table(seg["steps"]))

    rows = [(s["event"], s["people"], s["conversion_from_previous"], s["conversion_from_first"],
             s["median_seconds_from_previous"]) for s in answer["steps"]]  # fmt: skip
    _output(answer, as_json, as_csv, headers[:-1], rows, show)


@_command
@click.argument("first_event")
@click.argument("return_event")
@click.option("--interval", type=click.Choice(["hour", "day", "week", "month"]))
@click.option("--count", type=click.Choice(["every_time", "first_time"]))
@click.option("--buckets", type=click.IntRange(1, 100), help="[default: 12]")
@click.option("--unit", type=click.Choice(["people", "times"]))
def cohort(first_event: str, return_event: str, interval: str | None, count: str | None,
           buckets: int | None, unit: str | None, product: str, data_dir: Path, as_json: bool,
           as_csv: bool, **kwargs: Any) -> None:  # fmt: skip
    """Retention: who came back to RETURN_EVENT after their first FIRST_EVENT."""
    body = _common(kwargs) | {"first_event": first_event, "return_event": return_event}
    for name, value in (("interval", interval), ("count", count), ("buckets", buckets),
                        ("unit", unit)):  # fmt: skip
        if value is not None:
            body[name] = value
    answer = ask(data_dir, product, "cohort", body)
    width = max((len(c["values"]) for c in answer["cohorts"]), default=0)
    headers = ["cohort", "people", *(str(k) for k in range(width))]

    def show() -> None:
        echo_table(headers, [(c["start"], c["people"], *(_percent(p) for p in c["percentages"]))
                             for c in answer["cohorts"]])  # fmt: skip

    rows = [(c["start"], c["people"], *c["values"]) for c in answer["cohorts"]]
    _output(answer, as_json, as_csv, headers, rows, show)


@_command
@click.option("--interval", type=click.Choice(["hour", "day", "week", "month"]))
@click.option("--churn-days", type=click.IntRange(1, 3650), help="[default: 30]")
def revenue(interval: str | None, churn_days: int | None, product: str, data_dir: Path,
            as_json: bool, as_csv: bool, **kwargs: Any) -> None:  # fmt: skip
    """Revenue, paying, new and churned customers per interval."""
    body = _common(kwargs)
    for name, value in (("interval", interval), ("churn_days", churn_days)):
        if value is not None:
            body[name] = value
    answer = ask(data_dir, product, "revenue", body)
    headers = ["start", "revenue", "paying", "new", "churned", "per customer"]
    rows = [(p["start"], p["revenue"], p["paying"], p["new"], p["churned"],
             p.get("average_per_customer")) for p in answer["series"]]  # fmt: skip

    def show() -> None:
        echo_table(headers, [tuple(_number(v) if i else v for i, v in enumerate(r)) for r in rows])
        click.echo(f"Total revenue: {_number(answer['total_revenue'])}; "
                   f"lifetime value: {_number(answer['lifetime_value'])}")  # fmt: skip

    _output(answer, as_json, as_csv, headers, rows, show)


@_command
@click.argument("experiment")
@click.argument("conversion")
@click.option("--baseline", help="The baseline variant [default: the first alphabetically].")
def abtest(experiment: str, conversion: str, baseline: str | None, product: str, data_dir: Path,
           as_json: bool, as_csv: bool, **kwargs: Any) -> None:  # fmt: skip
    """An A/B test: variants of the EXPERIMENT property, converting to CONVERSION."""
    body = _common(kwargs) | {"experiment": experiment, "conversion": conversion}
    if baseline is not None:
        body["baseline"] = baseline
    answer = ask(data_dir, product, "abtest", body)
    headers = ["variant", "participants", "conversions", "rate", "improvement", "certainty"]
    rows = [(v["name"], v["participants"], v["conversions"], v["rate"], v["improvement"],
             v["certainty"]) for v in answer["variants"]]  # fmt: skip

    def show() -> None:
        echo_table(headers, [(r[0], _number(r[1]), _number(r[2]), _percent(r[3]),
                              _percent(r[4]), _percent(r[5])) for r in rows])  # fmt: skip
        click.echo(f"Winner: {answer['winner'] or '(none above 95% certainty)'}")

    _output(answer, as_json, as_csv, headers, rows, show)


@_command
@click.argument("start")
@click.argument("conversion")
@click.option("--direction", type=click.Choice(["first", "last"]), help="[default: first]")
@click.option("--limit", type=click.IntRange(1, 1000), help="[default: 50]")
def path(start: str, conversion: str, direction: str | None, limit: int | None, product: str,
         data_dir: Path, as_json: bool, as_csv: bool, **kwargs: Any) -> None:  # fmt: skip
    """The most common paths from START to CONVERSION."""
    body = _common(kwargs) | {"start": start, "conversion": conversion}
    for name, value in (("direction", direction), ("limit", limit)):
        if value is not None:
            body[name] = value
    answer = ask(data_dir, product, "path", body)
    headers = ["people", "median s", "path"]
    rows = [(p["people"], p["median_seconds"], " → ".join(p["steps"]) or "(direct)")
            for p in answer["paths"]]  # fmt: skip
    _output(answer, as_json, as_csv, headers, rows, lambda: echo_table(headers, rows))


def _event_condition(text: str, did: bool) -> dict[str, Any]:
    match = _COUNT.match(text) if did else None
    if match is None:
        return {"type": "event", "event": text, "did": did}
    op = {">=": "at_least", "<=": "at_most", "=": "exactly"}[match["op"]]
    return {"type": "event", "event": match["e"], "count": {"op": op, "value": int(match["n"])}}


def _column(text: str) -> dict[str, str]:
    kind, _, rest = text.partition(":")
    if kind == "event" and rest:
        event, _, which = rest.rpartition(":")
        if which in ("first_time", "last_time", "count") and event:
            return {"type": "event", "event": event, "which": which}
        return {"type": "event", "event": rest, "which": "count"}
    prop, _, which = text.rpartition(":")
    if which in ("first", "last", "current") and prop:
        return {"type": "property", "property": prop, "which": which}
    return {"type": "property", "property": text, "which": "current"}


@_command
@click.option(
    "--did",
    multiple=True,
    metavar="EVENT[>=N|<=N|=N]",
    help="People who did EVENT (at least once, or as many times). Repeatable.",
)
@click.option("--did-not", multiple=True, metavar="EVENT", help="People who never did EVENT.")
@click.option(
    "--has",
    multiple=True,
    metavar="FILTER",
    help="A current property value, e.g. 'plan=pro'. Repeatable.",
)
@click.option("--identity-contains", multiple=True, metavar="TEXT")
@click.option("--logic", type=click.Choice(["all", "any", "in_order"]), help="[default: all]")
@click.option(
    "--column",
    multiple=True,
    metavar="PROPERTY[:first|last] | event:EVENT[:first_time|last_time|count]",
    help="A column to show. Repeatable.",
)
@click.option("--page", type=click.IntRange(1), help="[default: 1]")
@click.option("--page-size", type=click.IntRange(1, 1000), help="[default: 50]")
def people(did: tuple[str, ...], did_not: tuple[str, ...], has: tuple[str, ...],
           identity_contains: tuple[str, ...], logic: str | None, column: tuple[str, ...],
           page: int | None, page_size: int | None, product: str, data_dir: Path, as_json: bool,
           as_csv: bool, **kwargs: Any) -> None:  # fmt: skip
    """People search: who did (or did not) do what, with which properties.

    With --csv, every matching person is printed (all pages).
    """
    body = _common(kwargs)
    conditions = list(body.get("conditions", []))
    conditions += [_event_condition(e, True) for e in did]
    conditions += [_event_condition(e, False) for e in did_not]
    conditions += [{"type": "property", **parse_filter(h, "--has")} for h in has]
    conditions += [{"type": "identity", "op": "contains", "value": v} for v in identity_contains]
    body["conditions"] = conditions
    if column:
        body["columns"] = [_column(c) for c in column]
    for name, value in (("logic", logic), ("page", page), ("page_size", page_size)):
        if value is not None:
            body[name] = value
    if as_csv:
        _people_csv(data_dir, product, body)
        return
    answer = ask(data_dir, product, "people", body)
    headers = ["person", "shown as", "identities", *answer["columns"]]
    rows = [(p["person"], p["display"], " ".join(p["identities"]), *p["columns"])
            for p in answer["people"]]  # fmt: skip

    def show() -> None:
        echo_table(headers, rows, empty="(nobody)")
        click.echo(f"{answer['total']:,} people; page {answer['page']} of "
                   f"{max(1, -(-answer['total'] // answer['page_size']))}")  # fmt: skip

    _output(answer, as_json, False, headers, rows, show)


def _people_csv(data_dir: Path, product: str, body: dict[str, Any]) -> None:
    """Every page, as the API's CSV export gives it."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    body = body | {"page": 1, "page_size": 1000}
    while True:
        answer = ask(data_dir, product, "people", body)
        if body["page"] == 1:
            writer.writerow(["person", "identities", *answer["columns"]])
        for p in answer["people"]:
            cells = ("" if v is None else v for v in p["columns"])
            writer.writerow([p["person"], " ".join(p["identities"]), *cells])
        if body["page"] * 1000 >= answer["total"]:
            return
        body["page"] += 1
