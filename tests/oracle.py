"""An independent, deliberately simple evaluator of every report (docs/reports.md).

The SQL engine (:mod:`tally.reports`) is checked against this oracle on generated
journeys (``test_reports_oracle.py``). The oracle shares nothing with the engine
but the name keys and the numeric test of SPEC §2: it reads what clients sent
(:class:`Event`, :class:`Set`, :class:`Alias`), drops duplicates itself (SPEC
§4), joins identities into people with a union-find (SPEC §5), and answers each
report with loops over per-person lists, cutting intervals with :mod:`zoneinfo`.

Facts are written in log order: :func:`journey_rows` gives the same facts as
journey rows (``tests/journeys.py``), one stream position after another, so the
oracle's total order (receive time, stream, index in the list) is the store's
(receive time, stream, position) of SPEC §11.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from journeys import Row, alias, build, event, keys, sets
from tally.names import name_key, normalise_name
from tally.store.store import Store
from tally.values import is_numeric

Answer = dict[str, Any]
EARLIEST = 1_230_768_000  # 2009-01-01 UTC: an earlier _t with _d=1 is rejected (SPEC §3)
Order = tuple[int, int, str, int]  # (event time, receive ns, stream, index in the facts)

# -- what clients sent ----------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """``/e``: ``identity`` did ``name`` at ``time`` (sent as ``_t`` with ``_d=1``),
    received at second ``recv`` (+ ``ns``) on ``stream``."""

    identity: str
    name: str
    time: int
    recv: int
    props: Mapping[str, str] = field(default_factory=dict)
    stream: str = "c0"
    ns: int = 0


@dataclass(frozen=True)
class Set:
    """``/s``: ``props`` set on ``identity`` at ``time`` (``_t`` with ``_d=1``)."""

    identity: str
    time: int
    recv: int
    props: Mapping[str, str] = field(default_factory=dict)
    stream: str = "c0"
    ns: int = 0


@dataclass(frozen=True)
class Alias:
    """``/a``: ``a`` and ``b`` are one person (whenever the alias arrives)."""

    a: str
    b: str
    recv: int
    stream: str = "c0"
    ns: int = 0


Fact = Event | Set | Alias


def journey_rows(facts: Iterable[Fact]) -> list[Row]:
    """The facts as rows of ``tests/journeys.py``, in the same order."""
    out = []
    for f in facts:
        if isinstance(f, Event):
            row = event(
                f.identity,
                f.name,
                f.recv,
                dict(f.props),
                stream=f.stream,
                ns=f.ns,
                t=f.time,
                d=True,
            )
        elif isinstance(f, Set):
            row = sets(
                f.identity, f.recv, dict(f.props), stream=f.stream, ns=f.ns, t=f.time, d=True
            )
        else:
            row = alias(f.a, f.b, f.recv, stream=f.stream, ns=f.ns)
        out.append(row)
    return out


@contextmanager
def loaded(facts: Iterable[Fact]) -> Iterator[Store]:
    """A fresh in-memory store that has applied the facts (product ``acme``)."""
    store = Store(":memory:")
    try:
        store.apply(build(journey_rows(facts)), keys)
        yield store
    finally:
        store.close()


# -- the oracle's view of the facts ---------------------------------------------------------


class ProductLike(Protocol):
    @property
    def timezone(self) -> str: ...

    @property
    def revenue_property(self) -> str: ...


@dataclass(frozen=True)
class Occurrence:
    person: str
    event: str  # name key
    time: int
    order: Order
    props: dict[str, str]  # property key -> value


@dataclass(frozen=True)
class Value:
    person: str
    key: str
    value: str
    time: int
    order: Order


def _props(raw: Mapping[str, str]) -> dict[str, str]:
    """Property key -> value; of two names with one key the later wins (SPEC §11)."""
    out: dict[str, str] = {}
    for name, value in raw.items():
        out.pop(name_key(name), None)
        out[name_key(name)] = value
    return out


def _duplicate_key(f: Fact) -> tuple[Any, ...]:
    """SPEC §4: identity, endpoint, event name key, de-duplication time, properties."""
    if isinstance(f, Alias):
        return ("/a", f.a, f.b, f.recv)
    name = name_key(f.name) if isinstance(f, Event) else ""
    props = tuple(sorted(_props(f.props).items()))
    return ("/e" if isinstance(f, Event) else "/s", f.identity, name, f.time, props)


class World:
    """People, occurrences and property values, each list in the total order."""

    def __init__(self, facts: Sequence[Fact]) -> None:
        ordered = sorted(
            enumerate(facts), key=lambda p: (p[1].recv * 10**9 + p[1].ns, p[1].stream, p[0])
        )
        seen: set[tuple[Any, ...]] = set()
        kept: list[tuple[int, Fact]] = []
        for index, f in ordered:  # the earlier of two duplicates is kept
            if not isinstance(f, Alias) and not EARLIEST <= f.time <= f.recv + 86_400:
                raise ValueError(f"the store would reject this time (SPEC §3): {f}")
            dup = _duplicate_key(f)
            if dup not in seen:
                seen.add(dup)
                kept.append((index, f))

        parent: dict[str, str] = {}

        def root(x: str) -> str:
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        for _, f in kept:
            for identity in (f.a, f.b) if isinstance(f, Alias) else (f.identity,):
                root(identity)
            if isinstance(f, Alias):
                parent[root(f.a)] = root(f.b)
        members: dict[str, list[str]] = {}
        for identity in parent:
            members.setdefault(root(identity), []).append(identity)
        self.person: dict[str, str] = {}
        self.identities: dict[str, list[str]] = {}
        for group in members.values():
            name = min(group)
            self.identities[name] = sorted(group)
            for identity in group:
                self.person[identity] = name

        self.events: dict[str, list[Occurrence]] = {p: [] for p in self.identities}
        self.values: dict[str, list[Value]] = {p: [] for p in self.identities}
        self.display: dict[str, str] = {}
        for index, f in kept:
            if isinstance(f, Alias):
                continue
            person = self.person[f.identity]
            order = (f.time, f.recv * 10**9 + f.ns, f.stream, index)
            props = _props(f.props)
            if isinstance(f, Event):
                display = normalise_name(f.name)
                assert display is not None
                self.display.setdefault(name_key(f.name), display)  # first in receive order
                self.events[person].append(
                    Occurrence(person, name_key(f.name), f.time, order, props)
                )
            for key, value in props.items():
                self.values[person].append(Value(person, key, value, f.time, order))
        for occurrences in self.events.values():
            occurrences.sort(key=lambda o: o.order)
        for values in self.values.values():
            values.sort(key=lambda v: v.order)

    def people(self) -> list[str]:
        return sorted(self.identities)

    def name(self, asked: str) -> str:
        """The display name of an event: the first spelling seen, else as asked."""
        return self.display.get(name_key(asked)) or normalise_name(asked) or asked

    def history(self, person: str, key: str) -> list[Value]:
        return [v for v in self.values[person] if v.key == key]

    def current(self, person: str, key: str) -> str | None:
        values = self.history(person, key)
        return values[-1].value if values else None

    def value_at(self, person: str, key: str, order: Order) -> str | None:
        """The latest value at or before ``order`` (a value sent with the event counts)."""
        values = [v for v in self.history(person, key) if v.order <= order]
        return values[-1].value if values else None

    def occurrences(
        self, person: str, event: str, filters: Sequence[Mapping[str, Any]], start: int, end: int
    ) -> list[Occurrence]:
        """The person's occurrences of ``event`` in ``[start, end)`` passing ``filters``."""
        return [
            o
            for o in self.events[person]
            if o.event == event and start <= o.time < end and event_passes(o, filters)
        ]


