"""Report questions as frozen values, read from a JSON body (docs/reports.md).

Parsing is the only place that looks at the body: it checks it against its
model (:mod:`tally.reports.bodies`, from which the OpenAPI document is
generated), names the offending field in :class:`InvalidInput`, resolves names
to their SPEC §2 keys and dates to Unix seconds in the product's time zone.
What comes out is a plain value that the SQL compiler (and the tests' oracle)
can trust.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import accumulate
from typing import Any, get_args
from zoneinfo import ZoneInfo

from tally.errors import InvalidInput
from tally.names import name_key
from tally.reports import bodies
from tally.reports.bodies import Interval
from tally.validation import validated

INTERVALS: tuple[Interval, ...] = get_args(Interval)
STRING_OPS: tuple[str, ...] = get_args(bodies.StringOp)
PRESENCE_OPS: tuple[str, ...] = get_args(bodies.PresenceOp)
NUMBER_OPS: tuple[str, ...] = get_args(bodies.NumberOp)
FILTER_OPS = STRING_OPS + PRESENCE_OPS + NUMBER_OPS
#: At most this many intervals in a series (a metrics line, cohorts, revenue):
#: 100 years by day, 11 years by hour.
MAX_INTERVALS = 100_000
#: At most this many cells (cohorts times buckets) in a cohort table: each is four
#: numbers of the answer, built in Python beside DuckDB's memory (measured on
#: bench/hostile.py: 83,000 daily cohorts of 40 buckets made a 57 MB answer,
#: and ten of them took the core past 1 GB).
MAX_COHORT_CELLS = 200_000
_INTERVAL_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 28 * 86400}
_INTERVALLY = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}
#: How deep arrays and objects may nest in a JSON body. A report needs 5 (the
#: body, its conditions, one condition, its where, one filter); Python's json
#: recurses once a level and fails near 1,000, so deeper is refused before it.
MAX_JSON_DEPTH = 32
#: The dates a report may name, as written (before any offset or time zone).
#: Every record's time lies well inside (SPEC §3: no event time before 2009,
#: none more than a day ahead), and so does every interval, bucket, window
#: and churn period reckoned from them: Python's dates end in 9999.
EARLIEST_DATE = datetime(1970, 1, 1)
LATEST_DATE = datetime(2200, 1, 1)


@dataclass(frozen=True)
class Product:
    """What a report needs to know of its product."""

    name: str
    timezone: str = "UTC"
    revenue_property: str = "Billing Amount"


@dataclass(frozen=True)
class Filter:
    """A test of one property value (``value`` is a str, a float or None)."""

    property: str  # the name key
    op: str
    value: str | float | None = None


@dataclass(frozen=True)
class Segment:
    property: str  # the name key
    attribution: str  # first_ever | last_ever | at_event | at_step_1


@dataclass(frozen=True)
class Common:
    product: str
    start: int  # Unix seconds, inclusive
    end: int  # Unix seconds, exclusive
    tz: str
    unit: str  # people | times
    where: tuple[Filter, ...]
    person_where: tuple[Filter, ...]


@dataclass(frozen=True)
class Metrics:
    common: Common
    event: str
    measure: str
    property: str | None
    interval: Interval
    segment: Segment | None


@dataclass(frozen=True)
class Step:
    event: str
    where: tuple[Filter, ...]
    label: str  # the name as asked, shown when no event of that name was ever seen


@dataclass(frozen=True)
class Funnel:
    common: Common
    steps: tuple[Step, ...]
    mode: str  # strict | skip
    window: int | None
    segment: Segment | None


@dataclass(frozen=True)
class Cohort:
    common: Common
    first_event: str
    return_event: str
    interval: Interval
    count: str  # first_time | every_time
    buckets: int


@dataclass(frozen=True)
class Revenue:
    common: Common
    property: str  # the product's revenue property, as a key
    interval: Interval
    churn_days: int


@dataclass(frozen=True)
class ABTest:
    common: Common
    experiment: str
    conversion: str
    baseline: str | None


@dataclass(frozen=True)
class Path:
    common: Common
    start_event: str
    conversion: str
    direction: str  # first | last
    limit: int


@dataclass(frozen=True)
class EventCondition:
    event: str
    where: tuple[Filter, ...]
    start: int
    end: int
    op: str  # at_least | at_most | exactly
    count: int

    @property
    def needs_occurrence(self) -> bool:
        return (self.op == "at_least" and self.count > 0) or (
            self.op == "exactly" and self.count > 0
        )


@dataclass(frozen=True)
class PropertyCondition:
    filter: Filter


@dataclass(frozen=True)
class IdentityCondition:
    value: str


Condition = EventCondition | PropertyCondition | IdentityCondition


@dataclass(frozen=True)
class Column:
    kind: str  # property | event
    name: str  # the name key
    which: str  # first | last | current | first_time | last_time | count
    label: str  # the header, as asked


@dataclass(frozen=True)
class People:
    common: Common
    conditions: tuple[Condition, ...]
    logic: str  # all | any | in_order
    columns: tuple[Column, ...]
    page: int
    page_size: int


Query = Metrics | Funnel | Cohort | Revenue | ABTest | Path | People
KINDS = ("metrics", "funnel", "cohort", "revenue", "abtest", "path", "people")


# -- reading a body -----------------------------------------------------------------------


def json_object(text: str | bytes, field: str, what: str) -> dict[str, Any]:
    """A report's body as sent (the API's request body, the CLI's ``--body``
    file): a JSON object, or :class:`InvalidInput` naming ``field`` (or the
    field inside it that holds a string that is not Unicode text)."""
    try:
        if isinstance(text, bytes):  # as json.loads reads bytes
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        if _depth(text) > MAX_JSON_DEPTH:
            raise InvalidInput(
                f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels", field=field
            )
        loaded = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}", field=field) from exc
    if not isinstance(loaded, dict):
        raise InvalidInput(f"{what} is a JSON object", field=field)
    _require_text(loaded)
    return loaded


# The closing quote is optional: an unterminated string (not JSON anyway) takes
# the rest of the text in one match, where requiring it would try again from
# every quote inside it, which is quadratic.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^][{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text, strings left out."""
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _require_text(body: dict[str, Any]) -> None:
    """Every string in a body is Unicode text: not one with a lone surrogate,
    which JSON can spell (``"\\ud800"``) and a command line can carry (Python
    decodes bytes that are not UTF-8 to them), but UTF-8 cannot encode. No name
    or value is ever stored so (SPEC §1 decodes tracking calls with U+FFFD), so
    asking for one is an error in the caller, answered as one (docs/reports.md).
    """
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in reversed(body.items())]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                raise InvalidInput(
                    f"{path} is not Unicode text: it holds a lone surrogate (like \\ud800), "
                    "which UTF-8 cannot encode",
                    field=path,
                )
        elif isinstance(item, dict):
            stack.extend((f"{path}.{k}", v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))


