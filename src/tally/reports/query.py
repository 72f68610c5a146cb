"""Report questions as frozen values, read from a JSON body (docs/reports.md).

Parsing is the only place that looks at the body: it checks every field,
names the offending one in :class:`InvalidInput`, resolves names to their SPEC
§2 keys and dates to Unix seconds in the product's time zone. What comes out
is a plain value that the SQL compiler (and the tests' oracle) can trust.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import accumulate
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tally.errors import InvalidInput
from tally.names import name_key

Interval = Literal["hour", "day", "week", "month"]
INTERVALS: tuple[Interval, ...] = ("hour", "day", "week", "month")
STRING_OPS = ("equals", "not_equals", "contains", "begins_with", "ends_with")
PRESENCE_OPS = ("has_any_value", "has_no_value")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
FILTER_OPS = STRING_OPS + PRESENCE_OPS + NUMBER_OPS
MAX_STEPS = 20
MAX_PAGE_SIZE = 1000
#: At most this many conditions, columns or filters in one list of a report: a
#: query's cost grows with them (measured on the landed server, 400
#: `has_no_value` conditions took 1.1 GB and 4 s; 3,000 did not finish).
MAX_ITEMS = 50
#: At most this many intervals in a series (a metrics line, cohorts, revenue):
#: 100 years by day, 11 years by hour.
MAX_INTERVALS = 100_000
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


class _Body:
    """Typed access to a JSON object, every error naming its field."""

    def __init__(self, raw: Any, prefix: str = "") -> None:
        if not isinstance(raw, dict):
            raise InvalidInput(f"{prefix or 'the body'} is a JSON object", field=prefix or "body")
        self.raw = raw
        self.prefix = prefix

    def field(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> InvalidInput:
        return InvalidInput(f"{self.field(name)} {message}", field=self.field(name))

    def get(self, name: str) -> Any:
        return self.raw.get(name)

    def text(self, name: str, *, default: str | None = None) -> str:
        value = self.raw.get(name)
        if value is None:
            if default is not None:
                return default
            raise self.fail(name, "is required")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, "is a non-empty string")
        return value

    def name(self, name: str, *, required: bool = True) -> str | None:
        """A name (event or property) as its SPEC §2 key."""
        if self.raw.get(name) is None and not required:
            return None
        key = name_key(self.text(name))
        if not key:
            raise self.fail(name, "is an empty name")
        return key

    def key(self, name: str) -> str:
        """A required name, as its SPEC §2 key."""
        key = self.name(name)
        assert key is not None  # required=True raises instead
        return key

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.raw.get(name)
        if value is None and default is not None:
            return default
        if value not in options:
            raise self.fail(name, "is one of " + ", ".join(options))
        return str(value)

    def whole(self, name: str, low: int, high: int, default: int | None = None) -> int:
        value = self.raw.get(name)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(name, f"is a whole number from {low} to {high}")
        return value

    def items(self, name: str, *, required: bool = False, most: int = MAX_ITEMS) -> list[Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return []
        if not isinstance(value, list):
            raise self.fail(name, "is a list")
        if len(value) > most:
            raise self.fail(name, f"has {len(value):,} items; the limit is {most}")
        return value

    def interval(self, common: Common) -> Interval:
        """The series' interval, if the range holds no more than MAX_INTERVALS."""
        interval: Interval = self.choice("interval", INTERVALS, "day")  # type: ignore[assignment]
        count = -(-(common.end - common.start) // _INTERVAL_SECONDS[interval])
        if count > MAX_INTERVALS:
            raise self.fail(
                "interval",
                f"makes {count:,} {_INTERVALLY[interval]} intervals of this range; the limit is "
                f"{MAX_INTERVALS:,}: choose a longer interval or a shorter range",
            )
        return interval

    def nested(self, name: str, index: int | None = None) -> _Body:
        item = self.raw.get(name) if index is None else self.raw[name][index]
        label = self.field(name) if index is None else f"{self.field(name)}[{index}]"
        return _Body(item, label)


def parse(kind: str, body: Any, product: Product, *, now: float | None = None) -> Query:
    """The query value for ``kind`` from a JSON body, or InvalidInput."""
    if kind not in KINDS:
        raise InvalidInput(
            f"unknown report {kind!r}; reports are " + ", ".join(KINDS), field="kind"
        )
    b = _Body({} if body is None else body)
    _require_text(b.raw)  # a body the CLI built from its arguments did not pass json_object
    common = _common(b, product, now)
    return _PARSERS[kind](b, common, product)


def _common(b: _Body, product: Product, now: float | None) -> Common:
    tz = ZoneInfo(product.timezone)
    end = _when(b, "to", tz)
    if end is None:
        today = datetime.fromtimestamp(now if now is not None else _now(), tz).date()
        end = _midnight(today + timedelta(days=1), tz)
    start = _when(b, "from", tz)
    if start is None:
        # 30 calendar days before `to` in the product's zone (a DST change
        # makes one of them 23 or 25 hours long).
        local = datetime.fromtimestamp(end, tz).replace(tzinfo=None) - timedelta(days=30)
        start = math.floor(local.replace(tzinfo=tz).timestamp())
    if start >= end:
        raise b.fail("from", "is before to")
    return Common(
        product=product.name,
        start=start,
        end=end,
        tz=product.timezone,
        unit=b.choice("unit", ("people", "times"), "people"),
        where=_filters(b, "where"),
        person_where=_filters(b, "person_where"),
    )


def _now() -> float:
    import time as clock

    return clock.time()


def _midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time(), tz).timestamp())


