"""The one query-building layer of the reports: SQL text with bound parameters.

A :class:`Sql` is text with ``?`` placeholders and the values that fill them,
in order; pieces are joined with ``+`` and :func:`join`, never by pasting a
value into the text (DESIGN §5). Everything specific to DuckDB's dialect is in
the :class:`Dialect` at the bottom, so that another store (ClickHouse) can
reuse every report by giving its own spelling of the same few functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from tally.reports.bodies import Interval
from tally.reports.query import Common, Filter
from tally.reports.statements import execute
from tally.store.schema import IDENTITY_HASH
from tally.views.common import known_identities_hashed

#: SPEC §11's numeric values (DuckDB's regexp is RE2: ``\d`` is ASCII 0-9).
NUMERIC_PATTERN = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"


@dataclass(frozen=True)
class Sql:
    text: str
    params: tuple[Any, ...] = ()

    def __add__(self, other: Sql | str) -> Sql:
        if isinstance(other, str):
            return Sql(self.text + other, self.params)
        return Sql(self.text + other.text, self.params + other.params)

    def __radd__(self, other: str) -> Sql:
        return Sql(other + self.text, self.params)


def sql(text: str, *params: Any) -> Sql:
    if text.count("?") != len(params):
        raise ValueError(f"{text.count('?')} placeholders, {len(params)} values: {text!r}")
    return Sql(text, params)


def join(parts: Iterable[Sql | str], sep: str) -> Sql:
    out = Sql("")
    for i, part in enumerate(parts):
        out = (out + sep + part) if i else (out + part)
    return out


def all_of(parts: Sequence[Sql]) -> Sql:
    return join((Sql("(") + p + ")" for p in parts), " AND ") if parts else Sql("true")


def values_list(values: Sequence[Any]) -> Sql:
    """``(?, ?, …)`` for an IN list."""
    return sql("(" + ", ".join("?" for _ in values) + ")", *values)


# -- time ---------------------------------------------------------------------------------


#: A series over at most this many seconds is kept once reckoned (16 series of
#: at most 9,600 hours): the same few ranges come back report after report (a
#: dashboard's), and reckoning a day series of 90 days in its zone, with its
#: labels (:func:`iso_local`), took 0.26 ms of the 4.5 ms that daily times on
#: ten million events take (docs/benchmarks.md, "Session 12: search15").
KEPT_SERIES_SECONDS = 400 * 86_400


def interval_starts(start: int, end: int, interval: Interval, tz_name: str) -> list[int]:
    """The starts (Unix seconds) of the calendar intervals that overlap [start, end),
    in the product's time zone (SPEC §12: ISO weeks, calendar months)."""
    if end - start <= KEPT_SERIES_SECONDS:
        return list(_kept_starts(start, end, interval, tz_name))
    return _starts(start, end, interval, tz_name)


@lru_cache(maxsize=16)
def _kept_starts(start: int, end: int, interval: Interval, tz_name: str) -> tuple[int, ...]:
    return tuple(_starts(start, end, interval, tz_name))


def _starts(start: int, end: int, interval: Interval, tz_name: str) -> list[int]:
    tz = ZoneInfo(tz_name)
    local = datetime.fromtimestamp(start, tz)
    if interval == "hour":
        # Hours are cut in absolute time (every zone's offset is whole hours or
        # half hours; a half-hour zone's hours start at :30 UTC).
        first = int(local.replace(minute=0, second=0, microsecond=0).timestamp())
        return list(range(first, end, 3600))
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    if interval == "week":
        day -= timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    starts: list[int] = []
    naive = day.replace(tzinfo=None)
    while (moment := int(naive.replace(tzinfo=tz).timestamp())) < end:
        if not starts or moment > starts[-1]:
            starts.append(moment)
        naive = _next(naive, interval)
    return starts


def _next(naive: datetime, interval: Interval) -> datetime:
    if interval == "day":
        return naive + timedelta(days=1)
    if interval == "week":
        return naive + timedelta(days=7)
    year, month = (naive.year + 1, 1) if naive.month == 12 else (naive.year, naive.month + 1)
    return naive.replace(year=year, month=month)


