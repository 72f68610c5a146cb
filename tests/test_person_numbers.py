"""The dense number of each person (store/schema.py, schema 5).

Every person hash that a row or ``moved`` carries has a number in ``persons``,
0 to n - 1, one for each hash; every event and property value keeps ``pn``
beside ``ph`` and ``moved`` keeps the number of its ``ph``, so that
``coalesce(moved.pn, pn)`` is the number of ``coalesce(moved.ph, ph)``,
whatever order the records arrived in and whenever ``moved`` was folded.
Metrics count distinct people as sets of those numbers (bitmaps) or, past
their memory budget, by hashing: the same answers, the oracle's. A store of
schema 4 is converted with the same answers, and merges after the conversion
still go to ``moved``, without rewriting rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_layout import answers, product
from test_order_independence import CAPS, KEYS, fresh_store, interleave, record_sets
from test_persons_stored import TABLES, _in_batches, from_graph, moved, resolved
from test_reports_oracle import MAIN, check

from journeys import PRODUCT, T0, Keys, Row, alias, build, event, keys, rows, snapshot, total_order
from serverproc import wait_until
from tally.processor import Processor
from tally.reports import Product, metrics, run_report
from tally.settings import Settings
from tally.store import store as store_module
from tally.store.schema import SCHEMA_VERSION
from tally.store.store import Store

#: Rows whose number is not the number of the person they stand for now.
MISNUMBERED = """
    SELECT count(*) FROM {table} t LEFT JOIN moved m ON m.product = t.product AND m.ih = t.ih
    LEFT JOIN persons p ON p.ph = coalesce(m.ph, t.ph)
    WHERE p.pn IS DISTINCT FROM coalesce(m.pn, t.pn)
"""
#: Whether persons numbers its hashes 0 to n - 1, once each, and every hash
#: that ``moved`` carries.
DENSE = """
    SELECT count(*) = count(DISTINCT pn) AND count(*) = count(DISTINCT ph)
        AND coalesce(max(pn) + 1, 0) = count(*)
        AND NOT EXISTS (SELECT 1 FROM moved m LEFT JOIN persons q ON q.ph = m.ph
                        WHERE q.pn IS DISTINCT FROM m.pn)
    FROM persons
"""
RANGE = {"from": "2023-11-14", "to": "2023-11-19"}
#: Distinct people per interval and in all: by sets of numbers without a
#: segment, over the records of test_order_independence and test_layout.
PEOPLE: list[dict[str, Any]] = [
    {**RANGE, "event": "Buy", "interval": "day"},
    {**RANGE, "event": "Signed Up", "interval": "hour"},
    {**RANGE, "event": "Visited Site", "interval": "day"},
    {**RANGE, "event": "Purchased", "interval": "week"},
    {**RANGE, "event": "Buy", "interval": "day", "segment": {"property": "plan"}},
]


def numbered(store: Store) -> bool:
    """Whether every row and ``moved`` holds its person's number, and the numbers are dense."""
    wrong = sum(rows(store, MISNUMBERED.format(table=table))[0][0] for table in TABLES)
    return wrong == 0 and rows(store, DENSE) == [(True,)]


def people(store: Store) -> list[Any]:
    return [run_report(store.con, Product(PRODUCT), "metrics", body) for body in PEOPLE]


def by_hashing(store: Store) -> list[Any]:
    """:func:`people` with no room for sets: counted by hashing (person, interval) pairs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "PEOPLE_SETS_BUDGET", 0)
        return people(store)


#: Hypothesis: the examples of test_persons_stored's orders, with its checks.
ORDERS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@ORDERS
@given(records=record_sets(), data=st.data())
def test_any_order_and_any_folds_give_every_row_its_persons_number(
    records: list[Row], data: st.DataObject
) -> None:
    """The records in one batch in the total order, and in a drawn
    interleaving, batches and folds (after a drawn size of ``moved``, and
    after drawn batches): after every batch, each row holds its person's number."""
    cap, entries = data.draw(CAPS, "cap"), build(records)
    batches = interleave(data, entries)
    folds = data.draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)))
    with fresh_store() as split, fresh_store() as whole:
        split.fold_rows = data.draw(st.integers(1, 6), "fold at")
        for batch, fold in zip(batches, folds, strict=True):
            split.apply(batch, KEYS, cap=cap)
            if fold:
                split.fold()
            assert numbered(split)
        whole.apply(total_order(entries), KEYS, cap=cap)
        assert numbered(whole)
        assert people(split) == people(whole) == by_hashing(split) == by_hashing(whole)


@pytest.mark.parametrize("budget", [metrics.PEOPLE_SETS_BUDGET, 0], ids=["sets", "hashing"])
@MAIN
@given(data=st.data())
def test_metrics_by_sets_and_by_hashing_equal_the_oracle(budget: int, data: st.DataObject) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "PEOPLE_SETS_BUDGET", budget)
        check("metrics", data)