def _fail(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field} {message}", field=field)


def parse(kind: str, body: Any, product: Product, *, now: float | None = None) -> Query:
    """The query value for ``kind`` from a JSON body, or InvalidInput.

    The body is checked against its model in :mod:`tally.reports.bodies` (the
    OpenAPI document's schema), then turned into plain values: names into
    their SPEC §2 keys, dates into Unix seconds in the product's time zone."""
    if kind not in KINDS:
        raise InvalidInput(
            f"unknown report {kind!r}; reports are " + ", ".join(KINDS), field="kind"
        )
    raw = {} if body is None else body
    if isinstance(raw, dict):
        _require_text(raw)  # a body the CLI built from its arguments did not pass json_object
    b = validated(bodies.BODIES[kind], raw)
    return _PARSERS[kind](b, _common(b, product, now), product)


def _common(b: bodies.Common, product: Product, now: float | None) -> Common:
    tz = ZoneInfo(product.timezone)
    end = _when(b.to, "to", tz)
    if end is None:
        today = datetime.fromtimestamp(now if now is not None else _now(), tz).date()
        end = _midnight(today + timedelta(days=1), tz)
    start = _when(b.from_, "from", tz)
    if start is None:
        # 30 calendar days before `to` in the product's zone (a DST change
        # makes one of them 23 or 25 hours long).
        local = datetime.fromtimestamp(end, tz).replace(tzinfo=None) - timedelta(days=30)
        start = math.floor(local.replace(tzinfo=tz).timestamp())
    if start >= end:
        raise _fail("from", "is before to")
    return Common(
        product=product.name,
        start=start,
        end=end,
        tz=product.timezone,
        unit=b.unit,
        where=_filters(b.where, "where"),
        person_where=_filters(b.person_where, "person_where"),
    )