SLOT = 900  # a quarter hour: every interval of every time zone starts on one
MAX_SLOTS = 400_000
_LONGEST = 32 * 86_400  # longer than any interval (a month, with a DST hour)


def _ends(starts: Sequence[int]) -> list[int] | None:
    """Where each interval ends (the next one's start; the last, a month and a
    day on); None when the range has more than :data:`MAX_SLOTS` quarter hours
    (or a start is not on one)."""
    if not starts or any(s % SLOT for s in starts):
        return None
    ends = [*starts[1:], starts[-1] + _LONGEST]
    if (ends[-1] - starts[0]) // SLOT > MAX_SLOTS:
        return None
    return ends


@lru_cache(maxsize=4096)
def iso_local(seconds: int, tz_name: str) -> str:
    """A moment as ISO 8601 in a time zone (the labels of a series: the same
    ones come back with every report of its range)."""
    return datetime.fromtimestamp(seconds, ZoneInfo(tz_name)).isoformat()


# -- the dialect ----------------------------------------------------------------------------


class Dialect:
    """DuckDB's spelling of what the reports need."""

    #: The total order of occurrences (SPEC §3, §11), as columns to order by.
    order_columns = "time, recv_ns, stream, position"

    def order_key(self, alias: str) -> str:
        """The total order of occurrences (SPEC §3, §11) as one comparable value."""
        return f"({alias}.time, {alias}.recv_ns, {alias}.stream, {alias}.position)"

    def first_by(self, value: str, key: str) -> str:
        return f"arg_min({value}, {key})"

    def last_by(self, value: str, key: str) -> str:
        return f"arg_max({value}, {key})"

    def prop(self, properties: str, key: str) -> Sql:
        """The value of one property in a map column (NULL when absent)."""
        return sql(f"{properties}[?]", key)

    def numeric(self, value: Sql | str) -> Sql:
        """A value as a finite double when it is numeric (SPEC §2, §11), else NULL."""
        v = value if isinstance(value, Sql) else Sql(value)
        cast = Sql("try_cast(") + v + " AS DOUBLE)"
        return (
            Sql("CASE WHEN regexp_full_match(") + v + sql(", ?) AND isfinite(", NUMERIC_PATTERN)
            + cast + ") THEN " + cast + " END"
        )  # fmt: skip

    def as_double(self, value: Sql | str) -> Sql:
        """A value as a double: :meth:`numeric`'s value where
        :meth:`is_numeric` holds (anything, or NULL, where it does not)."""
        return Sql("try_cast(") + value + " AS DOUBLE)"

    def is_numeric(self, value: Sql | str, cast: Sql | str) -> Sql:
        """Whether a value is numeric (SPEC §2, §11), as :meth:`numeric`
        decides, given ``cast``, its :meth:`as_double`: a query that keeps
        numeric values only selects ``cast`` and filters on this, running the
        pattern once a value, after the cheaper test of the cast."""
        return (
            Sql("isfinite(") + cast + ") AND regexp_full_match(" + value
            + sql(", ?)", NUMERIC_PATTERN)
        )  # fmt: skip

    def exact_sum(self, value: str) -> str:
        """A compensated (Kahan) sum of doubles: payments of 19.99 add up to
        cents, not to 37049.93000000027."""
        return f"fsum({value})"

    def median(self, value: str) -> str:
        # quantile_cont: the mean of the two middle values of an even count.
        return f"quantile_cont({value}, 0.5)"

    def ordered_list(self, value: str, order: str) -> str:
        """An aggregate: the group's values as a list, in ``order``."""
        return f"list({value} ORDER BY {order})"

    def bit(self, n: str) -> str:
        """A number with bit ``n`` (0 to 126) set, and bits of such numbers."""
        return f"(1::HUGEINT << {n})"

    def bit_or(self, value: str) -> str:
        """An aggregate: the bits set in any of the group's values."""
        return f"bit_or({value})"

    def has_bit(self, bits: str, n: str) -> str:
        return f"(({bits} >> {n}) & 1) = 1"

    def below_bit(self, bits: str, n: str) -> str:
        """The bits of ``bits`` under bit ``n``."""
        return f"({bits} & ({self.bit(n)} - 1))"

    def bucket_join(self, time_expr: str, starts: Sequence[int]) -> Sql:
        """A join that gives each row the start of its interval as ``b.bucket``:
        the greatest start at or before ``time_expr``.

        Every time zone's offset is a whole number of quarter hours, so every
        interval starts on one: rows find their interval by an equi-join on
        their quarter hour, against a table of the range's quarter hours (a
        hash join, several times faster than ``ASOF`` here). Ranges of more
        than :data:`MAX_SLOTS` quarter hours (about 11 years) join by ``ASOF``.
        """
        ends = _ends(starts)
        if ends is None:
            return sql(
                f" ASOF JOIN (SELECT unnest(?::BIGINT[]) AS bucket) b ON {time_expr} >= b.bucket",
                list(starts),
            )
        # The quarter hours are made by DuckDB from the intervals' bounds: bound
        # as lists of every quarter hour, converting them took most of the time
        # of a report that reads nothing (3 ms for 30 days; bench/floor.py).
        return sql(
            f" JOIN (SELECT unnest(range(s // {SLOT}, e // {SLOT})) AS slot, s AS bucket "
            "FROM (SELECT unnest(?::BIGINT[]) AS s, unnest(?::BIGINT[]) AS e)) b "
            f"ON b.slot = {time_expr} // {SLOT}",
            list(starts),
            ends,
        )

    def bucket(self, time_expr: str, starts: Sequence[int]) -> tuple[Sql, Sql]:
        """The start of each row's interval (the greatest of ``starts`` at or
        before ``time_expr``, which must lie at or after the first start and
        before the last interval's end): a select expression, and the join it
        needs.

        Starts evenly spaced (every hourly series; days and weeks in UTC, or in
        a zone whose offset does not change in the range, SPEC §12) are
        reckoned by arithmetic, with no join: a quarter of the time of daily
        people on ten million events (docs/benchmarks.md, "Session 10:
        metrics12"). Others (months; days and weeks across a DST change, SPEC
        §9) take :meth:`bucket_join`'s ``b.bucket``."""
        if len(starts) == 1:
            return sql("?::BIGINT", starts[0]), Sql("")
        index = self.bucket_number(time_expr, starts)
        if index is None:
            return Sql("b.bucket"), self.bucket_join(time_expr, starts)
        step = starts[1] - starts[0]
        return sql("(?::BIGINT + ", starts[0]) + index + sql(" * ?::BIGINT)", step), Sql("")

    def bucket_number(self, time_expr: str, starts: Sequence[int]) -> Sql | None:
        """The index in ``starts`` of each row's interval, as :meth:`bucket`
        finds it by arithmetic, where the starts are evenly spaced; None where
        they are not. Grouped by, a small range that the engine can see: DuckDB
        then groups by direct index (a perfect hash) rather than by hashing
        the start, which daily times on ten million events spent a tenth of
        its statement on (docs/benchmarks.md, "Session 12: search15")."""
        if len(starts) == 1:
            return Sql("0")
        step = starts[1] - starts[0]
        if any(b - a != step for a, b in pairwise(starts)):
            return None
        return sql(f"(({time_expr} - ?::BIGINT) // ?::BIGINT)", starts[0], step)

    def identity_hash(self, text: str) -> str:
        """The number of an identity (store/schema.py), as the store keeps it in ``ih``."""
        return IDENTITY_HASH.format(text)

    def person_join(self, alias: str) -> str:
        """Joins the persons moved since ``alias``'s rows were written (SPEC
        §5): ``alias`` (events or property values) has ``product``, ``ih``,
        the hash of its identity, and ``ph``, its person when written. Every
        row's ``ph`` is its identity's current person unless the identity is
        in ``moved``, whose ``ph`` then is (store/schema.py), whatever order
        the records arrived in; ``moved`` is small (the store folds it)."""
        return (
            f" LEFT JOIN moved m_{alias} ON m_{alias}.product = {alias}.product"
            f" AND m_{alias}.ih = {alias}.ih"
        )

    def person(self, alias: str) -> str:
        """A person, as a number: the hash of its smallest identity (schema.py)."""
        return f"coalesce(m_{alias}.ph, {alias}.ph)"

    def person_number(self, alias: str) -> str:
        """A person's dense number (schema 5), beside :meth:`person`, by the
        same join: one number for each person, 0 to :meth:`people_numbered` - 1."""
        return f"coalesce(m_{alias}.pn, {alias}.pn)"

    def people_numbered(self, con: Any) -> int:
        """How many people are numbered (the sets of :meth:`people_set` take
        a bit for each): a count kept by the table, not a scan."""
        ((count,),) = execute(con, Sql("SELECT count(*) FROM persons")).fetchall()
        return int(count)

    def people_set(self, number: str) -> str:
        """An aggregate: the set of the group's people, by their numbers
        (:meth:`person_number`), as a bitmap of :meth:`people_numbered` bits
        (ClickHouse: ``groupBitmapState``). The bounds are DuckDB's statistics
        of the number columns, which cover every number any row holds, so a
        person numbered while the query starts cannot fall outside them."""
        return f"bitstring_agg({number})"

    def people_union(self, people_set: str) -> str:
        """An aggregate: the union of the groups' sets of :meth:`people_set`."""
        return f"bit_or({people_set})"

    def people_count(self, people_set: str) -> str:
        """How many people a set of :meth:`people_set` holds."""
        return f"bit_count({people_set})"

    def graph_join(self, alias: str) -> str:
        """Joins the alias graph, for rows that store no person (known
        identities): ``alias`` has ``product`` and ``ih``."""
        return (
            f" LEFT JOIN identities i_{alias} ON i_{alias}.product = {alias}.product"
            f" AND i_{alias}.ih = {alias}.ih"
        )

    def graph_person(self, alias: str) -> str:
        """The person of a row joined by :meth:`graph_join`."""
        return f"coalesce(i_{alias}.ph, {alias}.ih)"

    def with_identities(self, rows: str, product: str, *, named: bool = False) -> Sql:
        """The rows of ``rows`` (which has ``person``), each once for every
        identity of its person, with ``ih`` and ``identity``: the inverse of
        :meth:`person_join` (SPEC §5). An aliased person's identities are in
        ``identities``; any other person is its one known identity (known from
        a record, or only from an alias that joined nobody: ``ann`` ~ ``ann``,
        or one revoked since).

        ``named``: ``rows`` also has each person's ``name`` (:meth:`person_name`),
        which for a person outside the alias graph is that one identity: it is
        taken from there rather than looked up again (the three reads of the
        known identities cost a people search 0.6 ms of planning; benchmarks.md,
        "API floor")."""
        if named:
            return sql(
                f"SELECT r.*, n.ih, n.identity FROM {rows} r JOIN identities n ON n.product = ? "
                f"AND n.ph = r.person UNION ALL SELECT r.*, r.person, r.name FROM {rows} r "
                "WHERE r.name IS NOT NULL "
                "AND r.person NOT IN (SELECT ph FROM identities WHERE product = ?)",
                product,
                product,
            )
        known = known_identities_hashed(f"SELECT person FROM {rows}")
        return sql(
            f"SELECT r.*, n.ih, n.identity FROM {rows} r JOIN identities n ON n.product = ? "
            f"AND n.ph = r.person UNION ALL SELECT r.*, k.ih, k.identity FROM {rows} r "
            f"JOIN ({known}) k ON k.ih = r.person "
            "WHERE r.person NOT IN (SELECT ph FROM identities WHERE product = ?)",
            *[product] * 5,
        )

    def identity_lists(self, rows: str, product: str) -> Sql:
        """Each person of ``rows`` (which has ``person`` and ``name``, as
        :meth:`person_name` gives it) with ``identities``, the list of its
        identities in order: :meth:`with_identities` (``named``) grouped by
        person, but reading ``identities`` for the aliased people alone (a
        union and a grouping fewer to plan: 0.16 ms of a people search)."""
        listed = self.ordered_list("identity", "identity")
        return sql(
            "SELECT r.person, coalesce(n.identities, CASE WHEN r.name IS NOT NULL "
            f"THEN [r.name] END) AS identities FROM {rows} r LEFT JOIN (SELECT ph, {listed} "
            "AS identities FROM identities WHERE product = ? "
            f"AND ph IN (SELECT person FROM {rows}) GROUP BY ph) n ON n.ph = r.person",
            product,
        )

    def person_name(self, rows: str, product: str) -> tuple[str, Sql]:
        """The name of each person of ``rows`` (its smallest identity, SPEC §5):
        the select expression, and the joins it needs."""
        known = known_identities_hashed(f"SELECT person FROM {rows}")
        return (
            "coalesce(pn.person, kn.identity)",
            sql(
                " LEFT JOIN (SELECT DISTINCT ph, person FROM identities WHERE product = ?) pn "
                f"ON pn.ph = {rows}.person LEFT JOIN ({known}) kn ON kn.ih = {rows}.person",
                *[product] * 4,
            ),
        )

    def person_name_narrowed(self, rows: str, product: str) -> tuple[str, Sql]:
        """:meth:`person_name`, with the aliased people's names read only for
        the people of ``rows`` (a semi-join on ``identities.ph``), not as the
        distinct persons of all of ``identities`` joined afterwards: that
        grouping of the whole table was a sixth of a people search's time on
        ten million events (docs/benchmarks.md, "Session 10: people12")."""
        known = known_identities_hashed(f"SELECT person FROM {rows}")
        return _names_joined(rows, known, product, 3)

    def recorded_person_name(self, rows: str, product: str) -> tuple[str, Sql]:
        """:meth:`person_name_narrowed` for people who each have an event or a
        property value of their own (a people search whose every match needs
        one): a person outside the alias graph is then the one identity with
        its hash that a record named, so ``known_identities`` alone names it,
        without the two reads of ``aliases`` (an identity known only from an
        alias has no record). The same names; a people search on ten million
        events 4-5% less CPU (docs/benchmarks.md, "Session 12: search15")."""
        known = (
            "SELECT ih, min(identity) AS identity FROM known_identities WHERE product = ? "
            f"AND ih IN (SELECT person FROM {rows}) GROUP BY ih"
        )
        return _names_joined(rows, known, product, 1)