def _when(b: _Body, name: str, tz: ZoneInfo) -> int | None:
    value = b.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise b.fail(name, "is an ISO date or timestamp, like 2026-01-31")
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time())
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise b.fail(name, f"is not an ISO date or timestamp: {value!r}") from exc
    if not EARLIEST_DATE <= moment.replace(tzinfo=None) <= LATEST_DATE:
        raise b.fail(name, f"is out of range: dates are from {EARLIEST_DATE:%Y-%m-%d} to "
                           f"{LATEST_DATE:%Y-%m-%d}, not {value!r}")  # fmt: skip
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return math.floor(moment.timestamp())


def _filters(b: _Body, name: str) -> tuple[Filter, ...]:
    return tuple(_filter(b.nested(name, i)) for i in range(len(b.items(name))))


def _filter(f: _Body, *, op_name: str = "op") -> Filter:
    prop = f.key("property")
    return Filter(prop, *_test(f, op_name))


def _test(f: _Body, op_name: str = "op") -> tuple[str, str | float | None]:
    op = f.choice(op_name, FILTER_OPS)
    value = f.get("value")
    if op in PRESENCE_OPS:
        return op, None
    if op in NUMBER_OPS:
        number = _number(value)
        if number is None:
            raise f.fail("value", f"is a number for {op}, finite and within ±1.8e308 (a double)")
        return op, number
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise f.fail("value", f"is a string for {op}")
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


def _segment(b: _Body, attributions: tuple[str, ...]) -> Segment | None:
    if b.get("segment") is None:
        return None
    s = b.nested("segment")
    prop = s.key("property")
    return Segment(prop, s.choice("attribution", attributions, "first_ever"))


def _people_only(b: _Body, common: Common) -> None:
    if common.unit != "people":
        raise b.fail("unit", "is people for this report")


def _metrics(b: _Body, common: Common, product: Product) -> Metrics:
    measures = ("people", "times", "average_per_person", "sum", "average")
    measure = b.choice("measure", measures, common.unit)
    prop = b.name("property", required=measure in ("sum", "average"))
    event = b.key("event")
    return Metrics(
        common,
        event,
        measure,
        prop,
        b.interval(common),
        _segment(b, ("first_ever", "last_ever", "at_event")),
    )


def _funnel(b: _Body, common: Common, product: Product) -> Funnel:
    _people_only(b, common)
    raw = b.items("steps", required=True)
    if not 2 <= len(raw) <= MAX_STEPS:
        raise b.fail("steps", f"has 2 to {MAX_STEPS} steps")
    steps = []
    for i, item in enumerate(raw):
        s = b.nested("steps", i) if not isinstance(item, str) else None
        if s is None:  # a bare event name
            key = name_key(item)
            if not key:
                raise InvalidInput(f"steps[{i}] is an empty name", field=f"steps[{i}]")
            steps.append(Step(key, common.where, item.strip()))
            continue
        event = s.key("event")
        steps.append(Step(event, common.where + _filters(s, "where"), s.text("event").strip()))
    window = b.get("window")
    if window is not None:
        window = b.whole("window", 0, 10 * 366 * 86_400)
    return Funnel(
        common,
        tuple(steps),
        b.choice("mode", ("strict", "skip"), "strict"),
        window,
        _segment(b, ("first_ever", "last_ever", "at_step_1")),
    )


