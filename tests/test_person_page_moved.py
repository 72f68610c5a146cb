"""The person page finds a person's rows by the person stored on each row.

``person_view`` reads the events and property values whose ``ph`` is the
person's, corrected by ``moved`` (rows of identities merged in after they were
written carry another ``ph``; rows of identities split off by a revocation
still carry this one). Whatever order the records arrived in, in whatever
batches, and whether ``moved`` was folded or not, every identity's page is the
same, and its events are exactly those sent with one of its identities, as the
alias graph (``identities``, by text) says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_order_independence import CAPS, KEYS, fresh_store, interleave, record_sets

from journeys import PRODUCT, T0, Row, alias, build, event, keys, revoke, sets, total_order
from tally.store.store import Store
from tally.views.common import iso
from tally.views.person import person_view

PAGE = 1000  # every event on one page


def known(store: Store) -> list[str]:
    rows = store.con.execute(
        "SELECT identity FROM known_identities WHERE product = ? ORDER BY identity", [PRODUCT]
    ).fetchall()
    return [identity for (identity,) in rows]


def pages(store: Store) -> dict[str, Any]:
    return {
        identity: person_view(store.cursor(), PRODUCT, identity, page_size=PAGE)
        for identity in known(store)
    }


def by_text(store: Store, identities: list[str]) -> list[tuple[str, str, str]]:
    """The events sent with one of ``identities``, latest first (SPEC §11's
    order), found by their text alone: no hash, no stored person."""
    rows = store.con.execute(
        "SELECT identity, event, time FROM events WHERE product = ? AND list_contains(?, identity) "
        "ORDER BY time DESC, recv_ns DESC, stream DESC, position DESC",
        [PRODUCT, identities],
    ).fetchall()
    return [(identity, event, iso(time)) for identity, event, time in rows]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(records=record_sets(), data=st.data())
def test_every_page_is_the_same_in_any_order_and_holds_its_identities_events(
    records: list[Row], data: st.DataObject
) -> None:
    entries = build(records)
    cap = data.draw(CAPS, "cap")
    with fresh_store() as whole, fresh_store() as split:
        whole.apply(total_order(entries), KEYS, cap=cap)
        split.fold_rows = 10**9  # moved keeps every stale row unless drawn otherwise
        for batch in interleave(data, entries):
            split.apply(batch, KEYS, cap=cap)
            if data.draw(st.booleans(), "fold now"):
                split.fold()
        wanted = pages(whole)
        assert pages(split) == wanted
        for store in (whole, split):
            for identity, page in wanted.items():
                assert identity in page["identities"]
                events = page["events"]
                shown = [(item["identity"], item["key"], item["time"]) for item in events["items"]]
                expected = by_text(store, page["identities"])
                assert events["total"] == len(expected)
                assert shown == expected


def test_a_revoked_alias_and_a_late_merge_show_at_once_before_and_after_a_fold(
    tmp_path: Path,
) -> None:
    """``anon-1``'s rows were written as ``ann``'s, then the alias was revoked:
    they still carry ``ann``'s ``ph`` and must leave ``ann``'s page. ``bob``'s
    rows were written before the alias that makes ``anon-2`` its person: they
    carry ``bob``'s and must be on ``anon-2``'s page."""
    entries = build(
        [
            alias("ann", "anon-1", T0),
            event("anon-1", "Visit", T0 + 1),
            event("ann", "Buy", T0 + 2),
            sets("anon-1", T0 + 3, {"plan": "free"}),
            event("bob", "Visit", T0 + 4),
            sets("bob", T0 + 5, {"plan": "pro"}),
            revoke("ann", "anon-1", T0 + 6),
            alias("bob", "anon-2", T0 + 7),
        ]
    )
    # A batch's rows take the persons as they were before its own aliases.
    batches = [entries[:1], entries[1:6], entries[6:]]
    store = Store(tmp_path / "s.duckdb")
    store.fold_rows = 10**9
    for batch in batches:
        store.apply(batch, keys)
    (stale,) = store.con.execute(
        "SELECT count(*) FROM events e JOIN moved m USING (product, ih) WHERE e.ph <> m.ph"
    ).fetchone() or (0,)
    assert stale == 2  # anon-1's and bob's events carry the person they had
    for _ in range(2):  # as stored, then folded
        shown = {
            i: person_view(store.cursor(), PRODUCT, i) for i in ("ann", "anon-1", "anon-2", "bob")
        }
        ann, anon1, anon2 = shown["ann"], shown["anon-1"], shown["anon-2"]
        assert ann["identities"] == ["ann"]
        assert [i["identity"] for i in ann["events"]["items"]] == ["ann"]
        assert ann["properties"] == []
        assert anon1["identities"] == ["anon-1"]
        assert [i["identity"] for i in anon1["events"]["items"]] == ["anon-1"]
        assert [p["value"] for p in anon1["properties"]] == ["free"]
        assert anon2["person"] == "anon-2"
        assert anon2["identities"] == ["anon-2", "bob"]
        for part in ("person", "identities", "properties", "events"):
            assert shown["bob"][part] == anon2[part]
        assert [i["identity"] for i in anon2["events"]["items"]] == ["bob"]
        assert [p["value"] for p in anon2["properties"]] == ["pro"]
        store.fold()
    store.close()
