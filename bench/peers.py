"""The reports benchmark's peers: the same questions asked of plain DuckDB and of chDB.

Tally's reports (``bench/reports.py``) read the store as the processor writes
it: events in arrival order, each person resolved through the identities
table at query time. A peer reads the data as a peer would lay it out for
these questions, made once per generated store and cached beside it:

- ``events``: one row per event, its person already resolved
  (``coalesce(identities.person, events.identity)`` as ``person``, its hash as
  ``ph``), the event key, its time, ``seq`` (its place in the total order of
  SPEC §11: time, receive time, stream, position) and the event properties
  the questions read as columns (``amount_n``: ``amount`` when numeric, SPEC
  §2), sorted by (event, time);
- ``props``: every person property value with its person resolved, ``seq``
  and ``amount`` (the value when numeric), sorted by (key, time);
- ``people``: every known identity with its person; ``names``: the display
  name of each event key.

**DuckDB** keeps them in a database file of its own (``…flat.duckdb``);
**chDB** (the ClickHouse engine in process) in MergeTree tables ``ORDER BY
(event, time)`` (props ``(key, time)``) of a session on a directory
(``….chdb``), loaded from a Parquet export of the DuckDB tables. The DuckDB
peer asks in plain SQL; the chDB peer in ClickHouse SQL with its own
functions (arrays and lambdas, ``uniqExact``, ``argMax``, ``sumKahan``,
``quantileExactInclusive``). Each answer is reduced to the same plain value
as Tally's (``digest_*``), so that the benchmark can tell whether they agree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tally.reports.sql import NUMERIC_PATTERN
from tally.store.schema import IDENTITY_HASH
from tally.views.common import iso

VERSION = 1  # of the peers' tables: a cache made by another version is made again
INSTALL_CHDB = ".venv/bin/pip install -e '.[bench]'  (or: .venv/bin/pip install 'chdb>=4.4,<5')"

try:  # an optional benchmark dependency (pyproject's ``bench`` extra)
    from chdb import session as chdb_session
except ImportError:  # pragma: no cover - depends on the machine
    chdb_session = None


def numeric(value: str) -> str:
    """``value`` as a double when it is numeric (SPEC §2, §11), else NULL."""
    return (
        f"CASE WHEN regexp_full_match({value}, '{NUMERIC_PATTERN}') "
        f"AND isfinite(try_cast({value} AS DOUBLE)) THEN try_cast({value} AS DOUBLE) END"
    )


# -- the peers' data ---------------------------------------------------------------------------

FLAT_SQL = """
CREATE TABLE events AS
SELECT e.event, e.time, row_number() OVER (ORDER BY e.time, e.recv_ns, e.stream, e.position)
       AS seq, coalesce(i.person, e.identity) AS person, coalesce(i.ph, e.ih) AS ph,
       e.properties['plan'] AS plan, e.properties['url'] AS url,
       e.properties['campaign'] AS campaign, e.properties['amount'] AS amount,
       {amount_n} AS amount_n
FROM s.events e LEFT JOIN s.identities i ON i.product = e.product AND i.ih = e.ih
WHERE e.product = $product ORDER BY e.event, e.time;
CREATE TABLE props AS
SELECT v.key, v.time, row_number() OVER (ORDER BY v.time, v.recv_ns, v.stream, v.position)
       AS seq, coalesce(i.person, v.identity) AS person, coalesce(i.ph, v.ih) AS ph, v.value,
       {amount} AS amount
FROM s.property_values v LEFT JOIN s.identities i ON i.product = v.product AND i.ih = v.ih
WHERE v.product = $product ORDER BY v.key, v.time;
CREATE TABLE people AS
SELECT coalesce(i.ph, k.ih) AS ph, coalesce(i.person, k.identity) AS person, k.identity
FROM (SELECT DISTINCT identity, {hash} AS ih FROM (
        SELECT identity FROM s.known_identities WHERE product = $product
        UNION ALL SELECT a FROM s.aliases WHERE product = $product AND status <> 'alias_cap'
        UNION ALL SELECT b FROM s.aliases WHERE product = $product AND status <> 'alias_cap')) k