def _now() -> float:
    import time as clock

    return clock.time()


def _midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time(), tz).timestamp())


def _when(value: str | None, field: str, tz: ZoneInfo) -> int | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time())
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(field, f"is not an ISO date or timestamp: {value!r}") from exc
    if not EARLIEST_DATE <= moment.replace(tzinfo=None) <= LATEST_DATE:
        raise _fail(field, f"is out of range: dates are from {EARLIEST_DATE:%Y-%m-%d} to "
                           f"{LATEST_DATE:%Y-%m-%d}, not {value!r}")  # fmt: skip
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return math.floor(moment.timestamp())


def _key(name: str, field: str) -> str:
    """A name as its SPEC §2 key."""
    key = name_key(name)
    if not key:
        raise _fail(field, "is an empty name")
    return key


def _intervals(interval: Interval, common: Common) -> int:
    """How many intervals the range makes, at most (a month counted as 28 days)."""
    return -(-(common.end - common.start) // _INTERVAL_SECONDS[interval])


def _interval(interval: Interval, common: Common) -> Interval:
    """The series' interval, if the range holds no more than MAX_INTERVALS."""
    count = _intervals(interval, common)
    if count > MAX_INTERVALS:
        raise _fail(
            "interval",
            f"makes {count:,} {_INTERVALLY[interval]} intervals of this range; the limit is "
            f"{MAX_INTERVALS:,}: choose a longer interval or a shorter range",
        )
    return interval


def _filters(items: list[bodies.Filter], field: str) -> tuple[Filter, ...]:
    return tuple(_filter(f, f"{field}[{i}]") for i, f in enumerate(items))


def _filter(f: bodies.Filter, field: str) -> Filter:
    return Filter(_key(f.property, f"{field}.property"), *_test(f.op, f.value, field))


def _test(op: str, value: Any, field: str) -> tuple[str, str | float | None]:
    if op in PRESENCE_OPS:
        return op, None
    if op in NUMBER_OPS:
        number = _number(value)
        if number is None:
            raise _fail(f"{field}.value",
                        f"is a number for {op}, finite and within ±1.8e308 (a double)")  # fmt: skip
        return op, number
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(f"{field}.value", f"is a string for {op}")
    return op, value if isinstance(value, str) else _plain(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # JSON's integers have no bound; a double's end near 1.8e308
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _plain(number: int | float) -> str:
    """A JSON number compared as the text a client would send (``5``, ``2.5``)."""
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)


def _segment(s: bodies.MetricsSegment | bodies.FunnelSegment | None) -> Segment | None:
    if s is None:
        return None
    return Segment(_key(s.property, "segment.property"), s.attribution)


def _metrics(b: Any, common: Common, product: Product) -> Metrics:
    assert isinstance(b, bodies.Metrics)
    measure = b.measure or common.unit
    prop = None
    if b.property is not None:
        prop = _key(b.property, "property")
    elif measure in ("sum", "average"):
        raise _fail("property", f"is required for measure {measure}")
    return Metrics(
        common,
        _key(b.event, "event"),
        measure,
        prop,
        _interval(b.interval, common),
        _segment(b.segment),
    )


def _funnel(b: Any, common: Common, product: Product) -> Funnel:
    assert isinstance(b, bodies.Funnel)
    steps = []
    for i, item in enumerate(b.steps):
        if isinstance(item, str):  # a bare event name
            steps.append(Step(_key(item, f"steps[{i}]"), common.where, item.strip()))
        else:
            key = _key(item.event, f"steps[{i}].event")
            where = common.where + _filters(item.where, f"steps[{i}].where")
            steps.append(Step(key, where, item.event.strip()))
    return Funnel(common, tuple(steps), b.mode, b.window, _segment(b.segment))


def _cohort(b: Any, common: Common, product: Product) -> Cohort:
    assert isinstance(b, bodies.Cohort)
    first, back = _key(b.first_event, "first_event"), _key(b.return_event, "return_event")
    interval = _interval(b.interval, common)
    cells = _intervals(interval, common) * b.buckets
    if cells > MAX_COHORT_CELLS:
        raise _fail(
            "buckets",
            f"make {cells:,} cells with the {_INTERVALLY[interval]} cohorts of this range; the "
            f"limit is {MAX_COHORT_CELLS:,}: fewer buckets, a longer interval or a shorter range",
        )
    return Cohort(common, first, back, interval, b.count, b.buckets)


def _revenue(b: Any, common: Common, product: Product) -> Revenue:
    assert isinstance(b, bodies.Revenue)
    # The revenue property is the product's (SPEC §8), not the body's.
    key = name_key(product.revenue_property)
    return Revenue(common, key, _interval(b.interval, common), b.churn_days)


def _abtest(b: Any, common: Common, product: Product) -> ABTest:
    assert isinstance(b, bodies.ABTest)
    experiment, conversion = _key(b.experiment, "experiment"), _key(b.conversion, "conversion")
    return ABTest(common, experiment, conversion, b.baseline)


def _path(b: Any, common: Common, product: Product) -> Path:
    assert isinstance(b, bodies.Path)
    start, conversion = _key(b.start, "start"), _key(b.conversion, "conversion")
    return Path(common, start, conversion, b.direction, b.limit)


def _people(b: Any, common: Common, product: Product) -> People:
    assert isinstance(b, bodies.People)
    conditions: list[Condition] = []
    tz = ZoneInfo(common.tz)
    for i, c in enumerate(b.conditions):
        field = f"conditions[{i}]"
        if isinstance(c, bodies.PropertyCondition):
            conditions.append(PropertyCondition(_filter(c, field)))
        elif isinstance(c, bodies.IdentityCondition):
            if not c.value.strip():
                raise _fail(f"{field}.value", "is a non-empty string")
            conditions.append(IdentityCondition(c.value))
        else:
            conditions.append(_event_condition(c, common, tz, field))
    columns = []
    for i, col in enumerate(b.columns):
        name = col.property if isinstance(col, bodies.PropertyColumn) else col.event
        key = _key(name, f"columns[{i}].{col.type}")
        label = f"{name} ({col.which.replace('_', ' ')})"
        columns.append(Column(col.type, key, col.which, label))
    return People(common, tuple(conditions), b.logic, tuple(columns), b.page, b.page_size)


def _event_condition(
    c: bodies.EventCondition, common: Common, tz: ZoneInfo, field: str
) -> EventCondition:
    op, count = "at_least", 1
    if c.count is not None:
        op, count = c.count.op, c.count.value
    if not c.did:
        if c.count is not None:
            raise _fail(f"{field}.count", "is not given with did: false")
        op, count = "exactly", 0
    start = _when(c.from_, f"{field}.from", tz)
    end = _when(c.to, f"{field}.to", tz)
    start = common.start if start is None else start
    end = common.end if end is None else end
    if start >= end:
        raise _fail(f"{field}.from", "is before to")
    event = _key(c.event, f"{field}.event")
    where = common.where + _filters(c.where, f"{field}.where")
    return EventCondition(event, where, start, end, op, count)


_PARSERS: dict[str, Callable[[Any, Common, Product], Query]] = {
    "metrics": _metrics,
    "funnel": _funnel,
    "cohort": _cohort,
    "revenue": _revenue,
    "abtest": _abtest,
    "path": _path,
    "people": _people,
}
