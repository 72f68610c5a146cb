"""The person stored on each event and property value (store/schema.py, schema 4).

A row keeps ``ph``, its identity's person when it was written; ``moved`` holds
the current person of every identity whose person changed since. The
invariant: ``coalesce(moved.ph, ph)`` is the identity's current person (what
the alias graph, ``identities``, says) for every row, whatever order the
records arrived in and whenever ``moved`` was folded into the rows. Folding
changes no answer; a store of schema 3 is converted with the same answers, and
a conversion that cannot finish leaves it of schema 3, as it was.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_layout import answers, assert_refused_and_unchanged, product
from test_order_independence import CAPS, KEYS, fresh_store, interleave, record_sets

from journeys import PRODUCT, T0, Row, build, keys, rows, snapshot, total_order
from mounts import Mounts
from tally.errors import Unavailable
from tally.reports import Product, run_report
from tally.store.schema import SCHEMA_VERSION
from tally.store.store import Store

#: Each row of events and property values with the person it stands for now.
RESOLVED = """
    SELECT '{table}', t.product, t.stream, t.position, t.identity, coalesce(m.ph, t.ph)
    FROM {table} t LEFT JOIN moved m ON m.product = t.product AND m.ih = t.ih
"""
#: The same rows with their person from the alias graph.
FROM_GRAPH = """
    SELECT '{table}', t.product, t.stream, t.position, t.identity, coalesce(i.ph, t.ih)
    FROM {table} t LEFT JOIN identities i ON i.product = t.product AND i.ih = t.ih
"""
TABLES = ("events", "property_values")
RANGE = {"from": "2023-11-14", "to": "2023-11-16"}
#: Questions that count people, over the generated records of test_order_independence.
QUESTIONS: list[tuple[str, dict[str, Any]]] = [
    ("metrics", {**RANGE, "event": "Buy", "interval": "day", "segment": {"property": "plan"}}),
    ("funnel", {**RANGE, "steps": ["Signed Up", "Buy"]}),
    ("people", {**RANGE, "conditions": [
        {"type": "event", "event": "Signed Up", "count": {"op": "at_least", "value": 1}}],
        "columns": [{"type": "event", "event": "Buy"}]}),
]  # fmt: skip


def resolved(store: Store) -> list[tuple[Any, ...]]:
    return [row for table in TABLES for row in rows(store, RESOLVED.format(table=table))]


def from_graph(store: Store) -> list[tuple[Any, ...]]:
    return [row for table in TABLES for row in rows(store, FROM_GRAPH.format(table=table))]


def asked(store: Store) -> list[Any]:
    return [run_report(store.con, Product(PRODUCT), kind, body) for kind, body in QUESTIONS]


def moved(store: Store) -> int:
    ((count,),) = store.con.execute("SELECT count(*) FROM moved").fetchall()
    return int(count)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(records=record_sets(), data=st.data())
def test_any_order_and_any_folds_give_every_row_its_current_person(
    records: list[Row], data: st.DataObject
) -> None:
    entries = build(records)
    cap = data.draw(CAPS, "cap")
    with fresh_store() as whole, fresh_store() as split:
        whole.apply(total_order(entries), KEYS, cap=cap)
        split.fold_rows = data.draw(st.integers(1, 6), "fold at")
        for batch in interleave(data, entries):
            split.apply(batch, KEYS, cap=cap)
            if data.draw(st.booleans(), "fold now"):
                split.fold()
                assert moved(split) == 0
        assert resolved(split) == resolved(whole)
        assert resolved(split) == from_graph(split)
        assert resolved(whole) == from_graph(whole)
        assert asked(split) == asked(whole)


def _in_batches(store: Store, records: list[Row], size: int = 97) -> None:
    """Stream c0, then c1 (its copies received earlier replace stored rows),
    in batches: most aliases arrive after their identities' events."""
    entries = build(records)
    ordered = [e for e in entries if e.stream == "c0"] + [e for e in entries if e.stream == "c1"]
    for i in range(0, len(ordered), size):
        store.apply(ordered[i : i + size], keys)


