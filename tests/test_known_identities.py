"""``known_identities``: each identity an applied record names, once, whatever
the processor's cache holds; and two identities with one hash are reported
(reports would count them as one person, store/schema.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from journeys import T0, build, event, keys, rows, sets
from tally.store.store import Store


def test_an_identity_is_known_once_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    store.apply(build([event("bob", "Visited Site", T0), sets("ann", T0 + 1, {"a": "1"})]), keys)
    store.close()
    again = Store(path)  # a new process: nothing cached
    again.apply(build([event("bob", "Signed Up", T0 + 5), event("cy", "Signed Up", T0 + 6)]), keys)
    hashed = "SELECT identity, ih = md5_number_lower(identity) FROM known_identities"
    assert rows(again, hashed) == [("ann", True), ("bob", True), ("cy", True)]
    again.close()


def test_two_identities_with_one_hash_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.apply(build([event("bob", "Visited Site", T0)]), keys)
    # No two real identities are known to share an MD5 half: make bob's look like carol's.
    store.con.execute("UPDATE known_identities SET ih = md5_number_lower('carol')")
    with caplog.at_level(logging.ERROR, logger="tally.store"):
        store.apply(build([event("carol", "Visited Site", T0 + 1)]), keys)
    assert [r.getMessage() for r in caplog.records] == [
        "identities 'carol' and 'bob' of 'acme' have the same hash: reports count them as "
        "one person"
    ]
    assert rows(store, "SELECT identity FROM known_identities") == [("bob",), ("carol",)]
    store.close()
