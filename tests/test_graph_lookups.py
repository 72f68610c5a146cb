"""store/graph.py finds a group's stored rows by the identities' hashes and
confirms them by their text (issue 12): two identities that share a hash never
bring each other's group in, and every row of a group is replaced exactly once."""

from __future__ import annotations

from pathlib import Path

from journeys import T0, alias, build, keys, rows
from tally.store.store import Store


def test_a_group_whose_hash_clashes_with_a_seed_is_left_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.apply(build([alias("a1", "b1", T0), alias("c1", "d1", T0 + 1)]), keys)
    # No two real identities are known to share an MD5 half: give a1's rows x1's hash.
    store.con.execute("UPDATE identities SET ih = md5_number_lower('x1') WHERE identity = 'a1'")
    store.con.execute("UPDATE aliases SET ah = md5_number_lower('x1') WHERE a = 'a1'")
    store.apply(build([alias("x1", "y1", T0 + 2)]), keys)
    assert rows(store, "SELECT identity, person, grp FROM identities") == [
        ("a1", "a1", "a1"),
        ("b1", "a1", "a1"),
        ("c1", "c1", "c1"),
        ("d1", "c1", "c1"),
        ("x1", "x1", "x1"),
        ("y1", "x1", "x1"),
    ]
    # a1's rows were not re-derived (which would have written its true hashes).
    clashed = "SELECT identity FROM identities WHERE ih = md5_number_lower('x1')"
    assert rows(store, clashed) == [("a1",), ("x1",)]
    assert rows(store, "SELECT a, b, status FROM aliases WHERE ah = md5_number_lower('x1')") == [
        ("a1", "b1", "accepted"),
        ("x1", "y1", "accepted"),
    ]
    store.close()


def test_groups_that_grow_and_merge_keep_one_row_each(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.apply(build([alias("b", "c", T0), alias("e", "f", T0 + 1)]), keys)
    store.apply(build([alias("c", "d", T0 + 2)]), keys)
    store.apply(build([alias("d", "e", T0 + 3), alias("a", "f", T0 + 4)]), keys)
    assert rows(store, "SELECT identity, person, grp FROM identities") == [
        (i, "a", "a") for i in "abcdef"
    ]
    assert rows(store, "SELECT a, b, status FROM aliases") == [
        ("a", "f", "accepted"),
        ("b", "c", "accepted"),
        ("c", "d", "accepted"),
        ("d", "e", "accepted"),
        ("e", "f", "accepted"),
    ]
    store.close()