def test_a_fold_changes_no_answer(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.fold_rows = 10**9  # none by itself
    _in_batches(store, product())
    assert moved(store) > 0
    stale = rows(store, "SELECT count(*) FROM events e JOIN moved m USING (product, ih) "
                 "WHERE e.ph <> m.ph")  # fmt: skip
    assert stale[0][0] > 0  # rows whose stored person is not their person now
    before, persons, questions = snapshot(store), resolved(store), answers(store)

    store.fold()
    assert moved(store) == 0
    assert resolved(store) == persons == from_graph(store)
    assert snapshot(store) == before
    assert answers(store) == questions
    store.close()


def test_the_processor_folds_when_moved_is_full(tmp_path: Path) -> None:
    records = product()
    unfolded = Store(tmp_path / "unfolded.duckdb")
    unfolded.fold_rows = 10**9
    _in_batches(unfolded, records)
    folding = Store(tmp_path / "folding.duckdb")
    folding.fold_rows = 3
    sizes = []
    entries = build(records)
    ordered = [e for e in entries if e.stream == "c0"] + [e for e in entries if e.stream == "c1"]
    for i in range(0, len(ordered), 97):
        folding.apply(ordered[i : i + 97], keys)
        sizes.append(moved(folding))
    assert any(after < before for before, after in itertools.pairwise(sizes))
    assert moved(folding) < moved(unfolded)
    assert resolved(folding) == resolved(unfolded) == from_graph(folding)
    assert snapshot(folding) == snapshot(unfolded)
    assert answers(folding) == answers(unfolded)
    unfolded.close()
    folding.close()


def _as_schema_3(path: Path) -> None:
    """Make the store look as schema 3 left it: no stored persons, no ``moved``."""
    con = duckdb.connect(str(path))
    for table in TABLES:
        con.execute(f"ALTER TABLE {table} DROP COLUMN ph")
    con.execute("DROP TABLE moved")
    con.execute("UPDATE meta SET value = '3' WHERE name = 'schema_version'")
    con.close()


def test_a_store_of_schema_3_is_converted_with_the_same_answers(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.fold_rows = 10**9
    _in_batches(store, product())
    assert moved(store) > 0
    before, questions = snapshot(store), answers(store)
    store.close()
    _as_schema_3(path)

    with pytest.raises(Unavailable, match="start `tally serve` once to upgrade"):
        Store(path, read_only=True)
    converted = Store(path)
    assert converted.schema_version() == SCHEMA_VERSION == 5
    assert moved(converted) == 0
    assert resolved(converted) == from_graph(converted)
    assert snapshot(converted) == before
    assert answers(converted) == questions
    columns = converted.con.execute(
        "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
        "WHERE table_name IN ('events', 'property_values') AND column_name IN ('ih', 'ph') "
        "ORDER BY table_name, ordinal_position"
    ).fetchall()
    assert columns == [
        ("events", "ih", "NO"),
        ("events", "ph", "NO"),
        ("property_values", "ih", "NO"),
        ("property_values", "ph", "NO"),
    ]
    converted.close()


def test_a_conversion_without_room_on_disk_says_so_and_leaves_the_store_of_schema_3(
    tmp_path: Path,
) -> None:
    mounts = Mounts()
    try:
        disk = mounts.tmpfs(tmp_path / "disk", 64)
        path = disk.path / "store.duckdb"
        store = Store(path)
        # 1,000,000 events of 5,000 identities: their persons take more room
        # than is left below.
        store.con.execute(
            "INSERT INTO events SELECT 'acme', 'u' || (i % 5000), 'e' || (i % 7), ? + i, "
            "(? + i) * 1000000000, 'c0', i, map(), map(), md5_number_lower('u' || (i % 5000)), "
            "md5_number_lower('u' || (i % 5000)), i % 5000 FROM range(1000000) t(i)",
            [T0, T0],
        )
        store.close()
        _as_schema_3(path)
        con = duckdb.connect(str(path), read_only=True)
        lying = con.execute("SELECT * FROM events ORDER BY rowid").fetchall()
        con.close()
        filler = disk.fill(leave=2 << 20)

        assert_refused_and_unchanged(path, 3, lying)

        filler.unlink()  # room made: the next start converts it
        again = Store(path)
        assert again.schema_version() == 5
        assert rows(again, "SELECT count(*) FROM events WHERE ph <> ih") == [(0,)]
        again.close()
    finally:
        mounts.close()
