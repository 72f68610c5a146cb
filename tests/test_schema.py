"""The store's schema: identity hashes, and a store of schema 1 upgraded in place."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from journeys import T0, alias, build, event, keys, sets, snapshot
from tally.errors import Unavailable
from tally.reports import Product, run_report
from tally.store.schema import SCHEMA_VERSION
from tally.store.store import Store
from tally.views.person import person_view

ROWS = [
    event("anon-1", "Visited Site", T0, {"Plan": "free"}),
    sets("ann@x.example", T0 + 5, {"Plan": "pro"}),
    alias("anon-1", "ann@x.example", T0 + 10),
    event("ann@x.example", "Signed Up", T0 + 20),
    event("bob", "Visited Site", T0 + 30),
]
HASHED = {
    "events": [("ih", "identity")],
    "property_values": [("ih", "identity")],
    "identities": [("ih", "identity"), ("ph", "person")],
    "known_identities": [("ih", "identity")],
    "aliases": [("ah", "a"), ("bh", "b")],
}
FUNNEL = {"from": "2023-11-14", "to": "2023-11-16", "steps": ["Visited Site", "Signed Up"]}


def test_every_identity_column_has_its_hash_beside_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.apply(build(ROWS), keys)
    for table, pairs in HASHED.items():
        for hashed, text in pairs:
            rows = store.con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {hashed} = md5_number_lower({text})) "
                f"FROM {table}"
            ).fetchone()
            assert rows is not None
            assert rows[0] > 0, table
            assert rows[0] == rows[1], (table, hashed)
    store.close()


def _downgrade(path: Path) -> None:
    """Make the store look as schema 1 wrote it: no hash columns, no indexes."""
    con = duckdb.connect(str(path))
    for (name,) in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall():
        if name.endswith(("_ih", "_ph", "_ah", "_bh")):
            con.execute(f"DROP INDEX {name}")
    for table, pairs in HASHED.items():
        for hashed, _ in pairs:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {hashed}")
    con.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    con.close()


def test_a_store_of_schema_1_is_upgraded_when_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.apply(build(ROWS), keys)
    before = snapshot(store)
    answer = run_report(store.con, Product("acme"), "funnel", FUNNEL)
    store.close()
    _downgrade(path)

    with pytest.raises(Unavailable, match="start `tally serve` once to upgrade"):
        Store(path, read_only=True)

    upgraded = Store(path)
    assert upgraded.schema_version() == SCHEMA_VERSION
    assert snapshot(upgraded) == before
    assert run_report(upgraded.con, Product("acme"), "funnel", FUNNEL) == answer
    assert [s["people"] for s in answer["steps"]] == [2, 1]
    assert person_view(upgraded.con, "acme", "anon-1")["identities"] == ["ann@x.example", "anon-1"]
    upgraded.close()


@pytest.mark.parametrize("events", [7, 150])  # read by index, or by the page's time span
def test_the_person_page_lists_events_newest_first_in_the_total_order(
    tmp_path: Path, events: int
) -> None:
    rows = []
    for i in range(events):
        # Pairs in one second, received in either order, on two streams.
        at = T0 + 3600 * (i // 2)
        who = "anon-1" if i % 3 else "ann@x.example"
        rows.append(event(who, f"Step {i % 4}", at, {"n": str(i)}, stream=f"c{i % 2}",
                          ns=(i * 7919) % 1000, t=at - (i % 2), d=True))  # fmt: skip
    rows.append(alias("anon-1", "ann@x.example", T0 + 1))
    store = Store(tmp_path / "s.duckdb")
    store.apply(build(rows), keys)
    expected = store.con.execute(
        "SELECT properties['n'] FROM events "
        "ORDER BY time DESC, recv_ns DESC, stream DESC, position DESC"
    ).fetchall()
    seen = []
    for page in range(1, events // 20 + 2):
        doc = person_view(store.con, "acme", "anon-1", page=page, page_size=20)["events"]
        assert doc["total"] == events
        seen += [(e["properties"]["n"],) for e in doc["items"]]
    assert seen == expected
    store.close()