# -- filters ---------------------------------------------------------------------------------


def number(value: str | None) -> float | None:
    """A value as a number when it is numeric (SPEC §2, §11), else None."""
    if value is None or not is_numeric(value):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _text(v: Any) -> str:
    """A filter's value as the text a client would send (JSON 5 and 5.0 are ``5``)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v if isinstance(v, str) else str(v)


def passes(value: str | None, f: Mapping[str, Any]) -> bool:
    """Whether a property value (None: absent) passes the filter ``f``."""
    op, v = f["op"], f.get("value")
    if op == "has_any_value":
        return value is not None
    if op == "has_no_value":
        return value is None
    if op == "not_equals":
        return value != _text(v)
    if value is None:
        return False
    if op in ("gt", "gte", "lt", "lte"):
        x, y = number(value), float(f["value"])
        if x is None:
            return False
        return {"gt": x > y, "gte": x >= y, "lt": x < y, "lte": x <= y}[op]
    text = _text(v)
    if op == "equals":
        return value == text
    if op == "contains":
        return text in value
    if op == "begins_with":
        return value.startswith(text)
    assert op == "ends_with", op
    return value.endswith(text)


def event_passes(o: Occurrence, filters: Sequence[Mapping[str, Any]]) -> bool:
    return all(passes(o.props.get(name_key(f["property"])), f) for f in filters)


# -- time ------------------------------------------------------------------------------------

SIZES = {"hour": 3600, "day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400}


def midnight(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time(), tz).timestamp())


def moment(text: str, tz: ZoneInfo) -> int:
    """A ``from``/``to``: an ISO date or timestamp, in ``tz`` unless it has an offset."""
    if len(text) == 10:
        return midnight(date.fromisoformat(text), tz)
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return math.floor(when.timestamp())


def interval_of(t: int, interval: str, tz: ZoneInfo) -> int:
    """The start of the calendar interval holding ``t`` (weeks start on Monday)."""
    local = datetime.fromtimestamp(t, tz)
    if interval == "hour":
        return int(local.replace(minute=0, second=0).timestamp())
    day = local.date()
    if interval == "week":
        day -= timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    return midnight(day, tz)


def _next_interval(start: int, interval: str, tz: ZoneInfo) -> int:
    if interval == "hour":
        return interval_of(start + 3600, interval, tz)
    day = datetime.fromtimestamp(start, tz).date()
    if interval == "month":
        return midnight((day + timedelta(days=32)).replace(day=1), tz)
    return midnight(day + timedelta(days=7 if interval == "week" else 1), tz)


def interval_starts(start: int, end: int, interval: str, tz: ZoneInfo) -> list[int]:
    """The starts of the intervals that overlap ``[start, end)``."""
    out = [interval_of(start, interval, tz)]
    while (following := _next_interval(out[-1], interval, tz)) < end:
        out.append(following)
    return out


def iso(t: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


# -- numbers ---------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# -- evaluating ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """What every report shares: the range, the zone, the filters and the people."""

    world: World
    body: Mapping[str, Any]
    tz: ZoneInfo
    start: int
    end: int
    where: list[Mapping[str, Any]]
    product: ProductLike

    def people(self) -> list[str]:
        """Every person passing ``person_where`` (tested on current values)."""
        filters = self.body.get("person_where") or []
        return [
            p
            for p in self.world.people()
            if all(passes(self.world.current(p, name_key(f["property"])), f) for f in filters)
        ]

    def starts(self, interval: str) -> list[int]:
        return interval_starts(self.start, self.end, interval, self.tz)

    def interval_of(self, t: int, interval: str) -> int:
        return interval_of(t, interval, self.tz)

    def iso(self, t: int) -> str:
        return iso(t, self.tz)


def evaluate(
    kind: str,
    body: Mapping[str, Any],
    facts: Sequence[Fact],
    product: ProductLike,
    *,
    now: float | None = None,
) -> Answer:
    """The answer docs/reports.md gives to the report ``kind`` asked with ``body``."""
    tz = ZoneInfo(product.timezone)
    if body.get("to") is not None:
        end = moment(body["to"], tz)
    else:
        assert now is not None, "a body without `to` needs `now`"
        end = midnight(datetime.fromtimestamp(now, tz).date() + timedelta(days=1), tz)
    if body.get("from") is not None:
        start = moment(body["from"], tz)
    else:  # 30 calendar days before `to`
        start = midnight(datetime.fromtimestamp(end, tz).date() - timedelta(days=30), tz)
    ask = Ask(World(facts), body, tz, start, end, list(body.get("where") or []), product)
    return REPORTS[kind](ask)


# -- metrics ---------------------------------------------------------------------------------


def metrics(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    measure = b.get("measure") or b.get("unit") or "people"
    prop = name_key(b["property"]) if b.get("property") else None
    interval = b.get("interval", "day")
    occurrences = [
        o
        for p in ask.people()
        for o in w.occurrences(p, name_key(b["event"]), ask.where, ask.start, ask.end)
    ]

    def value(group: list[Occurrence]) -> float | None:
        people, times = len({o.person for o in group}), len(group)
        numbers = [x for o in group if (x := number(o.props.get(prop or ""))) is not None]
        return {
            "people": people,
            "times": times,
            "average_per_person": ratio(times, people),
            "sum": float(sum(numbers)),
            "average": ratio(sum(numbers), len(numbers)),
        }[measure]

    def answer(group: list[Occurrence]) -> Answer:
        series = [
            {
                "start": ask.iso(s),
                "value": value([o for o in group if ask.interval_of(o.time, interval) == s]),
            }
            for s in ask.starts(interval)
        ]
        return {"series": series, "total": value(group)}

    out = answer(occurrences)
    segment = b.get("segment")
    if segment is None:
        return out
    key, attribution = name_key(segment["property"]), segment.get("attribution", "first_ever")
    groups: dict[str | None, list[Occurrence]] = {}
    for o in occurrences:
        if attribution == "at_event":
            v = w.value_at(o.person, key, o.order)
        else:
            history = w.history(o.person, key)
            v = (
                (history[0] if attribution == "first_ever" else history[-1]).value
                if history
                else None
            )
        groups.setdefault(v, []).append(o)
    segments = [{"value": v, **answer(group)} for v, group in groups.items()]
    segments.sort(key=lambda s: (-(s["total"] or 0), s["value"] is None, s["value"] or ""))
    return {**out, "segments": segments}


# -- funnel ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    event: str  # name key
    asked: str
    where: list[Mapping[str, Any]]
    start: int
    end: int


def match_in_order(
    w: World, person: str, stages: Sequence[Stage], *, skip: bool, window: int | None
) -> list[Occurrence | None]:
    """Funnel steps (docs/reports.md): the first occurrence of stage 1, then each
    stage's earliest unmatched occurrence at or after the last matched time."""
    found: list[Occurrence | None] = []
    firsts = w.occurrences(person, stages[0].event, stages[0].where, stages[0].start, stages[0].end)
    if not firsts:
        return [None] * len(stages)
    first = firsts[0]
    found.append(first)
    cursor = first.time
    last = math.inf if window is None else first.time + window
    for stage in stages[1:]:
        candidates = [
            o
            for o in w.occurrences(person, stage.event, stage.where, stage.start, stage.end)
            if cursor <= o.time <= last and all(o is not m for m in found)
        ]
        if candidates:
            found.append(candidates[0])
            cursor = candidates[0].time
        else:
            found.append(None)
            if not skip:
                break
    return found + [None] * (len(stages) - len(found))