LEFT JOIN s.identities i ON i.product = $product AND i.ih = k.ih ORDER BY 1, 3;
CREATE TABLE names AS SELECT key, display FROM s.names WHERE product = $product AND kind = 'event';
""".format(
    amount_n=numeric("e.properties['amount']"),
    amount=numeric("v.value"),
    hash=IDENTITY_HASH.format("identity"),
)

CH_TABLES = {
    "events": "event LowCardinality(String), time UInt32, seq UInt64, person String, ph UInt64, "
    "plan LowCardinality(Nullable(String)), url Nullable(String), "
    "campaign LowCardinality(Nullable(String)), amount Nullable(String), "
    "amount_n Nullable(Float64)",
    "props": "key LowCardinality(String), time UInt32, seq UInt64, person String, ph UInt64, "
    "value String, amount Nullable(Float64)",
    "people": "ph UInt64, person String, identity String",
    "names": "key String, display String",
}
CH_ORDER = {"events": "(event, time)", "props": "(key, time)", "people": "(ph, identity)",
            "names": "key"}  # fmt: skip


@dataclass
class Peers:
    """Open connections to both peers (``ch`` is None without chDB)."""

    duck: duckdb.DuckDBPyConnection
    ch: Any

    def close(self) -> None:
        self.duck.close()
        if self.ch is not None:
            self.ch.close()


def open_peers(store: Path, product: str, marker: str) -> Peers:
    """The peers' copies of ``store`` (made when missing or made from another
    store: ``marker`` names the store), with the same DuckDB settings as the
    reports' (2 threads, 1 GB)."""
    flat = store.with_name(store.stem + ".flat.duckdb")
    parquet = store.with_name(store.stem + ".flat")
    chdir = store.with_name(store.stem + ".chdb")
    # A digest: ClickHouse's parameters unescape backslashes (JSON has some).
    tag = hashlib.sha256(json.dumps({"store": marker, "version": VERSION}).encode()).hexdigest()
    if _duck_tag(flat) != tag:
        started = time.perf_counter()
        # A child process, so that this one's peak memory is the reports' alone.
        command = [sys.executable, __file__, str(store), str(flat), str(parquet), product, tag]
        if subprocess.run(command, check=False).returncode != 0:
            sys.exit(f"peers: could not make the flat tables from {store} (above)")
        print(f"peers: flat DuckDB tables and Parquet made in {time.perf_counter() - started:.1f} s"
              f" ({flat.stat().st_size / 2**20:,.0f} MiB)")  # fmt: skip
    duck = duckdb.connect(str(flat), read_only=True)
    duck.execute("SET threads = 2")
    duck.execute("SET memory_limit = '1GB'")
    if chdb_session is None:
        print(
            f"peers: chDB is not installed, its column is left out; install it with {INSTALL_CHDB}"
        )
        return Peers(duck, None)
    ch = chdb_session.Session(str(chdir))
    if _ch_tag(ch) != tag:
        started = time.perf_counter()
        _load_ch(ch, parquet, tag)
        print(f"peers: chDB MergeTree tables loaded in {time.perf_counter() - started:.1f} s")
    return Peers(duck, ch)


def _duck_tag(flat: Path) -> str | None:
    if not flat.exists():
        return None
    con = duckdb.connect(str(flat), read_only=True)
    try:
        row = con.execute("SELECT tag FROM meta").fetchone()
    except duckdb.Error:
        row = None
    finally:
        con.close()
    return None if row is None else str(row[0])


def _make_flat(store: Path, flat: Path, parquet: Path, product: str, tag: str) -> None:
    tmp = flat.with_name(flat.name + ".tmp")
    tmp.unlink(missing_ok=True)
    shutil.rmtree(parquet, ignore_errors=True)
    parquet.mkdir()
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET threads = 2")
        con.execute("SET memory_limit = '2GB'")
        con.execute(f"ATTACH '{store}' AS s (READ_ONLY)")
        for statement in FLAT_SQL.split(";"):
            if statement.strip():
                try:
                    con.execute(statement, {"product": product})
                except duckdb.Error as exc:
                    # The store's layout changed: FLAT_SQL is what to adapt.
                    sys.exit(f"peers: {' '.join(str(exc).split())[:300]} (bench/peers.py "
                             "FLAT_SQL reads the store's events, property_values, identities, "
                             "known_identities, aliases and names)")  # fmt: skip
        con.execute("CREATE TABLE meta AS SELECT ? AS tag", [tag])
        con.execute("DETACH s")
        for table in CH_TABLES:
            con.execute(f"COPY {table} TO '{parquet / table}.parquet' (FORMAT parquet)")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    tmp.replace(flat)


def _ch_tag(ch: Any) -> str | None:
    try:
        rows = ch.query("SELECT tag FROM meta", "JSONCompact")
    except Exception:  # no meta table: nothing loaded yet
        return None
    data = json.loads(str(rows)).get("data", [])
    return str(data[0][0]) if data else None


