"""People search (SPEC §9): who matches conditions on events, properties and identities.

One query answers a search, set-based, in two phases. Matching: a scan of the
events the conditions name counts each condition's occurrences per person
(``ev``), a scan of the property history they name gives each person's
current values (``pv``), and the people the product knows carry the identity
tests (``p``); each condition is then a plain test on one row per person, and
``in_order`` adds the funnel's strict chain over the occurrences. Showing: the
columns and identities of the people shown (a page, or everyone for CSV) are
read through those people's own identities, so a page costs little whatever
the columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tally.display import display_name
from tally.reports.query import EventCondition, Filter, IdentityCondition, People, PropertyCondition
from tally.reports.sql import (
    DIALECT,
    Dialect,
    Sql,
    all_of,
    event_filters,
    events_of,
    iso_local,
    join,
    passes,
    sql,
    values_list,
)
from tally.reports.statements import execute
from tally.store.contract import Cursor
from tally.views.common import KNOWN_IDENTITIES

#: Rows fetched at a time when the whole result is streamed as CSV.
CSV_CHUNK = 10_000

_COUNT_OPS = {"at_least": ">=", "at_most": "<=", "exactly": "="}
#: Filters that a person without the property passes (docs/reports.md).
_ABSENCE_PASSES = ("has_no_value", "not_equals")


def run(con: Cursor, q: People, d: Dialect = DIALECT) -> dict[str, Any]:
    search = _Search(q, d)
    shown, select, joins = search.shown("pg")
    page = sql("ORDER BY name LIMIT ? OFFSET ?", q.page_size, (q.page - 1) * q.page_size)
    query = (
        search.named("pg", page)
        + shown
        + " SELECT t.total, "
        + select
        # One row even when the page is empty, for the total.
        + " FROM (SELECT count(*) AS total FROM m) t LEFT JOIN pg ON true"
        + joins
        + " ORDER BY pg.name"
    )
    rows = execute(con, query).fetchall()
    return {
        "people": [
            {
                "person": person,
                "display": display_name(person, identities),
                "identities": list(identities),
                "columns": search.values(values),
            }
            for _, person, *values, identities in rows
            if person is not None
        ],
        "total": int(rows[0][0]),
        "page": q.page,
        "page_size": q.page_size,
        "columns": [c.label for c in q.columns],
    }


def csv_rows(
    con: Cursor, q: People, d: Dialect = DIALECT, *, chunk: int = CSV_CHUNK
) -> Iterator[list[str]]:
    """The whole result (every page) for ``Accept: text/csv``: the header
    ``person, identities, <column labels>``, then one row per person, fetched
    ``chunk`` rows at a time (the result streams; only a chunk is in Python's
    memory at once). It runs on ``con`` itself, so that interrupting ``con``
    stops it (the API's query pool): give it a cursor that nothing else uses
    meanwhile."""
    yield ["person", "identities", *(c.label for c in q.columns)]
    search = _Search(q, d)
    shown, select, joins = search.shown("mn")
    query = (
        search.named("mn") + shown + " SELECT " + select + " FROM mn" + joins + " ORDER BY mn.name"
    )
    result = execute(con, query)
    while rows := result.fetchmany(chunk):
        for person, *values, identities in rows:
            cells = ("" if v is None else str(v) for v in search.values(values))
            yield [person, " ".join(identities), *cells]


class _Search:
    """The SQL of one search: :meth:`matches` ends with the CTE ``m`` of the
    matching people; :meth:`shown` gives the columns of some of them."""

    def named(self, cte: str, tail: Sql | None = None) -> Sql:
        """:meth:`matches`, then the CTE ``cte`` of the matching people with
        their names (``person``, ``name``), ``tail`` (ORDER BY, LIMIT) inside."""
        # Every match of an ev or pv base is the person of an event or a value.
        naming = self.d.recorded_person_name if self.base != "p" else self.d.person_name_narrowed
        name, joins = naming("m", self.q.common.product)
        return (
            self.matches()
            + f", {cte} AS (SELECT m.person, {name} AS name FROM m"
            + joins
            + " "
            + (tail or Sql(""))
            + ")"
        )

    def __init__(self, q: People, d: Dialect) -> None:
        self.q, self.d = q, d
        self.events = [c for c in q.conditions if isinstance(c, EventCondition)]
        # The person properties whose current value a test reads, as pv.k0, ….
        keys = [c.filter.property for c in q.conditions if isinstance(c, PropertyCondition)]
        self.keys = sorted({*keys, *(f.property for f in q.common.person_where)})
        # The event conditions that must happen in the order given.
        ordered = [n for n, c in enumerate(self.events) if c.needs_occurrence]
        self.ordered = ordered if q.logic == "in_order" and len(ordered) > 1 else []
        # Whether a match passes every condition (``any`` of one is that one).
        self.every = q.logic != "any" or len(q.conditions) <= 1
        self.base = self._base()

    # -- matching -------------------------------------------------------------------------------

    def matches(self) -> Sql:
        """``WITH …, m AS (…)``: the person of every match."""
        base = self.base
        tests = self._tests()
        # Only the base's people can match, and of those only the ones who
        # pass the base's own tests that every match passes: the other
        # aggregate is computed for them alone (a semi-join before its GROUP
        # BY, the costly part).
        own = [
            test
            for source, test in tests
            if (source == base and self.every) or (source == "where" and base == "pv")
        ]
        within = "cand" if base != "p" else None
        events, values = [], []
        if self.events:
            events = [
                Sql("x AS (") + self._occurrences(within if base == "pv" else None) + ")",
                Sql("ev AS (") + self._counts() + ")",
            ]
        if self.keys:
            values = [Sql("pv AS (") + self._values(within if base == "ev" else None) + ")"]
        cand = [Sql(f"cand AS (SELECT person FROM {base} WHERE ") + all_of(own) + ")"]
        if base == "p":
            ctes = [Sql("u AS (") + self._universe() + ")", Sql("p AS (") + self._people() + ")"]
            ctes += events + values
        elif base == "ev":
            ctes = events + cand + values
        else:
            ctes = values + cand + events
        ctes += self._chain(within)

        conditions = [test for source, test in tests if source != "where"]
        if self.every:
            holds = all_of(conditions)
        else:
            holds = Sql("(") + join((Sql("(") + t + ")" for t in conditions), " OR ") + ")"
        if self.ordered:
            holds += f" AND {base}.person IN (SELECT person FROM s{len(self.ordered) - 1})"
        holds += " AND " + all_of([test for source, test in tests if source == "where"])
        joins = [
            f" LEFT JOIN {source} ON {source}.person = {base}.person"
            for source, present in (("ev", self.events), ("pv", self.keys))
            if source != base and present
        ]
        return (
            Sql("WITH ")
            + join(ctes, ", ")
            + f", m AS (SELECT {base}.person FROM {base}"
            + "".join(joins)
            + " WHERE "
            + holds
            + ")"
        )

    def _base(self) -> str:
        """The rows that every match is among: ``p``, every person the
        product knows, or, when a test that every match passes needs an
        occurrence (``ev``) or a property value (``pv``), the people who have
        one, who are all known (their records name them)."""
        q = self.q
        if any(isinstance(c, IdentityCondition) for c in q.conditions):
            return "p"
        needed = list(q.common.person_where)
        if self.every:
            if any(c.needs_occurrence for c in self.events):
                return "ev"
            needed += [c.filter for c in q.conditions if isinstance(c, PropertyCondition)]
        if any(f.op not in _ABSENCE_PASSES for f in needed):
            return "pv"
        return "p"

    def _universe(self) -> Sql:
        """Every identity the product knows, with its person (SPEC §5)."""
        return (
            Sql(f"SELECT {self.d.graph_person('k')} AS person, k.identity FROM (SELECT *, ")
            + f"{self.d.identity_hash('identity')} AS ih FROM ({KNOWN_IDENTITIES})) k"
            + self.d.graph_join("k")
            + sql(" WHERE k.product = ?", self.q.common.product)
        )

    def _people(self) -> Sql:
        """One row per person, with ``i<n>``: whether one of its identities
        passes the identity condition ``n``."""
        tests = [
            Sql(", count(*) FILTER (WHERE ")
            + passes(Sql("identity"), Filter("", "contains", c.value), self.d)
            + f") > 0 AS i{n}"
            for n, c in enumerate(self.q.conditions)
            if isinstance(c, IdentityCondition)
        ]
        return Sql("SELECT person") + join(tests, "") + " FROM u GROUP BY person"

    def _occurrences(self, within: str | None) -> Sql:
        """The occurrences that an event condition counts, with ``f<n>``:
        whether condition ``n`` counts it (its event, range and filters)."""
        c = self.q.common
        flags = [
            sql(", (x.event = ? AND x.time >= ? AND x.time < ? AND ", e.event, e.start, e.end)
            + event_filters("x", e.where, self.d)
            + f") AS f{n}"
            for n, e in enumerate(self.events)
        ]
        return (
            Sql("SELECT x.person, x.time, x.recv_ns, x.stream, x.position")
            + join(flags, "")
            + " FROM ("
            + events_of(
                c.product,
                sorted({e.event for e in self.events}),
                min(e.start for e in self.events),
                max(e.end for e in self.events),
                self.d,
            )
            + (f" AND {self.d.person('e')} IN (SELECT person FROM {within})" if within else "")
            + ") x"
        )

    def _counts(self) -> Sql:
        """Per person, ``e<n>``: the occurrences of event condition ``n``. One
        condition without filters of its own counts every occurrence ``x``
        holds (its event in its range): no flag to test (a filtered count cost
        a sixth of this grouping's time)."""
        if len(self.events) == 1 and not self.events[0].where:
            return Sql("SELECT person, count(*) AS e0 FROM x GROUP BY person")
        counts = "".join(f", count(*) FILTER (WHERE f{n}) AS e{n}" for n in range(len(self.events)))
        return Sql(f"SELECT person{counts} FROM x GROUP BY person")

    def _values(self, within: str | None) -> Sql:
        """Per person, the current value (SPEC §6: the latest in the total
        order, over all its identities) of each of ``self.keys`` as ``k<n>``."""
        d = self.d
        last = d.last_by("v.value", d.order_key("v"))
        # One key: the scan reads its values alone, no filter to test.
        picks = [
            sql(f", {last} FILTER (WHERE v.key = ?) AS k{n}", key)
            if len(self.keys) > 1
            else Sql(f", {last} AS k{n}")
            for n, key in enumerate(self.keys)
        ]
        return (
            Sql(f"SELECT {d.person('v')} AS person")
            + join(picks, "")
            + f" FROM property_values v{d.person_join('v')}"
            + sql(" WHERE v.product = ? AND v.key IN ", self.q.common.product)
            + values_list(self.keys)
            + (f" AND {d.person('v')} IN (SELECT person FROM {within})" if within else "")
            + " GROUP BY 1"
        )

    def _chain(self, within: str | None) -> list[Sql]:
        """``in_order`` as funnel steps in strict mode (docs/reports.md): ``s0``
        holds each person's first occurrence of the first ordered condition;
        ``s<j>`` the earliest occurrence of the next one at or after the
        previous step's time (the same second counts) that no earlier step
        took (``k<i>``: the order keys taken). A person is in the last ``s``
        when the whole chain happened."""
        if not self.ordered:
            return []
        key = self.d.order_key("x")
        flags = [f"f{n}" for n in self.ordered]
        steps = [
            Sql(f"s0 AS (SELECT person, min(time) AS time, min({key}) AS k0 FROM x")
            + f" WHERE {flags[0]}"
            + (f" AND person IN (SELECT person FROM {within})" if within else "")
            + " GROUP BY person)"
        ]
        for j in range(1, len(flags)):
            taken = ", ".join(f"s.k{i}" for i in range(j))
            steps.append(
                Sql(
                    f"s{j} AS (SELECT x.person, min(x.time) AS time, min({key}) AS k{j}, {taken}"
                    f" FROM x JOIN s{j - 1} s ON s.person = x.person WHERE x.{flags[j]}"
                    f" AND x.time >= s.time AND {key} NOT IN ({taken})"
                    f" GROUP BY x.person, {taken})"
                )
            )
        return steps

    def _tests(self) -> list[tuple[str, Sql]]:
        """Each condition as a test on the row of ``p``, ``ev`` or ``pv`` (the
        source it reads), then ``person_where``'s tests, as ``where``, which
        read ``pv`` and hold whatever the logic."""
        tests: list[tuple[str, Sql]] = []
        events = iter(range(len(self.events)))  # ev.e<n> counts the n-th event condition
        for n, c in enumerate(self.q.conditions):
            if isinstance(c, EventCondition):
                # No row in ev: no occurrence ("at most N" includes them).
                e = next(events)
                tests.append(("ev", sql(f"coalesce(ev.e{e}, 0) {_COUNT_OPS[c.op]} ?", c.count)))
            elif isinstance(c, PropertyCondition):
                tests.append(("pv", self._passes(c.filter)))
            else:
                tests.append(("p", Sql(f"p.i{n}")))
        tests += [("where", self._passes(f)) for f in self.q.common.person_where]
        return tests

    def _passes(self, f: Filter) -> Sql:
        return passes(Sql(f"pv.k{self.keys.index(f.property)}"), f, self.d)

    # -- showing --------------------------------------------------------------------------------

    def shown(self, rows: str) -> tuple[Sql, Sql, Sql]:
        """For the people of the CTE ``rows`` (which has ``person`` and
        ``name``, as :meth:`named` makes it): more CTEs (each after ``, ``),
        the select list ``<rows>.name, <each column>, identities``, and the
        joins that give them."""
        d, c = self.d, self.q.common
        ctes = [Sql("lists AS (") + d.identity_lists(rows, c.product) + ")"]
        joins = [f" LEFT JOIN lists ON lists.person = {rows}.person"]
        events = [(n, k) for n, k in enumerate(self.q.columns) if k.kind == "event"]
        props = [(n, k) for n, k in enumerate(self.q.columns) if k.kind == "property"]
        if events or props:  # the columns read the events and values of every identity
            ctes.append(Sql("ids AS (") + d.with_identities(rows, c.product, named=True) + ")")
        if events:
            # Events in the search's range, with its where (every event it names).
            pick = {"first_time": "min(e.time)", "last_time": "max(e.time)", "count": "count(*)"}
            aggregates = [
                sql(f", {pick[k.which]} FILTER (WHERE e.event = ? AND ", k.name)
                + event_filters("e", c.where, d)
                + f") AS c{n}"
                for n, k in events
            ]
            ctes.append(
                Sql("ce AS (SELECT ids.person")
                + join(aggregates, "")
                + " FROM events e JOIN ids ON ids.ih = e.ih"
                + sql(" WHERE e.product = ? AND e.event IN ", c.product)
                + values_list(sorted({k.name for _, k in events}))
                + sql(" AND e.time >= ? AND e.time < ? GROUP BY ids.person)", c.start, c.end)
            )
            joins.append(f" LEFT JOIN ce ON ce.person = {rows}.person")
        if props:
            # Values over all time: the first or the last (= current) one.
            key = d.order_key("v")
            aggregates = [
                sql(f", {(d.first_by if k.which == 'first' else d.last_by)('v.value', key)}"
                    f" FILTER (WHERE v.key = ?) AS c{n}", k.name)
                for n, k in props
            ]  # fmt: skip
            ctes.append(
                Sql("cp AS (SELECT ids.person")
                + join(aggregates, "")
                + " FROM property_values v JOIN ids ON ids.ih = v.ih"
                + sql(" WHERE v.product = ? AND v.key IN ", c.product)
                + values_list(sorted({k.name for _, k in props}))
                + " GROUP BY ids.person)"
            )
            joins.append(f" LEFT JOIN cp ON cp.person = {rows}.person")
        columns = [
            f"{'ce' if k.kind == 'event' else 'cp'}.c{n}" for n, k in enumerate(self.q.columns)
        ]
        select = ", ".join([f"{rows}.name", *columns, "lists.identities"])
        return Sql(", ") + join(ctes, ", "), Sql(select), Sql("".join(joins))

    def values(self, raw: Sequence[Any]) -> list[Any]:
        """The columns of one person as the answer shows them: times as ISO
        timestamps in the product's time zone, counts as 0 for none."""
        out: list[Any] = []
        for column, value in zip(self.q.columns, raw, strict=True):
            if column.which == "count":
                out.append(int(value or 0))
            elif column.kind == "event" and value is not None:
                out.append(iso_local(int(value), self.q.common.tz))
            else:
                out.append(value)
        return out