def _cohort(b: _Body, common: Common, product: Product) -> Cohort:
    first, back = b.key("first_event"), b.key("return_event")
    return Cohort(
        common,
        first,
        back,
        b.interval(common),
        b.choice("count", ("every_time", "first_time"), "every_time"),
        b.whole("buckets", 1, 100, 12),
    )


def _revenue(b: _Body, common: Common, product: Product) -> Revenue:
    _people_only(b, common)
    key = name_key(product.revenue_property)
    return Revenue(
        common,
        key,
        b.interval(common),
        b.whole("churn_days", 1, 3650, 30),
    )


def _abtest(b: _Body, common: Common, product: Product) -> ABTest:
    _people_only(b, common)
    experiment, conversion = b.key("experiment"), b.key("conversion")
    baseline = b.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise b.fail("baseline", "is a variant, as a string")
    return ABTest(common, experiment, conversion, baseline)


def _path(b: _Body, common: Common, product: Product) -> Path:
    _people_only(b, common)
    start, conversion = b.key("start"), b.key("conversion")
    return Path(
        common,
        start,
        conversion,
        b.choice("direction", ("first", "last"), "first"),
        b.whole("limit", 1, 1000, 50),
    )


def _people(b: _Body, common: Common, product: Product) -> People:
    _people_only(b, common)
    conditions: list[Condition] = []
    tz = ZoneInfo(common.tz)
    for i in range(len(b.items("conditions"))):
        c = b.nested("conditions", i)
        kind = c.choice("type", ("event", "property", "identity"))
        if kind == "property":
            conditions.append(PropertyCondition(_filter(c)))
        elif kind == "identity":
            c.choice("op", ("contains",), "contains")
            conditions.append(IdentityCondition(c.text("value")))
        else:
            conditions.append(_event_condition(c, common, tz))
    columns = []
    for i in range(len(b.items("columns"))):
        c = b.nested("columns", i)
        kind = c.choice("type", ("property", "event"))
        field = "property" if kind == "property" else "event"
        key = c.key(field)
        options = ("first", "last", "current") if kind == "property" else (
            "first_time", "last_time", "count")  # fmt: skip
        which = c.choice("which", options, options[-1])
        columns.append(Column(kind, key, which, f"{c.text(field)} ({which.replace('_', ' ')})"))
    return People(
        common,
        tuple(conditions),
        b.choice("logic", ("all", "any", "in_order"), "all"),
        tuple(columns),
        b.whole("page", 1, 10**9, 1),
        b.whole("page_size", 1, MAX_PAGE_SIZE, 50),
    )


def _event_condition(c: _Body, common: Common, tz: ZoneInfo) -> EventCondition:
    event = c.key("event")
    did = c.get("did") if "did" in c.raw else True
    if not isinstance(did, bool):
        raise c.fail("did", "is true or false")
    op, count = "at_least", 1
    if c.get("count") is not None:
        n = c.nested("count")
        op = n.choice("op", ("at_least", "at_most", "exactly"))
        count = n.whole("value", 0, 10**9)
    if not did:
        if c.get("count") is not None:
            raise c.fail("count", "is not given with did: false")
        op, count = "exactly", 0
    start = _when(c, "from", tz)
    end = _when(c, "to", tz)
    start = common.start if start is None else start
    end = common.end if end is None else end
    if start >= end:
        raise c.fail("from", "is before to")
    return EventCondition(event, common.where + _filters(c, "where"), start, end, op, count)


_PARSERS: dict[str, Callable[[_Body, Common, Product], Query]] = {
    "metrics": _metrics,
    "funnel": _funnel,
    "cohort": _cohort,
    "revenue": _revenue,
    "abtest": _abtest,
    "path": _path,
    "people": _people,
}
