"""The store's tables that grow with every record carry no ART index (their
upkeep made the apply cost grow with history, docs/store.md), and a store that
an earlier Tally left with those indexes loses them when opened for writing,
answering exactly as before."""

from __future__ import annotations

from pathlib import Path

import duckdb

from journeys import T0, alias, build, event, keys, sets, snapshot
from tally.reports import Product, run_report
from tally.store.schema import SCHEMA_VERSION
from tally.store.store import Store
from tally.views.person import person_view

ROWS = [
    event("anon-1", "Visited Site", T0, {"Plan": "free"}),
    sets("ann@x.example", T0 + 5, {"Plan": "pro"}),
    alias("anon-1", "ann@x.example", T0 + 10),
    event("ann@x.example", "Signed Up", T0 + 20, {"Plan": "pro"}),
    event("ann@x.example", "Signed Up", T0 + 25),
    event("bob", "Visited Site", T0 + 30),
]
FUNNEL = {"from": "2023-11-14", "to": "2023-11-16", "steps": ["Visited Site", "Signed Up"]}
GROWING = ("events", "property_values")


def indexed_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_indexes()").fetchall()}


def test_the_tables_that_grow_with_every_record_have_no_index(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.apply(build(ROWS), keys)
    assert indexed_tables(store.con).isdisjoint(GROWING)
    # The small tables keep theirs: the person page finds an identity by them.
    assert {"known_identities", "identities", "aliases"} <= indexed_tables(store.con)
    store.close()


def test_a_store_with_the_earlier_indexes_loses_them_and_answers_the_same(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.apply(build(ROWS), keys)
    before = snapshot(store)
    answer = run_report(store.con, Product("acme"), "funnel", FUNNEL)
    page = person_view(store.con, "acme", "anon-1", page_size=2)
    store.close()
    con = duckdb.connect(str(path))  # as the Tally before this change left it
    con.execute("CREATE INDEX events_ih ON events (ih)")
    con.execute("CREATE INDEX property_values_ih ON property_values (ih)")
    con.close()

    read_only = Store(path, read_only=True)  # readable as it is
    assert set(GROWING) <= indexed_tables(read_only.con)
    assert person_view(read_only.con, "acme", "anon-1", page_size=2) == page
    read_only.close()

    converted = Store(path)
    assert indexed_tables(converted.con).isdisjoint(GROWING)
    assert converted.schema_version() == SCHEMA_VERSION
    assert snapshot(converted) == before
    assert run_report(converted.con, Product("acme"), "funnel", FUNNEL) == answer
    assert person_view(converted.con, "acme", "anon-1", page_size=2) == page
    converted.close()


def test_the_person_page_pages_its_events_newest_first_without_an_index(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.apply(build(ROWS), keys)
    first = person_view(store.con, "acme", "ann@x.example", page_size=2)["events"]
    second = person_view(store.con, "acme", "ann@x.example", page=2, page_size=2)["events"]
    assert first["total"] == second["total"] == 3
    assert [(e["event"], e["identity"], e["time"]) for e in first["items"]] == [
        ("Signed Up", "ann@x.example", "2023-11-14T22:13:45Z"),
        ("Signed Up", "ann@x.example", "2023-11-14T22:13:40Z"),
    ]
    assert [(e["event"], e["identity"], e["properties"]) for e in second["items"]] == [
        ("Visited Site", "anon-1", {"Plan": "free"}),
    ]
    assert person_view(store.con, "acme", "bob", page=2)["events"]["items"] == []
    store.close()


#: Rows that go to the WAL whole: fewer than a row group (DuckDB writes a
#: transaction's full row groups to the database file at once), 200 bytes each.
FILLER = "CREATE TABLE filler AS SELECT repeat(md5(range::VARCHAR), 6) AS x FROM range(110000)"


def wal_after_22_mb(store: Store, path: Path) -> int:
    """The WAL's size after a commit of ~22 MB and one more commit (DuckDB
    checkpoints at a commit that finds the WAL past its threshold)."""
    store.con.execute(FILLER)
    store.con.execute("DROP TABLE filler")
    wal = path.with_name(path.name + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def threshold(store: Store) -> str:
    row = store.con.execute("SELECT current_setting('checkpoint_threshold')").fetchone()
    assert row is not None
    return str(row[0])


def test_the_store_is_checkpointed_at_256_mb_of_wal_and_at_2_gb_in_bulk(tmp_path: Path) -> None:
    """DuckDB's automatic checkpoint writes out the whole of every ART index
    (DuckDB issue #24848): one at its default 16 MB of WAL, every few of the
    processor's batches, cost more the larger the store grew (store.py,
    CHECKPOINT_WAL)."""
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.apply(build(ROWS), keys)
    assert wal_after_22_mb(store, path) > 16 * 2**20  # not checkpointed at 16 MB
    assert threshold(store) == "244.1 MiB"  # 256 MB, as DuckDB counts
    with store.bulk():
        assert indexed_tables(store.con).isdisjoint({"identities", "aliases"})
        assert threshold(store) == "1.8 GiB"  # 2 GB
        store.apply(build([event("cy", "Visited Site", T0 + 40)]), keys)
    assert threshold(store) == "244.1 MiB"
    assert {"known_identities", "identities", "aliases"} <= indexed_tables(store.con)
    before = snapshot(store)
    store.close()
    reopened = Store(path)  # the setting made again on opening
    assert snapshot(reopened) == before
    assert threshold(reopened) == "244.1 MiB"
    reopened.close()
