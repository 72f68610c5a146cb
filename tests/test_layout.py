"""Events in sorted blocks (store/schema.py), and stores of schema 2 converted.

The layout is how rows lie, never what they are: a store whose events were
rewritten into blocks as batches arrived holds the same rows and answers every
report as a store that made no block, and a store of schema 2 (events in
arrival order) answers the same after its conversion. A conversion that cannot
finish leaves the store of schema 2 as it was.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import duckdb
import pytest

from journeys import T0, Row, alias, build, event, keys, sets, snapshot
from mounts import Mounts
from tally.errors import Unavailable
from tally.reports import Product, run_report
from tally.store.schema import INDEXED, SCHEMA_VERSION
from tally.store.store import Store

EVENTS = ["Visited Site", "Signed Up", "Added To Cart", "Purchased", "Viewed Page", "Left"]
RANGE = {"from": "2023-11-14", "to": "2023-11-19"}
#: One question of each report, over the generated product.
QUESTIONS: list[tuple[str, dict[str, Any]]] = [
    ("metrics", {**RANGE, "event": "Viewed Page", "interval": "day", "measure": "times"}),
    ("metrics", {**RANGE, "event": "Purchased", "interval": "day", "measure": "sum",
                 "property": "Amount"}),
    ("metrics", {**RANGE, "event": "Visited Site", "interval": "day",
                 "segment": {"property": "Plan"}}),
    ("funnel", {**RANGE, "steps": ["Visited Site", "Added To Cart", "Purchased"]}),
    ("funnel", {**RANGE, "steps": ["Visited Site", "Viewed Page", "Purchased"], "mode": "skip"}),
    ("cohort", {**RANGE, "first_event": "Visited Site", "return_event": "Viewed Page",
                "interval": "day", "buckets": 4}),
    ("revenue", {**RANGE, "interval": "day"}),
    ("abtest", {**RANGE, "experiment": "Experiment", "conversion": "Purchased"}),
    ("path", {**RANGE, "start": "Visited Site", "conversion": "Purchased"}),
    ("people", {**RANGE, "conditions": [
        {"type": "event", "event": "Viewed Page", "count": {"op": "at_least", "value": 2}}],
        "columns": [{"type": "event", "event": "Purchased"}]}),
]  # fmt: skip


def product(seed: int = 7, records: int = 1500) -> list[Row]:
    """A generated product: 40 people over four days, a third of them with an
    anonymous id aliased later, person properties, payments, an experiment,
    and copies of some records sent again on another stream, some received
    before the original (an earlier duplicate read after the later one)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for n in range(records):
        who = f"user{rng.randrange(40)}"
        if rng.random() < 0.3:
            who = "anon-" + who
        at = T0 + rng.randrange(4 * 86_400)
        kind = rng.random()
        if kind < 0.8:
            name = rng.choice(EVENTS)
            props = {"Amount": str(rng.randrange(1, 50))} if name == "Purchased" else {}
            rows.append(event(who, name, at, props, ns=n))
        elif kind < 0.95:
            props = rng.choice([{"Plan": rng.choice(["free", "pro"])},
                                {"Billing Amount": str(rng.randrange(-5, 30))},
                                {"Experiment": rng.choice(["a", "b"])}])  # fmt: skip
            rows.append(sets(who, at, props, ns=n))
        else:
            person = who.removeprefix("anon-")
            rows.append(alias("anon-" + person, person, at, ns=n))
    # Copies on stream c1, a few seconds either side of the original.
    copies = []
    for row in rng.sample(rows, len(rows) // 10):
        _, path, params, at, ns = row
        copies.append(("c1", path, params, at + rng.choice([-3, 3]), ns))
    return rows + copies


def answers(store: Store) -> list[Any]:
    return [run_report(store.con, Product("acme"), kind, body) for kind, body in QUESTIONS]


def sort_keys(store: Store) -> list[tuple[Any, ...]]:
    """The events' (product, event, time), in the order the rows lie."""
    return store.con.execute("SELECT product, event, time FROM events ORDER BY rowid").fetchall()


def descents(rows: list[tuple[Any, ...]]) -> int:
    """How many rows sort before the row before them: 0 for a sorted run."""
    return sum(1 for a, b in itertools.pairwise(rows) if b < a)


def test_blocks_sorted_as_batches_arrive_change_no_row_and_no_answer(tmp_path: Path) -> None:
    records = product()
    whole = Store(tmp_path / "whole.duckdb")  # one batch, no block (1M rows make one)
    whole.apply(build(records), keys)
    blocks = Store(tmp_path / "blocks.duckdb")
    blocks.compact_rows = 200
    # Stream c0 first, then c1, whose copies received earlier replace rows
    # that are in sorted blocks by then (Store._remove).
    entries = build(records)
    ordered = [e for e in entries if e.stream == "c0"] + [e for e in entries if e.stream == "c1"]
    for i in range(0, len(ordered), 97):
        blocks.apply(ordered[i : i + 97], keys)

    assert snapshot(blocks) == snapshot(whole)
    assert answers(blocks) == answers(whole)
    stored = sort_keys(blocks)
    ((comment,),) = blocks.con.execute(
        "SELECT comment FROM duckdb_tables() WHERE table_name = 'events'"
    ).fetchall()
    sorted_rows = json.loads(comment)["sorted_rows"]
    unsorted = len(stored) - sorted_rows
    assert 0 <= unsorted < 200 + 97
    # Every block sorted: a descent only where a block begins.
    assert descents(stored[: len(stored) - unsorted]) <= len(stored) // 200
    assert descents(sort_keys(whole)) > len(stored) // 4  # arrival order is not sorted
    whole.close()
    blocks.close()


def _as_schema_2(path: Path) -> list[tuple[Any, ...]]:
    """Make the store look as schema 2 left it (events in arrival order, no
    layout); the rows in the order they lie."""
    con = duckdb.connect(str(path))
    con.execute("COMMENT ON TABLE events IS NULL")
    con.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
    lying = con.execute("SELECT * FROM events ORDER BY rowid").fetchall()
    con.close()
    return lying


def test_a_store_of_schema_2_is_converted_with_the_same_answers(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.apply(build(product()), keys)
    before, asked = snapshot(store), answers(store)
    store.close()
    _as_schema_2(path)

    told: list[tuple[int, int]] = []
    converted = Store(path, progress=lambda done, total: told.append((done, total)))
    assert converted.schema_version() == SCHEMA_VERSION == 5
    assert snapshot(converted) == before
    assert answers(converted) == asked
    assert descents(sort_keys(converted)) == 0  # fewer than a block: one sorted block
    (events,) = converted.con.execute("SELECT count(*) FROM events").fetchone() or (0,)
    assert told == [(0, events), (events, events)]
    # The indexes of events, if the schema has any, built again.
    indexes = "SELECT index_name FROM duckdb_indexes() WHERE table_name = 'events'"
    expected = [(name,) for name, table, _ in INDEXED if table == "events"]
    assert converted.con.execute(indexes).fetchall() == expected
    converted.close()


def test_an_interrupted_conversion_leaves_the_store_of_schema_2(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.apply(build(product()), keys)
    before = snapshot(store)
    store.close()
    lying = _as_schema_2(path)

    def interrupt(done: int, total: int) -> None:
        if done:  # once a block is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Store(path, progress=interrupt)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [
        ("2",)
    ]
    assert con.execute("SELECT * FROM events ORDER BY rowid").fetchall() == lying
    con.close()

    again = Store(path)  # the next start converts it
    assert again.schema_version() == 5
    assert snapshot(again) == before
    again.close()


def test_a_conversion_without_room_on_disk_says_so_and_leaves_the_store_of_schema_2(
    tmp_path: Path,
) -> None:
    mounts = Mounts()
    try:
        disk = mounts.tmpfs(tmp_path / "disk", 64)
        path = disk.path / "store.duckdb"
        store = Store(path)
        # 300,000 events with properties: more than the room left below.
        store.con.execute(
            "INSERT INTO events SELECT 'acme', 'u' || (i % 5000), 'e' || (i % 7), ? + i, "
            "(? + i) * 1000000000, 'c0', i, map(['Plan', 'URL'], ['pro', 'https://x.example/' "
            "|| (i * 7919 % 100003)]), map(), md5_number_lower('u' || (i % 5000)), "
            "md5_number_lower('u' || (i % 5000)), i % 5000 "
            "FROM range(300000) t(i)",
            [T0, T0],
        )
        store.close()
        lying = _as_schema_2(path)
        filler = disk.fill(leave=2 << 20)

        assert_refused_and_unchanged(path, 2, lying)

        filler.unlink()  # room made: the next start converts it
        again = Store(path)
        assert again.schema_version() == 5
        assert descents(sort_keys(again)) == 0
        ((events,),) = again.con.execute("SELECT count(*) FROM events").fetchall()
        assert events == len(lying)
        again.close()
    finally:
        mounts.close()


def assert_refused_and_unchanged(path: Path, old: int, events: list[Any]) -> None:
    """Opening the store at ``path`` (of schema ``old``) on a full disk fails,
    saying why, and leaves it of schema ``old`` with ``events`` as they were."""
    with pytest.raises(Unavailable, match=f"could not be converted to schema {old + 1}") as failed:
        Store(path)
    assert f"It is unchanged, still of schema {old}" in str(failed.value), str(failed.value)
    assert failed.value.code == "store_conversion_failed"
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [
        (str(old),)
    ]
    assert con.execute("SELECT * FROM events ORDER BY rowid").fetchall() == events
    con.close()