def test_a_writer_that_keeps_few_numbers_in_memory_gives_the_same_ones(tmp_path: Path) -> None:
    """Past ``_NUMBERS_CACHE`` persons the writer looks the others up in
    ``persons``: as many numbers, each its person's, as a writer that keeps
    them all gives."""
    records = product()
    keeping = Store(tmp_path / "all.duckdb")
    _in_batches(keeping, records)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_NUMBERS_CACHE", 3)
        forgetting = Store(tmp_path / "few.duckdb")
        _in_batches(forgetting, records)
        assert not forgetting._all_numbered
        assert 0 < len(forgetting._numbered) <= 3  # bounded, and what was met last is kept
    assert numbered(forgetting)
    assert rows(forgetting, "SELECT count(*) FROM persons") == rows(
        keeping, "SELECT count(*) FROM persons"
    )
    assert snapshot(forgetting) == snapshot(keeping)
    assert people(forgetting) == people(keeping)
    keeping.close()
    forgetting.close()


def test_the_processor_reads_the_numbers_before_its_first_batch(tmp_path: Path) -> None:
    """A store opened afresh reads its numbers once; the running processor
    does so as it starts, not in its first batch (the live rate, issue 12)."""
    config = Settings(data_dir=tmp_path)
    Store(config.store_path).close()
    first = Store(config.store_path)
    first.apply(build(product()), keys)
    count = rows(first, "SELECT count(*) FROM persons")[0][0]
    first.close()
    store = Store(config.store_path)
    assert store._next_number is None  # nothing read yet: a CLI command pays nothing
    processor = Processor(config, store, keys=Keys)
    processor.start()
    try:
        # (the dict last: the count is read before it)
        wait_until(lambda: len(store._numbered) == count > 0, 10, "read, with no record")
        assert store._next_number == count
    finally:
        processor.stop()
        store.close()


def test_a_rolled_back_batch_gives_no_number_away(tmp_path: Path) -> None:
    """A batch that fails gives back the numbers it took: the next ones are dense."""
    store = Store(tmp_path / "s.duckdb")
    store.apply(build([event("ann", "Buy", T0)]), keys)
    store.con.execute("CREATE TABLE boom (x INTEGER CHECK (x > 0))")
    with pytest.raises(duckdb.Error):
        store._transaction(lambda: (store._numbers([1, 2, 3]), store.con.execute(
            "INSERT INTO boom VALUES (0)")))  # fmt: skip
    store.apply(build([event("bob", "Buy", T0 + 1, stream="c1")]), keys)
    assert rows(store, "SELECT pn FROM persons") == [(0,), (1,)]
    assert numbered(store)
    store.close()


#: What makes a store look as schema 4 left it: no numbers, no ``persons``.
AS_SCHEMA_4 = """
    ALTER TABLE events DROP COLUMN pn;
    ALTER TABLE property_values DROP COLUMN pn;
    DROP TABLE persons;
    CREATE TABLE moved_4 AS SELECT product, ih, ph FROM moved;
    DROP TABLE moved;
    CREATE TABLE moved (product VARCHAR NOT NULL, ih UBIGINT NOT NULL, ph UBIGINT NOT NULL,
                        PRIMARY KEY (product, ih));
    INSERT INTO moved SELECT * FROM moved_4;
    DROP TABLE moved_4;
    UPDATE meta SET value = '4' WHERE name = 'schema_version';
"""


def test_a_store_of_schema_4_is_converted_with_the_same_answers(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.fold_rows = 10**9
    records = product()
    _in_batches(store, records)
    assert moved(store) > 0  # numbers for moved persons too
    before, asked, counted = snapshot(store), answers(store), people(store)
    persons = resolved(store)
    store.close()
    with duckdb.connect(str(path)) as con:
        con.execute(AS_SCHEMA_4)

    converted = Store(path)
    assert converted.schema_version() == SCHEMA_VERSION == 5
    assert numbered(converted)
    assert snapshot(converted) == before
    assert answers(converted) == asked
    assert people(converted) == counted == by_hashing(converted)
    assert resolved(converted) == persons

    # A merge after the conversion is instant: it goes to `moved`, rows stay.
    converted.fold_rows = 10**9
    (events,) = rows(converted, "SELECT count(*) FROM events")
    unmoved = moved(converted)
    # (an identity before every other: user0's person, and its rows', changes)
    converted.apply(build([alias("aaa-new", "user0", T0 + 7200, stream="c9")]), keys)
    assert moved(converted) > unmoved
    assert rows(converted, "SELECT count(*) FROM events") == [events]
    assert resolved(converted) == from_graph(converted)
    assert numbered(converted)
    assert people(converted) == by_hashing(converted)
    converted.close()