def _load_ch(ch: Any, parquet: Path, tag: str) -> None:
    for table, columns in CH_TABLES.items():
        ch.query(f"DROP TABLE IF EXISTS {table}")
        ch.query(f"CREATE TABLE {table} ({columns}) ENGINE = MergeTree ORDER BY {CH_ORDER[table]}")
        ch.query(f"INSERT INTO {table} SELECT * FROM file('{parquet / table}.parquet', Parquet)")
        ch.query(f"OPTIMIZE TABLE {table} FINAL")
    ch.query("DROP TABLE IF EXISTS meta")
    ch.query("CREATE TABLE meta (tag String) ENGINE = MergeTree ORDER BY tag")
    ch.query("INSERT INTO meta VALUES ({tag:String})", params={"tag": tag})


def ch_rows(ch: Any, text: str, **params: Any) -> list[list[Any]]:
    """The rows of a ClickHouse query with ``{name:Type}`` parameters."""
    table = ch.query(text + " SETTINGS max_threads = 2", "ArrowTable", params=params)
    columns = [c.to_pylist() for c in table.columns]
    return [list(r) for r in zip(*columns, strict=True)] if columns else []


def duck_rows(con: duckdb.DuckDBPyConnection, text: str, **params: Any) -> list[tuple[Any, ...]]:
    return con.execute(text, params).fetchall()