def _names_joined(rows: str, known: str, product: str, known_products: int) -> tuple[str, Sql]:
    """The name of each person of ``rows``: the least identity of an aliased
    person's (``identities``), else the identity ``known`` gives for the hash
    (its columns ``ih`` and ``identity``; ``known_products`` placeholders, each
    the product)."""
    return (
        "coalesce(pn.person, kn.identity)",
        sql(
            " LEFT JOIN (SELECT ph, min(person) AS person FROM identities WHERE product = ? "
            f"AND ph IN (SELECT person FROM {rows}) GROUP BY ph) pn ON pn.ph = {rows}.person "
            f"LEFT JOIN ({known}) kn ON kn.ih = {rows}.person",
            *[product] * (1 + known_products),
        ),
    )


DIALECT = Dialect()


# -- filters --------------------------------------------------------------------------------


def passes(value: Sql, f: Filter, d: Dialect = DIALECT) -> Sql:
    """Whether ``value`` (NULL when the property is absent) passes the filter
    (docs/reports.md: ``not_equals`` and ``has_no_value`` match absence)."""
    op = f.op
    if op == "has_any_value":
        return value + " IS NOT NULL"
    if op == "has_no_value":
        return value + " IS NULL"
    if op == "not_equals":
        return value + sql(" IS DISTINCT FROM ?", f.value)
    if op in ("gt", "gte", "lt", "lte"):
        symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        return Sql("coalesce(") + d.numeric(value) + sql(f" {symbol} ?, false)", f.value)
    function = {"equals": None, "contains": "contains", "begins_with": "starts_with",
                "ends_with": "ends_with"}[op]  # fmt: skip
    if function is None:
        return Sql("coalesce(") + value + sql(" = ?, false)", f.value)
    return Sql(f"coalesce({function}(") + value + sql(", ?), false)", f.value)


