"""What the store keeps so that applying a batch costs the same at any size
of the history (docs/store.md, "Cost as the history grows"): folds of
``moved`` wait for a row of it for every ``fold_share`` events, and the count
of events that decides when a sorted block is made is kept by the store's own
writes, through replaced duplicates and sorted blocks.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from test_layout import answers, product
from test_persons_stored import from_graph, moved, resolved

from journeys import Row, build, keys, snapshot
from tally.store.store import Store


def _apply(store: Store, records: list[Row], size: int = 97) -> list[int]:
    """Stream c0, then c1 (its copies received earlier replace stored rows),
    in batches; the rows of ``moved`` after each."""
    entries = build(records)
    ordered = [e for e in entries if e.stream == "c0"] + [e for e in entries if e.stream == "c1"]
    sizes = []
    for i in range(0, len(ordered), size):
        store.apply(ordered[i : i + size], keys)
        sizes.append(moved(store))
    return sizes


def _events(store: Store) -> int:
    ((count,),) = store.con.execute("SELECT count(*) FROM events").fetchall()
    return int(count)


def test_folds_wait_for_a_moved_row_for_every_fold_share_events(tmp_path: Path) -> None:
    records = product()
    unfolded = Store(tmp_path / "unfolded.duckdb")
    unfolded.fold_rows = 10**9
    never = _apply(unfolded, records)
    assert never[-1] > 0

    # One row of moved for every event: never as many (an identity moves once
    # for many events), so no fold, however low fold_rows is.
    waiting = Store(tmp_path / "waiting.duckdb")
    waiting.fold_rows, waiting.fold_share = 1, 1
    assert _apply(waiting, records) == never

    # A row for every billion events: fold_rows decides alone, and folds.
    folding = Store(tmp_path / "folding.duckdb")
    folding.fold_rows, folding.fold_share = 1, 10**9
    sizes = _apply(folding, records)
    assert any(after < before for before, after in itertools.pairwise(sizes))
    assert moved(folding) < moved(waiting)

    # A share between the two folds later than fold_rows alone would.
    between = Store(tmp_path / "between.duckdb")
    between.fold_rows, between.fold_share = 1, _events(unfolded) // max(never) * 2
    held = _apply(between, records)
    assert held != sizes
    assert max(held) > max(sizes)

    for store in (waiting, folding, between):
        assert resolved(store) == resolved(unfolded) == from_graph(store)
        assert snapshot(store) == snapshot(unfolded)
        assert answers(store) == answers(unfolded)
    for store in (unfolded, waiting, folding, between):
        store.close()


def test_the_kept_count_of_events_follows_inserts_deletes_and_blocks(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.compact_rows = 50  # blocks made as the batches go
    _apply(store, product())  # c1's earlier copies delete stored events
    assert store._event_rows() == _events(store) > 0
    sorted_rows = store.con.execute(
        "SELECT comment FROM duckdb_tables() WHERE table_name = 'events'"
    ).fetchall()
    assert "sorted_rows" in sorted_rows[0][0]  # blocks were made on the way
    store.close()

    again = Store(tmp_path / "s.duckdb")  # counted afresh, then kept
    again.apply(build(product(seed=8, records=300)), keys)
    assert again._event_rows() == _events(again)
    again.close()


def test_tidy_folds_what_batches_left_in_moved(tmp_path: Path) -> None:
    records = product()
    unfolded = Store(tmp_path / "unfolded.duckdb")
    unfolded.fold_rows = 10**9
    _apply(unfolded, records)

    store = Store(tmp_path / "s.duckdb")
    store.fold_rows, store.fold_share = 1, 1  # no batch folds (see above)
    _apply(store, records)
    left = moved(store)
    assert left > 0
    store.fold_rows = left + 1
    assert store.tidy() is False  # fewer rows than fold_rows: left as they are
    assert moved(store) == left
    store.fold_rows = left
    assert store.tidy() is True
    assert moved(store) == 0
    assert resolved(store) == resolved(unfolded) == from_graph(store)
    assert snapshot(store) == snapshot(unfolded)
    assert answers(store) == answers(unfolded)
    assert store.tidy() is False
    for each in (store, unfolded):
        each.close()