# -- the questions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """The reports' date range ``[start, end)`` in Unix seconds (UTC)."""

    start: int
    end: int

    def series(self, size: int, cells: dict[int, Any], default: Any = 0) -> list[Any]:
        """Buckets of ``size`` seconds from ``start`` (every interval of a UTC
        product whose range starts on a Monday), filled in from ``cells``."""
        count = -(-(self.end - self.start) // size)
        return [cells.get(b, default) for b in range(count)]


Ask = Callable[[Any], Any]


@dataclass(frozen=True)
class Question:
    """One question as each peer asks it, and Tally's answer to it as the same value."""

    duck: Ask
    ch: Ask
    digest: Callable[[Any], Any]


def metrics(r: Range, event: str, measure: str, size: int) -> Question:
    """People (distinct) or times per interval, and over the range."""
    counted = {"people": ("count(DISTINCT ph)", "uniqExact(ph)"), "times": ("count(*)", "count()")}
    duck_count, ch_count = counted[measure]

    def answer(rows: Any) -> dict[str, Any]:
        cells = {int(b): int(n) for b, n, g in rows if not g}
        total = next((int(n) for _, n, g in rows if g), 0)
        return {"series": r.series(size, cells), "total": total}

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        # Per interval, then over the range (a GROUPING SETS of distinct
        # counts measured 1.6 times slower).
        return answer(duck_rows(con, f"""
            SELECT (time - $start) // $size AS b, {duck_count}, 0 FROM events
            WHERE event = $event AND time >= $start AND time < $end GROUP BY b
            UNION ALL SELECT NULL, {duck_count}, 1 FROM events
            WHERE event = $event AND time >= $start AND time < $end""",
            start=r.start, end=r.end, size=size, event=event))  # fmt: skip

    def ch(s: Any) -> Any:
        return answer(ch_rows(s, f"""
            SELECT intDiv(time - {{start:Int64}}, {{size:Int64}}) AS b, {ch_count}, grouping(b)
            FROM events WHERE event = {{event:String}} AND time >= {{start:Int64}}
            AND time < {{end:Int64}} GROUP BY GROUPING SETS ((b), ())""",
            start=r.start, end=r.end, size=size, event=event))  # fmt: skip

    def digest(t: Any) -> Any:
        return {"series": [s["value"] for s in t["series"]], "total": t["total"]}

    return Question(duck, ch, digest)


def funnel(r: Range, steps: tuple[str, str, str], window: int | None) -> Question:
    """Strict three-step funnel (SPEC §9, §12): each person's first step 1 in
    range, then the earliest step 2 at or after it, then step 3 (within
    ``window`` of step 1 when given); people per step, median gaps. The steps
    are three different events (so no occurrence could fill two steps)."""
    assert len(set(steps)) == 3
    e1, e2, e3 = steps
    span = window if window is not None else r.end - r.start

    def answer(row: Any) -> dict[str, Any]:
        n1, n2, m2, n3, m3 = row
        return {"people": [int(n1), int(n2), int(n3)],
                "medians": [None, _number(m2, n2), _number(m3, n3)]}  # fmt: skip

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        (row,) = duck_rows(con, """
            WITH s1 AS (SELECT ph, min(time) AS t1 FROM events
                        WHERE event = $e1 AND time >= $start AND time < $end GROUP BY ph),
            s2 AS (SELECT s1.ph, s1.t1, min(e.time) AS t2 FROM s1 JOIN events e
                   ON e.ph = s1.ph AND e.event = $e2 AND e.time >= s1.t1 AND e.time < $end
                   AND e.time <= s1.t1 + $span GROUP BY s1.ph, s1.t1),
            s3 AS (SELECT s2.ph, s2.t2, min(e.time) AS t3 FROM s2 JOIN events e
                   ON e.ph = s2.ph AND e.event = $e3 AND e.time >= s2.t2 AND e.time < $end
                   AND e.time <= s2.t1 + $span GROUP BY s2.ph, s2.t2)
            SELECT (SELECT count(*) FROM s1), (SELECT count(*) FROM s2),
                   (SELECT quantile_cont(t2 - t1, 0.5) FROM s2), (SELECT count(*) FROM s3),
                   (SELECT quantile_cont(t3 - t2, 0.5) FROM s3)""",
            start=r.start, end=r.end, e1=e1, e2=e2, e3=e3, span=span)  # fmt: skip
        return answer(row)

    def ch(s: Any) -> Any:
        # Per person, step 1's first time and the times of steps 2 and 3 as
        # arrays; each next step is the least time at or after the cursor.
        (row,) = ch_rows(s, """
            SELECT count(), countIf(r2), quantileExactInclusiveIf(0.5)(t2 - t1, r2),
                   countIf(r3), quantileExactInclusiveIf(0.5)(t3 - t2, r3)
            FROM (
                SELECT t1, arrayFilter(x -> x >= t1 AND x <= t1 + {span:Int64}, a2) AS b2,
                       notEmpty(b2) AS r2, arrayMin(b2) AS t2,
                       arrayFilter(x -> r2 AND x >= t2 AND x <= t1 + {span:Int64}, a3) AS b3,
                       notEmpty(b3) AS r3, arrayMin(b3) AS t3
                FROM (
                    SELECT ph, minIf(time, event = {e1:String}) AS t1,
                           groupArrayIf(time, event = {e2:String}) AS a2,
                           groupArrayIf(time, event = {e3:String}) AS a3
                    FROM events WHERE event IN ({e1:String}, {e2:String}, {e3:String})
                    AND time >= {start:Int64} AND time < {end:Int64}
                    GROUP BY ph HAVING countIf(event = {e1:String}) > 0))""",
            start=r.start, end=r.end, e1=e1, e2=e2, e3=e3, span=span)  # fmt: skip
        return answer(row)

    def digest(t: Any) -> Any:
        return {"people": [s["people"] for s in t["steps"]],
                "medians": [s["median_seconds_from_previous"] for s in t["steps"]]}  # fmt: skip

    return Question(duck, ch, digest)


def _number(value: Any, n: Any) -> float | None:
    return float(value) if n else None


def cohort(r: Range, first: str, ret: str, size: int, buckets: int) -> Question:
    """People by the interval of their first ``first`` in range; per bucket
    after their own first time, the people with a ``ret`` in it (every time,
    people; the defining occurrence is not its own return, SPEC §12)."""
    defining = 1 if first == ret else 0

    def answer(rows: Any) -> dict[str, Any]:
        cells = {(int(c), int(k)): int(n) for c, k, n in rows}
        count = len(r.series(size, {}))
        return {
            "people": [cells.get((c, -1), 0) for c in range(count)],
            "values": [[cells.get((c, k), 0) for k in range(buckets)] for c in range(count)],
        }

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        return answer(duck_rows(con, """
            WITH a AS (SELECT ph, min(time) AS t0 FROM events
                       WHERE event = $first AND time >= $start AND time < $end GROUP BY ph),
            r AS (SELECT a.ph, a.t0, (e.time - a.t0) // $size AS k, count(*) AS n FROM a
                  JOIN events e ON e.ph = a.ph AND e.event = $ret AND e.time >= a.t0
                  AND e.time < a.t0 + $size * $buckets GROUP BY ALL)
            SELECT (t0 - $start) // $size AS c, -1, count(*) FROM a GROUP BY c
            UNION ALL
            SELECT (t0 - $start) // $size AS c, k, count(*) FROM r
            WHERE k > 0 OR n > $defining GROUP BY c, k""",
            start=r.start, end=r.end, first=first, ret=ret, size=size, buckets=buckets,
            defining=defining))  # fmt: skip

    def ch(s: Any) -> Any:
        # Per person: the first time and every return's bucket, as an array;
        # the buckets with a return (bucket 0: besides the defining one),
        # and -1 for the cohort's size, joined out of it.
        return answer(ch_rows(s, """
            SELECT intDiv(t0 - {start:Int64}, {size:Int64}) AS c, k, count() FROM (
                SELECT t0, arrayMap(t -> intDiv(t - t0, {size:Int64}),
                    arrayFilter(t -> t >= t0 AND t < t0 + {size:Int64} * {buckets:Int64}, rs))
                    AS ks
                FROM (
                    SELECT ph, minIf(time, event = {first:String} AND time < {end:Int64}) AS t0,
                           groupArrayIf(time, event = {ret:String}) AS rs
                    FROM events WHERE event IN ({first:String}, {ret:String})
                    AND time >= {start:Int64} GROUP BY ph
                    HAVING countIf(event = {first:String} AND time < {end:Int64}) > 0))
            ARRAY JOIN arrayPushFront(arrayFilter(
                k -> k > 0 OR countEqual(ks, 0) > {defining:UInt8}, arrayDistinct(ks)), -1) AS k
            GROUP BY c, k""",
            start=r.start, end=r.end, first=first, ret=ret, size=size, buckets=buckets,
            defining=defining))  # fmt: skip

    def digest(t: Any) -> Any:
        return {"people": [c["people"] for c in t["cohorts"]],
                "values": [c["values"] for c in t["cohorts"]]}  # fmt: skip

    return Question(duck, ch, digest)


REVENUE_KINDS = ("revenue", "paying", "new", "churned")


def revenue(r: Range, key: str, size: int, churn_days: int) -> Question:
    """Per interval and over the range (SPEC §9, §12): revenue (every numeric
    value), paying people, new customers (first positive payment ever),
    churned (a positive payment not followed by another within the churn
    period, counted when the period ends)."""
    churn = churn_days * 86_400

    def answer(rows: Any) -> dict[str, Any]:
        cells = {(kind, None if g else int(b)): (int(n), total) for kind, b, n, total, g in rows}
        out: dict[str, Any] = {}
        for kind in REVENUE_KINDS:
            found = {b: v for (k, b), v in cells.items() if k == kind and b is not None}
            if kind == "revenue":
                out[kind] = [round(t or 0, 2) for _, t in r.series(size, found, (0, 0))]
            else:
                out[kind] = [n for n, _ in r.series(size, found, (0, 0))]
        total = cells.get(("revenue", None), (0, 0))[1] or 0
        churned = cells.get(("churned", None), (0, 0))[0]
        out["total_revenue"] = round(total, 2)
        out["paying_total"] = cells.get(("paying", None), (0, 0))[0]
        out["lifetime_value"] = round(total / churned, 6) if churned else None
        return out

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        return answer(duck_rows(con, """
            WITH p AS (SELECT ph, time, seq, amount FROM props
                       WHERE key = $key AND amount IS NOT NULL),
            pos AS (SELECT ph, time, lead(time) OVER (PARTITION BY ph ORDER BY seq) AS next,
                           min(time) OVER (PARTITION BY ph) AS first FROM p WHERE amount > 0),
            x AS (SELECT 'revenue' AS kind, ph, time AS t, amount FROM p
                  UNION ALL SELECT 'paying', ph, time, NULL FROM pos
                  UNION ALL SELECT 'new', ph, time, NULL FROM pos WHERE time = first
                  UNION ALL SELECT 'churned', ph, time + $churn, NULL FROM pos
                            WHERE next IS NULL OR next - time > $churn)
            SELECT kind, (t - $start) // $size AS b, count(DISTINCT ph), fsum(amount),
                   grouping(b) FROM x WHERE t >= $start AND t < $end
            GROUP BY GROUPING SETS ((kind, b), (kind))""",
            start=r.start, end=r.end, key=key, size=size, churn=churn))  # fmt: skip

    def ch(s: Any) -> Any:
        # Each person's positive payments as a sorted array: the first is
        # "new"; each not followed by another within the period churns.
        return answer(ch_rows(s, """
            WITH p AS (SELECT ph, toInt64(time) AS time, amount FROM props
                       WHERE key = {key:String} AND amount IS NOT NULL)
            SELECT kind, intDiv(t - {start:Int64}, {size:Int64}) AS b, uniqExact(ph),
                   sumKahan(amount), grouping(b)
            FROM (
                SELECT 'revenue' AS kind, ph, time AS t, amount FROM p
                UNION ALL SELECT 'paying', ph, time, NULL FROM p WHERE amount > 0
                UNION ALL SELECT fact.1, ph, fact.2, NULL FROM (
                    SELECT ph, arraySort(groupArray(time)) AS ts FROM p WHERE amount > 0
                    GROUP BY ph)
                ARRAY JOIN arrayPushFront(
                    arrayMap(t -> ('churned', t + {churn:Int64}), arrayFilter((t, n) ->
                        n = 0 OR n - t > {churn:Int64}, ts, arrayPushBack(arrayPopFront(ts), 0))),
                    ('new', ts[1])) AS fact)
            WHERE t >= {start:Int64} AND t < {end:Int64}
            GROUP BY GROUPING SETS ((kind, b), (kind))""",
            start=r.start, end=r.end, key=key, size=size, churn=churn))  # fmt: skip

    def digest(t: Any) -> Any:
        out: dict[str, Any] = {}
        for kind in REVENUE_KINDS:
            values = [s[kind] for s in t["series"]]
            out[kind] = [round(v, 2) for v in values] if kind == "revenue" else values
        out["total_revenue"] = round(t["total_revenue"], 2)
        out["paying_total"] = t["paying"]
        ltv = t["lifetime_value"]
        out["lifetime_value"] = None if ltv is None else round(ltv, 6)
        return out

    return Question(duck, ch, digest)


def abtest(r: Range, experiment: str, conversion: str) -> Question:
    """Per variant (SPEC §12: a person's first value of the experiment in
    range, in the total order): participants, and those with a conversion in
    range at or after their exposure."""

    def answer(rows: Any) -> dict[str, Any]:
        return {str(v): [int(n), int(c)] for v, n, c in rows}

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        return answer(duck_rows(con, """
            WITH x AS (SELECT ph, arg_min(value, seq) AS variant, min(time) AS since
                       FROM props WHERE key = $key AND time >= $start AND time < $end
                       GROUP BY ph),
            c AS (SELECT ph, max(time) AS last FROM events
                  WHERE event = $event AND time >= $start AND time < $end GROUP BY ph)
            SELECT variant, count(*), count(*) FILTER (WHERE c.last >= x.since)
            FROM x LEFT JOIN c USING (ph) GROUP BY variant""",
            start=r.start, end=r.end, key=experiment, event=conversion))  # fmt: skip

    def ch(s: Any) -> Any:
        return answer(ch_rows(s, """
            SELECT variant, count(), countIf(last >= since) FROM (
                SELECT ph, argMin(value, seq) AS variant, min(time) AS since FROM props
                WHERE key = {key:String} AND time >= {start:Int64} AND time < {end:Int64}
                GROUP BY ph) x
            LEFT JOIN (
                SELECT ph, max(time) AS last FROM events WHERE event = {event:String}
                AND time >= {start:Int64} AND time < {end:Int64} GROUP BY ph) c USING (ph)
            GROUP BY variant""",
            start=r.start, end=r.end, key=experiment, event=conversion))  # fmt: skip

    def digest(t: Any) -> Any:
        return {v["name"]: [v["participants"], v["conversions"]] for v in t["variants"]}

    return Question(duck, ch, digest)


PATH_STEPS = 5


def path(r: Range, start_event: str, conversion: str, limit: int) -> Question:
    """Per converting person (SPEC §9): the first ``start_event`` in range,
    the earliest conversion at or after it (not the start itself), the
    events strictly between them in the total order, repeats collapsed as
    "Name NX"; the ``limit`` most common first five steps, with their people
    and median time to convert, and the people who converted."""

    def answer(rows: Any) -> dict[str, Any]:
        return {
            "converted": int(rows[0][3]) if rows else 0,
            "paths": [[list(steps), int(n), float(m)] for steps, n, m, _ in rows],
        }

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        return answer(duck_rows(con, """
            WITH s AS (SELECT ph, min(time) AS t0, min(seq) AS k0 FROM events
                       WHERE event = $start_event AND time >= $start AND time < $end
                       GROUP BY ph),
            c AS (SELECT s.ph, s.t0, s.k0, min(e.time) AS t1, min(e.seq) AS k1 FROM s
                  JOIN events e ON e.ph = s.ph AND e.event = $conversion AND e.time >= s.t0
                  AND e.time < $end AND e.seq <> s.k0 GROUP BY ALL),
            inside AS (SELECT c.ph, e.event, e.seq FROM c JOIN events e
                       ON e.ph = c.ph AND e.seq > c.k0 AND e.seq < c.k1
                       AND e.time >= c.t0 AND e.time <= c.t1),
            fresh AS (SELECT ph, event, seq, CASE WHEN event IS DISTINCT FROM
                          lag(event) OVER (PARTITION BY ph ORDER BY seq) THEN 1 ELSE 0 END AS f
                      FROM inside),
            runs AS (SELECT ph, run, any_value(event) AS event, count(*) AS n FROM (
                         SELECT ph, event, sum(f) OVER (PARTITION BY ph ORDER BY seq) AS run
                         FROM fresh) GROUP BY ph, run),
            paths AS (SELECT c.ph, c.t1 - c.t0 AS seconds,
                        coalesce(list(coalesce(nm.display, r.event)
                            || CASE WHEN r.n > 1 THEN ' ' || r.n || 'X' ELSE '' END ORDER BY r.run)
                            FILTER (WHERE r.run <= $steps), []) AS steps
                      FROM c LEFT JOIN runs r ON r.ph = c.ph
                      LEFT JOIN names nm ON nm.key = r.event GROUP BY c.ph, c.t1, c.t0)
            SELECT steps, count(*) AS people, quantile_cont(seconds, 0.5), sum(count(*)) OVER ()
            FROM paths GROUP BY steps ORDER BY people DESC, steps LIMIT $limit""",
            start=r.start, end=r.end, start_event=start_event, conversion=conversion,
            steps=PATH_STEPS, limit=limit))  # fmt: skip

    def ch(s: Any) -> Any:
        # Per person who converted, every event in range as one array in the
        # total order; the start, the end and the runs between them are found
        # in it with array functions.
        return answer(ch_rows(s, """
            SELECT steps, count() AS people, quantileExactInclusive(0.5)(t1 - t0),
                   sum(count()) OVER ()
            FROM (
                SELECT toInt64(evs[i0].2) AS t0, toInt64(evs[i1].2) AS t1,
                       arrayMap(i -> evs[i].3, range(i0 + 1, greatest(i1, i0 + 1))) AS inside,
                       arrayFilter(i -> i = 1 OR inside[i] != inside[i - 1],
                                   arrayEnumerate(inside)) AS heads,
                       arraySlice(arrayMap((h, n) -> concat(
                           transform(inside[h], {keys:Array(String)}, {displays:Array(String)},
                                     inside[h]),
                           if(n > 1, concat(' ', toString(n), 'X'), '')),
                           heads, arrayPopFront(arrayDifference(
                               arrayPushBack(heads, length(inside) + 1)))),
                           1, {steps:UInt8}) AS steps
                FROM (
                    SELECT evs, arrayFirstIndex(x -> x.3 = {start_event:String}, evs) AS i0,
                           arrayFirstIndex((x, i) -> x.3 = {conversion:String}
                               AND x.2 >= evs[i0].2 AND i != i0, evs, arrayEnumerate(evs)) AS i1
                    FROM (
                        SELECT ph, arraySort(x -> x.1, groupArray((seq, time, event))) AS evs
                        FROM events WHERE time >= {start:Int64} AND time < {end:Int64}
                        AND ph IN (SELECT ph FROM events WHERE event = {conversion:String}
                                   AND time >= {start:Int64} AND time < {end:Int64})
                        GROUP BY ph)
                    WHERE i0 > 0 AND i1 > 0))
            GROUP BY steps ORDER BY people DESC, steps LIMIT {limit:UInt32}""",
            start=r.start, end=r.end, start_event=start_event, conversion=conversion,
            steps=PATH_STEPS, limit=limit, **_display_params(s)))  # fmt: skip

    def digest(t: Any) -> Any:
        paths = [[p["steps"], p["people"], p["median_seconds"]] for p in t["paths"]]
        return {"converted": t["converted"], "paths": paths}

    return Question(duck, ch, digest)


def _display_params(s: Any) -> dict[str, str]:
    """The event names' keys and display names, as ``Array(String)`` parameters."""
    rows = ch_rows(s, "SELECT key, display FROM names ORDER BY key")
    return {"keys": _ch_array([k for k, _ in rows]), "displays": _ch_array([d for _, d in rows])}


def _ch_array(values: list[str]) -> str:
    """A ClickHouse literal of an array of strings (a query parameter's text)."""
    quoted = ("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
    return "[" + ",".join(quoted) + "]"


def people(r: Range, event: str, at_least: int, key: str, value: str, page: int) -> Question:
    """People with ``event`` at least ``at_least`` times in range whose
    current ``key`` (the last value in the total order, SPEC §6) is
    ``value``: how many, and the first ``page`` of them by name (their
    smallest identity, SPEC §5) with their identities."""

    def answer(rows: Any) -> dict[str, Any]:
        shown = [(p, sorted(ids)) for _, p, ids in rows if p is not None]
        return {
            "total": int(rows[0][0]) if rows else 0,
            "people": [p for p, _ in shown],
            "identities": [ids for _, ids in shown],
        }

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        return answer(duck_rows(con, """
            WITH ev AS (SELECT ph FROM events
                        WHERE event = $event AND time >= $start AND time < $end
                        GROUP BY ph HAVING count(*) >= $at_least),
            pv AS (SELECT ph, any_value(person) AS person, arg_max(value, seq) AS v
                   FROM props WHERE key = $key AND ph IN (SELECT ph FROM ev) GROUP BY ph),
            m AS (SELECT ph, person FROM pv WHERE v = $value),
            pg AS (SELECT * FROM m ORDER BY person LIMIT $page)
            SELECT t.total, pg.person, list(p.identity) FILTER (WHERE p.identity IS NOT NULL)
            FROM (SELECT count(*) AS total FROM m) t LEFT JOIN pg ON true
            LEFT JOIN people p ON p.ph = pg.ph GROUP BY t.total, pg.person
            ORDER BY pg.person""",
            start=r.start, end=r.end, event=event, at_least=at_least, key=key, value=value,
            page=page))  # fmt: skip

    def ch(s: Any) -> Any:
        return answer(ch_rows(s, """
            WITH m AS (
                SELECT ph, person FROM (
                    SELECT ph, any(person) AS person, argMax(value, seq) AS v FROM props
                    WHERE key = {key:String} AND ph IN (
                        SELECT ph FROM events WHERE event = {event:String}
                        AND time >= {start:Int64} AND time < {end:Int64}
                        GROUP BY ph HAVING count() >= {at_least:UInt32})
                    GROUP BY ph)
                WHERE v = {value:String})
            SELECT (SELECT count() FROM m), pg.person, groupArray(p.identity)
            FROM (SELECT * FROM m ORDER BY person LIMIT {page:UInt32}) pg
            JOIN people p ON p.ph = pg.ph GROUP BY pg.person ORDER BY pg.person""",
            start=r.start, end=r.end, event=event, at_least=at_least, key=key, value=value,
            page=page))  # fmt: skip

    def digest(t: Any) -> Any:
        return {"total": t["total"], "people": [p["person"] for p in t["people"]],
                "identities": [sorted(p["identities"]) for p in t["people"]]}  # fmt: skip

    return Question(duck, ch, digest)


HISTORY = 100  # values of a property's history on a person page (views.person)


def person(identity: str, page: int = 50) -> Question:
    """One person's page (SPEC §9): identities, each property's current and
    first value, its number of values and its latest 100, the number of
    events and the latest ``page`` of them."""

    def answer(ids: Any, props: Any, total: Any, latest: Any) -> dict[str, Any]:
        return {
            "identities": sorted(i for (i,) in ids),
            "properties": {k: [last, first, int(n), list(h)] for k, last, first, n, h in props},
            "events": int(total[0][0]),
            "latest": [[e, iso(t)] for e, t in latest],
        }

    def duck(con: duckdb.DuckDBPyConnection) -> Any:
        found = duck_rows(con, "SELECT ph FROM people WHERE identity = $i", i=identity)
        ph = found[0][0] if found else None
        return answer(
            duck_rows(con, "SELECT identity FROM people WHERE ph = $ph", ph=ph),
            duck_rows(
                con,
                "SELECT key, arg_max(value, seq), arg_min(value, seq),"
                " count(*), list(value ORDER BY time DESC, seq DESC)[:$history] FROM props "
                "WHERE ph = $ph GROUP BY key",
                ph=ph,
                history=HISTORY,
            ),
            duck_rows(con, "SELECT count(*) FROM events WHERE ph = $ph", ph=ph),
            duck_rows(
                con,
                "SELECT event, time FROM events WHERE ph = $ph ORDER BY seq DESC LIMIT $n",
                ph=ph,
                n=page,
            ),
        )

    def ch(s: Any) -> Any:
        found = ch_rows(s, "SELECT ph FROM people WHERE identity = {i:String}", i=identity)
        ph = found[0][0] if found else 0
        return answer(
            ch_rows(s, "SELECT identity FROM people WHERE ph = {ph:UInt64}", ph=ph),
            ch_rows(
                s,
                "SELECT key, argMax(value, seq), argMin(value, seq), "
                "count(), arraySlice(arrayMap(x -> x.2, arrayReverseSort(x -> x.1, "
                "groupArray((seq, value)))), 1, {history:UInt32}) FROM props "
                "WHERE ph = {ph:UInt64} GROUP BY key",
                ph=ph,
                history=HISTORY,
            ),
            ch_rows(s, "SELECT count() FROM events WHERE ph = {ph:UInt64}", ph=ph),
            ch_rows(
                s,
                "SELECT event, time FROM events WHERE ph = {ph:UInt64} "
                "ORDER BY seq DESC LIMIT {n:UInt32}",
                ph=ph,
                n=page,
            ),
        )

    def digest(t: Any) -> Any:
        return {
            "identities": sorted(t["identities"]),
            "properties": {p["key"]: [p["value"], p["first_value"], p["values"],
                                      [h["value"] for h in p["history"]]]
                           for p in t["properties"]},
            "events": t["events"]["total"],
            "latest": [[e["event"].casefold(), e["time"]] for e in t["events"]["items"]],
        }  # fmt: skip

    return Question(duck, ch, digest)


if __name__ == "__main__":  # the child process of open_peers that makes the flat tables
    _make_flat(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5])