def event_filters(alias: str, filters: Sequence[Filter], d: Dialect = DIALECT) -> Sql:
    return all_of([passes(d.prop(f"{alias}.properties", f.property), f, d) for f in filters])


def person_values(product: str, keys: Sequence[str], d: Dialect = DIALECT) -> Sql:
    """Per person, the current value (SPEC §6) of each of ``keys``, as ``p0, p1, …``."""
    columns = [
        sql(f", {d.last_by('v.value', d.order_key('v'))} FILTER (WHERE v.key = ?) AS p{i}", key)
        for i, key in enumerate(keys)
    ]
    return (
        Sql(f"SELECT {d.person('v')} AS person")
        + join(columns, "")
        + f" FROM property_values v{d.person_join('v')}"
        + sql(" WHERE v.product = ? AND v.key IN ", product)
        + values_list(list(keys))
        + " GROUP BY 1"
    )


def person_restriction(common: Common, person_expr: str, d: Dialect = DIALECT) -> Sql:
    """A condition on ``person_expr`` for ``common.person_where``: the person's
    current values (SPEC §6) pass every filter (``true`` without filters)."""
    filters = common.person_where
    if not filters:
        return Sql("true")
    keys = sorted({f.property for f in filters})
    matched = all_of([passes(Sql(f"p{keys.index(f.property)}"), f, d) for f in filters])
    values = Sql("(SELECT person FROM (") + person_values(common.product, keys, d) + ") WHERE "
    # A person with none of the properties passes only if absence does.
    if all(f.op in ("has_no_value", "not_equals") for f in filters):
        return Sql(f"{person_expr} NOT IN ") + values + "NOT (" + matched + "))"
    return Sql(f"{person_expr} IN ") + values + matched + ")"


