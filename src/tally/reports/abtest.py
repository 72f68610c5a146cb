"""A/B test (SPEC §9, §12): participants, conversions and the certainty of each variant.

SQL counts the participants and converted people of each variant; the rates,
improvements and certainties (a normal approximation of the difference of two
proportions) are arithmetic on those few numbers, done here.
"""

from __future__ import annotations

import math
from typing import Any

from tally.reports.query import ABTest
from tally.reports.sql import (
    DIALECT,
    Dialect,
    Sql,
    events_of,
    person_restriction,
    sql,
)
from tally.reports.statements import execute
from tally.store.contract import Cursor

#: A variant wins when its certainty of beating the baseline is above this.
WINNING_CERTAINTY = 0.95


def run(con: Cursor, q: ABTest, d: Dialect = DIALECT) -> dict[str, Any]:
    counts = sorted(_counts(con, q, d))
    rates = {name: converted / people for name, people, converted in counts}
    sizes = {name: people for name, people, _ in counts}
    baseline = q.baseline if q.baseline is not None else (counts[0][0] if counts else None)
    base_rate = rates.get(baseline) if baseline is not None else None
    variants = []
    certainties: list[tuple[float, str]] = []
    for name, people, converted in counts:
        rate = rates[name]
        certainty = None
        if name != baseline and base_rate is not None:
            assert baseline is not None
            certainty = _certainty(base_rate, sizes[baseline], rate, people)
        if certainty is not None:
            certainties.append((certainty, name))
        variants.append(
            {
                "name": name,
                "participants": people,
                "conversions": converted,
                "rate": rate,
                "improvement": (rate - base_rate) / base_rate if base_rate else None,
                "certainty": certainty,
            }
        )
    # The highest certainty, the first in alphabetical order of a tie.
    best = max(certainties, key=lambda c: c[0], default=None)
    winner = best[1] if best is not None and best[0] > WINNING_CERTAINTY else None
    return {"variants": variants, "baseline": baseline, "winner": winner}


def _certainty(p_b: float, n_b: int, p_v: float, n_v: int) -> float | None:
    """Φ((p_v - p_b) / √(p_b(1-p_b)/n_b + p_v(1-p_v)/n_v)); None when the
    denominator is 0 (SPEC §9)."""
    spread = math.sqrt(p_b * (1 - p_b) / n_b + p_v * (1 - p_v) / n_v)
    if spread == 0:
        return None
    z = (p_v - p_b) / spread
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _counts(con: Cursor, q: ABTest, d: Dialect) -> list[tuple[str, int, int]]:
    """(variant, participants, converted people) for every variant seen in range."""
    c = q.common
    values = Sql(f" FROM property_values v{d.person_join('v')}") + sql(
        " WHERE v.product = ? AND v.key = ? AND v.time >= ? AND v.time < ?",
        c.product,
        q.experiment,
        c.start,
        c.end,
    )
    # SPEC §12: a person's variant and exposure are the first value of the
    # experiment property set in range, in the total order (SPEC §11), whose
    # time is the earliest: `since` is a plain min. Most people have the
    # property set once, or twice at different times; for them the first is
    # the value at the earliest time, taken by the time alone (`g`). Only
    # people with more values, or two at one second, are read again and
    # ordered by the four-column order key: taken for everyone, it was a third
    # of this report's time on ten million events (docs/benchmarks.md,
    # "Session 12: margins15").
    query = (
        Sql("WITH g AS (SELECT ")
        + f"{d.person('v')} AS person, {d.first_by('v.value', 'v.time')} AS variant, "
        + "min(v.time) AS since, max(v.time) AS latest, count(*) AS n"
        + values
        + " GROUP BY 1), exposed AS (SELECT * FROM (SELECT person, variant, since FROM g "
        + "WHERE n = 1 OR (n = 2 AND since < latest) UNION ALL SELECT "
        + f"{d.person('v')}, {d.first_by('v.value', d.order_key('v'))}, min(v.time)"
        + values
        + f" AND {d.person('v')} IN (SELECT person FROM g "
        + "WHERE n > 2 OR (n = 2 AND since = latest)) GROUP BY 1) WHERE "
        + person_restriction(c, "person", d)
        # Converted: a conversion at or after exposure (the same second
        # counts), before `to`; the latest one is, if any is.
        + "), converted AS (SELECT person, max(time) AS latest FROM ("
        + events_of(c.product, [q.conversion], c.start, c.end, d, filters=c.where)
        + ") e GROUP BY person) SELECT x.variant, count(*), count(*) FILTER (WHERE y.latest >= "
        + "x.since) FROM exposed x LEFT JOIN converted y ON y.person = x.person GROUP BY 1"
    )
    rows = execute(con, query).fetchall()
    return [(str(name), int(people), int(converted)) for name, people, converted in rows]