def funnel(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    stages = []
    for step in b["steps"]:
        spec = {"event": step} if isinstance(step, str) else step
        where = ask.where + list(spec.get("where") or [])
        stages.append(Stage(name_key(spec["event"]), spec["event"], where, ask.start, ask.end))
    paths = {
        p: match_in_order(
            w, p, stages, skip=b.get("mode", "strict") == "skip", window=b.get("window")
        )
        for p in ask.people()
    }
    paths = {p: path for p, path in paths.items() if path[0] is not None}

    def steps(people: Iterable[str]) -> list[Answer]:
        out: list[Answer] = []
        reached = [0] * len(stages)
        spans: list[list[float]] = [[] for _ in stages]
        for p in people:
            previous: Occurrence | None = None
            for i, o in enumerate(paths[p]):
                if o is None:
                    continue
                reached[i] += 1
                if previous is not None:
                    spans[i].append(o.time - previous.time)
                previous = o
        for i, stage in enumerate(stages):
            out.append(
                {
                    "event": w.name(stage.asked),
                    "people": reached[i],
                    "conversion_from_previous": ratio(
                        reached[i], reached[i - 1] if i else reached[0]
                    ),
                    "conversion_from_first": ratio(reached[i], reached[0]),
                    "median_seconds_from_previous": median(spans[i]),
                }
            )
        return out

    out: Answer = {"steps": steps(paths)}
    segment = b.get("segment")
    if segment is None:
        return out
    key, attribution = name_key(segment["property"]), segment.get("attribution", "first_ever")
    groups: dict[str | None, list[str]] = {}
    for p, path in paths.items():
        first = path[0]
        assert first is not None
        if attribution == "at_step_1":
            v = w.value_at(p, key, first.order)
        else:
            history = w.history(p, key)
            v = (
                (history[0] if attribution == "first_ever" else history[-1]).value
                if history
                else None
            )
        groups.setdefault(v, []).append(p)
    segments: list[Answer] = [{"value": v, "steps": steps(people)} for v, people in groups.items()]
    segments.sort(key=lambda s: (-s["steps"][0]["people"], s["value"] is None, s["value"] or ""))
    return {**out, "segments": segments}


# -- cohort ----------------------------------------------------------------------------------


def cohort(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    first_event, return_event = name_key(b["first_event"]), name_key(b["return_event"])
    interval = b.get("interval", "day")
    size, buckets = SIZES[interval], b.get("buckets", 12)
    every_time = b.get("count", "every_time") == "every_time"
    times = b.get("unit", "people") == "times"
    # cohort start -> person -> the bucket of each return that counts
    cohorts: dict[int, dict[str, list[int]]] = {s: {} for s in ask.starts(interval)}
    for p in ask.people():
        firsts = w.occurrences(p, first_event, ask.where, ask.start, ask.end)
        if not firsts:
            continue
        t0 = firsts[0]
        returns = [
            o
            for o in w.occurrences(p, return_event, ask.where, t0.time, math.inf)  # type: ignore[arg-type]
            if o is not t0
        ]
        if not every_time:
            returns = returns[:1]
        ks = [(o.time - t0.time) // size for o in returns]
        cohorts[ask.interval_of(t0.time, interval)][p] = [k for k in ks if k < buckets]

    out = []
    for s, members in cohorts.items():
        people = len(members)
        values, cumulative = [], []
        returned: set[str] = set()
        running = 0
        for k in range(buckets):
            in_bucket = [p for p, ks in members.items() for j in ks if j == k]
            value = len(in_bucket) if times else len(set(in_bucket))
            values.append(value)
            running += value
            returned |= set(in_bucket)
            cumulative.append(running if times else len(returned))
        out.append(
            {
                "start": ask.iso(s),
                "people": people,
                "values": values,
                "percentages": [ratio(v, people) for v in values],
                "cumulative": cumulative,
                "cumulative_percentages": [ratio(c, people) for c in cumulative],
            }
        )
    return {"cohorts": out}


# -- revenue ---------------------------------------------------------------------------------


def revenue(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    key = name_key(ask.product.revenue_property)
    interval = b.get("interval", "day")
    churn = b.get("churn_days", 30) * 86_400
    starts = ask.starts(interval)
    payments: list[tuple[str, int, float]] = []  # (person, time, amount), every one ever
    churns: list[tuple[str, int]] = []  # (person, moment)
    first_positive: dict[str, int] = {}
    for p in ask.people():
        mine = [(v.time, x) for v in w.history(p, key) if (x := number(v.value)) is not None]
        payments += [(p, t, x) for t, x in mine]
        positive = [t for t, x in mine if x > 0]
        if positive:
            first_positive[p] = positive[0]
        for i, t in enumerate(positive):
            if i + 1 == len(positive) or positive[i + 1] > t + churn:
                churns.append((p, t + churn))

    def within(t: int, s: int | None) -> bool:
        in_interval = s is None or ask.interval_of(t, interval) == s
        return ask.start <= t < ask.end and in_interval

    def period(s: int | None) -> tuple[float, set[str], set[str], set[str]]:
        amounts = [x for _, t, x in payments if within(t, s)]
        paying = {p for p, t, x in payments if x > 0 and within(t, s)}
        new = {p for p, t in first_positive.items() if within(t, s)}
        churned = {p for p, t in churns if within(t, s)}
        return float(sum(amounts)), paying, new, churned

    series = []
    for s in starts:
        total, paying, new, churned = period(s)
        series.append(
            {
                "start": ask.iso(s),
                "revenue": total,
                "paying": len(paying),
                "new": len(new),
                "churned": len(churned),
                "average_per_customer": ratio(total, len(paying)),
            }
        )
    total, paying, _, churned = period(None)
    return {
        "series": series,
        "total_revenue": total,
        "paying": len(paying),
        "lifetime_value": ratio(total, len(churned)),
    }


# -- A/B test --------------------------------------------------------------------------------


def abtest(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    experiment, conversion = name_key(b["experiment"]), name_key(b["conversion"])
    participants: dict[str, int] = {}
    conversions: dict[str, int] = {}
    for p in ask.people():
        exposures = [v for v in w.history(p, experiment) if ask.start <= v.time < ask.end]
        if not exposures:
            continue
        variant, exposed = exposures[0].value, exposures[0].time
        participants[variant] = participants.get(variant, 0) + 1
        converted = w.occurrences(p, conversion, ask.where, exposed, ask.end)
        conversions[variant] = conversions.get(variant, 0) + bool(converted)
    names = sorted(participants)
    baseline = b.get("baseline") or (names[0] if names else None)
    rates = {v: conversions[v] / participants[v] for v in names}
    variants: list[Answer] = []
    for v in names:
        certainty = None
        if v != baseline and baseline in rates:
            pb, nb, pv, nv = rates[baseline], participants[baseline], rates[v], participants[v]
            spread = math.sqrt(pb * (1 - pb) / nb + pv * (1 - pv) / nv)
            certainty = phi((pv - pb) / spread) if spread else None
        base_rate = rates.get(baseline) if baseline is not None else None
        variants.append(
            {
                "name": v,
                "participants": participants[v],
                "conversions": conversions[v],
                "rate": rates[v],
                "improvement": ratio(rates[v] - base_rate, base_rate) if base_rate else None,
                "certainty": certainty,
            }
        )
    above = [x for x in variants if x["certainty"] is not None and x["certainty"] > 0.95]
    winner = max(above, key=lambda x: x["certainty"])["name"] if above else None
    return {"variants": variants, "baseline": baseline, "winner": winner}


# -- path ------------------------------------------------------------------------------------


def collapse(names: Sequence[str]) -> list[str]:
    """Runs of one name as ``"Name 3X"`` (a single one stays ``"Name"``)."""
    runs: list[list[Any]] = []
    for n in names:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return [n if count == 1 else f"{n} {count}X" for n, count in runs]


def path(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    start_event, conversion = name_key(b["start"]), name_key(b["conversion"])
    last = b.get("direction", "first") == "last"
    found: dict[tuple[str, ...], list[int]] = {}
    for p in ask.people():
        starts = w.occurrences(p, start_event, ask.where, ask.start, ask.end)
        if not starts:
            continue
        s = starts[0]
        ends = [o for o in w.occurrences(p, conversion, ask.where, s.time, ask.end) if o is not s]
        if not ends:
            continue
        c = ends[0]
        between = [w.display[o.event] for o in w.events[p] if s.order < o.order < c.order]
        steps = collapse(between)
        steps = steps[-5:] if last else steps[:5]
        found.setdefault(tuple(steps), []).append(c.time - s.time)
    paths: list[Answer] = [
        {"steps": list(steps), "people": len(spans), "median_seconds": median(spans)}
        for steps, spans in found.items()
    ]
    paths.sort(key=lambda x: (-x["people"], x["steps"]))
    return {
        "paths": paths[: b.get("limit", 50)],
        "converted": sum(len(spans) for spans in found.values()),
    }


# -- people search ---------------------------------------------------------------------------


def _condition_holds(ask: Ask, person: str, c: Mapping[str, Any]) -> bool:
    w = ask.world
    if c["type"] == "identity":
        return any(c["value"] in identity for identity in w.identities[person])
    if c["type"] == "property":
        return passes(w.current(person, name_key(c["property"])), c)
    stage = _stage(ask, c)
    n = len(w.occurrences(person, stage.event, stage.where, stage.start, stage.end))
    op, count = _count(c)
    return {"at_least": n >= count, "at_most": n <= count, "exactly": n == count}[op]


def _count(c: Mapping[str, Any]) -> tuple[str, int]:
    if c.get("did", True) is False:
        return "exactly", 0
    count = c.get("count") or {"op": "at_least", "value": 1}
    return count["op"], count["value"]


def _stage(ask: Ask, c: Mapping[str, Any]) -> Stage:
    start = moment(c["from"], ask.tz) if c.get("from") else ask.start
    end = moment(c["to"], ask.tz) if c.get("to") else ask.end
    where = ask.where + list(c.get("where") or [])
    return Stage(name_key(c["event"]), c["event"], where, start, end)


def _in_order(ask: Ask, person: str, conditions: Sequence[Mapping[str, Any]]) -> bool:
    stages = [
        _stage(ask, c)
        for c in conditions
        if c["type"] == "event" and _count(c)[1] > 0 and _count(c)[0] in ("at_least", "exactly")
    ]
    if not stages:
        return True
    return all(
        o is not None for o in match_in_order(ask.world, person, stages, skip=False, window=None)
    )


def _column(ask: Ask, person: str, c: Mapping[str, Any]) -> Any:
    w = ask.world
    if c["type"] == "property":
        history = w.history(person, name_key(c["property"]))
        if not history:
            return None
        return (history[0] if c.get("which") == "first" else history[-1]).value
    occurrences = w.occurrences(person, name_key(c["event"]), ask.where, ask.start, ask.end)
    which = c.get("which", "count")
    if which == "count":
        return len(occurrences)
    if not occurrences:
        return None
    return ask.iso((occurrences[0] if which == "first_time" else occurrences[-1]).time)


def _label(c: Mapping[str, Any]) -> str:
    if c["type"] == "property":
        return f"{c['property']} ({c.get('which', 'current')})"
    return f"{c['event']} ({c.get('which', 'count').replace('_', ' ')})"


def people(ask: Ask) -> Answer:
    b, w = ask.body, ask.world
    conditions = b.get("conditions") or []
    logic = b.get("logic", "all")
    columns = b.get("columns") or []
    page, size = b.get("page", 1), b.get("page_size", 50)
    matching = []
    for p in ask.people():
        held = [_condition_holds(ask, p, c) for c in conditions]
        if logic == "any" and conditions and not any(held):
            continue
        if logic != "any" and not all(held):
            continue
        if logic == "in_order" and not _in_order(ask, p, conditions):
            continue
        matching.append(p)
    shown = matching[(page - 1) * size : page * size]
    return {
        "people": [
            {
                "person": p,
                "display": _display(p, w.identities[p]),
                "identities": w.identities[p],
                "columns": [_column(ask, p, c) for c in columns],
            }
            for p in shown
        ],
        "total": len(matching),
        "page": page,
        "page_size": size,
        "columns": [_label(c) for c in columns],
    }


REPORTS: dict[str, Callable[[Ask], Answer]] = {
    "metrics": metrics,
    "funnel": funnel,
    "cohort": cohort,
    "revenue": revenue,
    "abtest": abtest,
    "path": path,
    "people": people,
}


# -- comparing -------------------------------------------------------------------------------


def differences(got: Any, expected: Any, where: str = "answer") -> list[str]:
    """Where two answers differ (numbers within 1e-9), as ``path: got != expected``."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out = (
            [f"{where}: keys {sorted(got)} != {sorted(expected)}"]
            if set(got) != set(expected)
            else []
        )
        for k in expected:
            if k in got:
                out += differences(got[k], expected[k], f"{where}.{k}")
        return out
    if isinstance(expected, list) and isinstance(got, list):
        if len(got) != len(expected):
            return [f"{where}: {got!r} != {expected!r}"]
        return [
            d
            for i, (g, x) in enumerate(zip(got, expected, strict=True))
            for d in differences(g, x, f"{where}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(got, numbers)
        and isinstance(expected, numbers)
        and not isinstance(got, bool)
        and not isinstance(expected, bool)
    ):
        same = math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    else:
        same = type(got) is type(expected) and got == expected
    return [] if same else [f"{where}: {got!r} != {expected!r}"]


def _display(person: str, identities: Sequence[str]) -> str:
    """docs/reports.md "People": the smallest e-mail-like identity, else the
    smallest that does not look anonymous, else the person."""

    def email(i: str) -> bool:
        local, at, domain = i.partition("@")
        name, dot, top = domain.rpartition(".")
        return bool(at and local and name and dot and top) and not any(
            c.isspace() or c == "@" for c in local + domain
        )

    def anonymous(i: str) -> bool:
        hexed = i.replace("-", "")
        uuid = len(hexed) == 32 and all(c in "0123456789abcdefABCDEF" for c in hexed)
        token = (len(i) >= 16 and all(c.isascii() and (c.isalnum() or c in "+/=_-") for c in i)
                 and any(c.isdigit() for c in i) and any(c.isalpha() for c in i))  # fmt: skip
        return i.lower().startswith("anon") or uuid or token

    ordered = sorted({*identities, person})
    return next((i for i in ordered if email(i)), None) or next(
        (i for i in ordered if not anonymous(i)), person
    )