def events_of(
    product: str,
    events: Sequence[str] | None,
    start: int | None,
    end: int | None,
    d: Dialect = DIALECT,
    *,
    extra: Sql | None = None,
    filters: Sequence[Filter] | None = None,
    people: bool = True,
    numbers: bool = False,
) -> Sql:
    """Occurrences (alias ``e``) of ``events`` (None: every event) with their
    person, in [start, end) when given, passing ``filters`` when given;
    ``extra`` is selected as ``n``. The text ends inside the WHERE clause, so
    callers can add ``AND …``.

    Without ``people`` the person is NULL and ``moved`` is not read: a
    question whose answer does not depend on who did what (a count of
    occurrences, a sum) skips resolving every event's person (SPEC §5), which
    was half of such a question's time on ten million events when it joined
    ``identities`` (issue 12). With ``numbers`` (and ``people``), each
    person's number (:meth:`Dialect.person_number`) is selected as ``number``."""
    where = sql("e.product = ?", product)
    if events is not None:
        where += Sql(" AND e.event IN ") + values_list(list(events))
    if start is not None:
        where += sql(" AND e.time >= ?", start)
    if end is not None:
        where += sql(" AND e.time < ?", end)
    person, resolve = (d.person("e"), d.person_join("e")) if people else ("NULL", "")
    number = f"{d.person_number('e')} AS number, " if numbers and people else ""
    return (
        Sql(
            f"SELECT {person} AS person, {number}e.event, e.time, e.recv_ns, e.stream, "
            "e.position, e.properties, "
        )
        + (extra if extra is not None else Sql("NULL"))
        + f" AS n FROM events e{resolve} WHERE "
        + where
        + (Sql(" AND ") + event_filters("e", filters, d) if filters is not None else Sql(""))
    )


def display_names(
    con: Any, product: str, keys: Iterable[str], kind: str = "event"
) -> dict[str, str]:
    """Name key -> the first spelling seen (SPEC §2), for the keys ever seen."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    query = sql("SELECT key, display FROM names WHERE product = ? AND kind = ? AND key IN ",
                product, kind) + values_list(wanted)  # fmt: skip
    return dict(execute(con, query).fetchall())
