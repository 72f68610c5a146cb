"""The store is a function of the set of records, not of the order read (SPEC §5, §11).

"Any permutation of a generated set of records (events, sets, aliases,
duplicates, across several streams) yields the same people, the same current
properties and the same event counts": a generated set of records is applied
(a) in the total order, as one batch, and (b) with the streams interleaved in
a generated way (each stream's own order kept, as the processor reads it) and
split into generated batches. Both stores must be equal table by table.

The generated records use a small alphabet of identities, so that aliases chain
and merge, and a cap of 3, so that the cap matters; event and property names
come in several spellings; copies of records are sent again on other streams
at other receive times (duplicates that arrive before or after the original);
some records are rejected (unknown, revoked key, blocked or missing person,
bad time), some lose a property, and an operator revokes some aliases.

Garbage records (arbitrary bytes) go through the same store too: the parser's
property test feeds the processor.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journeys import (
    KEY,
    PRODUCT,
    T0,
    Keys,
    Row,
    alias,
    build,
    counts,
    current,
    event,
    people,
    revoke,
    rows,
    sets,
    snapshot,
    total_order,
)
from tally.log.reader import Entry
from tally.log.record import Record, encode_record
from tally.log.writer import SegmentWriter
from tally.operations import REVOKE_ALIAS_PATH
from tally.processor import Processor
from tally.settings import Settings
from tally.store.store import Store

CAP = 3
CAPS = st.sampled_from([CAP, 2])  # 2 makes the cap bite more often
OLD_KEY = "e" * 40  # acme's, revoked at T0 + 3 s
OTHER_KEY = "d" * 40  # another product's: same identities, other people
KEYS = Keys(
    {
        KEY: (PRODUCT, None),
        OLD_KEY: (PRODUCT, (T0 + 3) * 1_000_000_000),
        OTHER_KEY: ("globex", None),
    }
)
STREAMS = ["c0", "c1", "c2"]

GOOD_PERSON = st.sampled_from(["a", "b", "c", "d", "e", "A", " b "])  # "A" is not "a"; trimmed
PERSON = st.one_of(
    *[GOOD_PERSON] * 6,
    st.sampled_from(["null", None, "x" * 256]),  # blocked, missing, too long
)
EVENT_NAME = st.sampled_from(["Signed Up", "signed up", "SIGNED,UP", "Buy", "buy", "", None])
PROPS = st.dictionaries(
    st.sampled_from(["plan", "Plan", "seats", "PLAN "]),
    st.sampled_from(["free", "pro", "1", "", "x" * 9000]),  # 9 KB: the property is dropped
    max_size=2,
)
CLIENT_TIME = st.sampled_from([None, None, T0 - 10, T0 - 5, (T0 - 5) * 1000 + 7, "soon"])
KEY_USED = st.sampled_from([KEY] * 8 + [OTHER_KEY, OLD_KEY, "nope"])
# Receive times: few seconds and two sub-second offsets, so that equal receive
# times across streams (and within one) are common.
WHEN = st.tuples(st.integers(0, 6), st.sampled_from([0, 0, 500_000_000]))
STREAM = st.sampled_from(STREAMS)


@st.composite
def tracking_row(draw: st.DrawFn) -> Row:
    at, ns = draw(WHEN)
    stream, key, t = draw(STREAM), draw(KEY_USED), draw(CLIENT_TIME)
    kind = draw(st.sampled_from(["alias"] * 5 + ["event"] * 3 + ["set"] * 2 + ["revoke"]))
    # "revoke" here is of any pair; record_sets also revokes aliases it made.
    if kind == "event":
        return event(
            draw(PERSON), draw(EVENT_NAME), T0 + at, draw(PROPS),
            stream=stream, ns=ns, t=t, d=draw(st.booleans()), key=key,
        )  # fmt: skip
    if kind == "set":
        return sets(
            draw(PERSON), T0 + at, draw(PROPS), stream=stream, ns=ns, t=t, d=draw(st.booleans()),
            key=key,
        )  # fmt: skip
    identities = st.sampled_from(["a", "b", "c", "d", "e", "a", "b", "c"])
    if kind == "alias":
        other = draw(st.one_of(*[identities] * 8, st.sampled_from(["null", None])))
        return alias(draw(identities), other, T0 + at, stream=stream, ns=ns, t=t, key=key)
    return revoke(draw(identities), draw(identities), T0 + at, ns=ns)


@st.composite
def record_sets(draw: st.DrawFn) -> list[Row]:
    """Records; revocations of some of their aliases; copies of some of them
    sent again at another time, on another stream (duplicates)."""
    originals = draw(st.lists(tracking_row(), min_size=4, max_size=16))
    aliases = [r for r in originals if r[1] == "/a" and r[2].get("_p") and r[2].get("_n")]
    if aliases:
        for index, (at, ns) in draw(
            st.lists(st.tuples(st.integers(0, len(aliases) - 1), WHEN), max_size=3)
        ):
            params = aliases[index][2]
            product = KEYS.table.get(params.get("_k", ""), (PRODUCT, None))[0]
            originals.append(revoke(params["_n"], params["_p"], T0 + at, ns=ns, product=product))
    copies = draw(st.lists(st.tuples(st.integers(0, len(originals) - 1), STREAM, WHEN), max_size=6))
    out = list(originals)
    for index, stream, (at, ns) in copies:
        original_stream, path, params, _, _ = originals[index]
        copy_stream = original_stream if path == REVOKE_ALIAS_PATH else stream
        out.append((copy_stream, path, params, T0 + at, ns))
    return draw(st.permutations(out))  # the order within each stream, too


def interleave(data: st.DataObject, entries: list[Entry]) -> list[list[Entry]]:
    """The streams merged in a drawn interleaving (each in its own order), in
    drawn batch sizes: what a processor reading them at its own pace sees."""
    queues: dict[str, deque[Entry]] = {}
    for entry in sorted(entries, key=lambda e: (e.stream, e.position)):
        queues.setdefault(entry.stream, deque()).append(entry)
    picks = data.draw(
        st.lists(st.integers(0, 3), min_size=len(entries), max_size=len(entries)), "streams"
    )
    merged = []
    for pick in picks:
        streams = sorted(queues)
        stream = streams[pick % len(streams)]
        merged.append(queues[stream].popleft())
        if not queues[stream]:
            del queues[stream]
    sizes = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=6), "batch sizes")
    batches, start, i = [], 0, 0
    while start < len(merged):
        batches.append(merged[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return batches


@contextmanager
def fresh_store() -> Iterator[Store]:
    store = Store(":memory:")
    try:
        yield store
    finally:
        store.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(records=record_sets(), data=st.data())
def test_the_processor_catching_up_in_batches_gives_the_same_store(
    records: list[Row], data: st.DataObject
) -> None:
    """The processor as it runs: the records written to real log streams, read
    back in batches of a drawn size, each prepared while the one before is
    written (Processor.catch_up): the store of one batch in the total order."""
    entries = build(records)
    cap = data.draw(CAPS, "cap")
    limit = data.draw(st.integers(1, 8), "batch size")
    with tempfile.TemporaryDirectory() as directory, fresh_store() as whole:
        config = Settings(data_dir=Path(directory), max_identities_per_person=cap)
        writers: dict[str, SegmentWriter] = {}
        for entry in sorted(entries, key=lambda e: (e.stream, e.position)):
            if entry.stream not in writers:
                writers[entry.stream] = SegmentWriter(config.log_dir / entry.stream)
            writers[entry.stream].write_durable(encode_record(entry.record))
        for writer in writers.values():
            writer.close()
        caught_up = Store(config.store_path)
        try:
            processor = Processor(config, caught_up, keys=lambda: KEYS)
            assert processor.catch_up(limit=limit) == len(entries)
            # A batch takes up to `limit` records (what idle streams leave goes to
            # the others), and at least one of each stream that has any.
            per_batch = limit + len(writers) - 1
            assert processor.progress.batches >= len(entries) / per_batch
            whole.apply(total_order(entries), KEYS, cap=cap)
            expected, got = snapshot(whole), snapshot(caught_up)
            assert got == expected, _differences(expected, got)
            assert caught_up.positions() == whole.positions()
            assert processor.catch_up(limit=limit) == 0  # nothing left
        finally:
            caught_up.close()


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"total order": a[name], "interleaved": b[name]}
        for name in a
        if a[name] != b.get(name)
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(records=record_sets(), data=st.data())
def test_any_interleaving_gives_the_same_store(records: list[Row], data: st.DataObject) -> None:
    entries = build(records)
    batches = interleave(data, entries)
    cap = data.draw(CAPS, "cap")
    with fresh_store() as whole, fresh_store() as split:
        whole.apply(total_order(entries), KEYS, cap=cap)
        for batch in batches:
            split.apply(batch, KEYS, cap=cap)

        # The three, spelled out: the same people, current properties and
        # event counts ...
        assert people(split) == people(whole)
        assert current(split) == current(whole)
        assert counts(split) == counts(whole)
        # ... and, stronger, every table: statuses, rejects, names, duplicates, positions.
        expected, got = snapshot(whole), snapshot(split)
        assert got == expected, _differences(expected, got)
        assert split.positions() == {e.stream: e.next_position for e in entries}
        _check_the_cap(whole, cap)


def _check_the_cap(store: Store, cap: int) -> None:
    """No person has more identities than the cap; every alias that the cap
    rejected is listed as such. Also steers and reports the generation
    (``pytest --hypothesis-show-statistics`` tells how often each feature came up)."""
    sizes = rows(store, "SELECT count(*) FROM identities GROUP BY product, person")
    assert all(size <= cap for (size,) in sizes)
    capped = rows(store, "SELECT stream, position FROM aliases WHERE status = 'alias_cap'")
    listed = rows(store, "SELECT stream, position FROM rejects WHERE reason = 'alias_cap'")
    assert capped == listed
    # Steer generation towards what is rare by chance: capped and revoked aliases.
    hypothesis.target(float(len(capped)), label="capped aliases")
    [(revoked,)] = rows(store, "SELECT count(*) FROM aliases WHERE status = 'revoked'")
    hypothesis.target(float(revoked), label="revoked aliases")
    for (status,) in rows(store, "SELECT DISTINCT status FROM aliases"):
        hypothesis.event(f"alias {status}")
    if any(size == cap for (size,) in sizes):
        hypothesis.event("a person at the cap")
    if rows(store, "SELECT * FROM counters WHERE name = 'duplicates' AND value > 0"):
        hypothesis.event("duplicates")
    for (reason,) in rows(store, "SELECT DISTINCT reason FROM rejects"):
        hypothesis.event(f"reject {reason}")


def test_a_generated_example_has_everything() -> None:
    """The generator's alphabet exercises what it claims, on a fixed example:
    aliases that merge up to the cap, a revocation, duplicates, rejects."""
    records = [
        alias("a", "b", T0, stream="c0"),
        alias("c", "d", T0, stream="c1"),
        alias("b", "c", T0 + 1, stream="c2"),  # would make 4: capped
        event("d", "Signed Up", T0 + 2, {"plan": "pro"}, stream="c0", t=T0 - 5),
        event("d", "signed up", T0 + 1, {"plan": "pro"}, stream="c2", t=T0 - 5),  # duplicate
        revoke("a", "b", T0 + 3),
        alias("b", "c", T0 + 4, stream="c1"),  # now fits
        sets("null", T0, {"plan": "free"}, stream="c1"),
        event("a", "Buy", T0 + 4, stream="c2", key=OLD_KEY),  # revoked key
    ]
    entries = build(records)
    with fresh_store() as whole, fresh_store() as split:
        whole.apply(total_order(entries), KEYS, cap=CAP)
        for entry in reversed(entries):
            split.apply([entry], KEYS, cap=CAP)
        assert snapshot(split) == snapshot(whole)
        assert people(whole) == [
            (PRODUCT, "a", "a"),
            (PRODUCT, "b", "b"),
            (PRODUCT, "c", "b"),
            (PRODUCT, "d", "b"),
        ]
        assert rows(whole, "SELECT reason FROM rejects") == [
            ("blocked_identity",),
            ("revoked_key",),
        ]
        assert counts(whole) == [(PRODUCT, "b", "signed up", 1)]
        assert rows(whole, "SELECT display FROM names WHERE kind = 'event'") == [("signed up",)]


# -- garbage ---------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        f"_k={KEY}", f"_k={OLD_KEY}", "_p=a", "_p=b", "_p=%00", "_p=NULL", "_p=", "_n=a",
        "_n=Signed+Up", "_n=", "_n=%2C%3A", "_t=", "_t=1e400", "_t=-9223372036854775808",
        "_t=99999999999999999999", f"_t={T0}", f"_t={T0 * 1000}", "_d=1", "_d=", "&", "=",
        "%", "%f", "%ff", "%zz", "plan=pro", "Plan=", "_p2=z", "_c=mobile_app", "%2C=1",
        "+=+", "a%3Ab=2", "product=acme", "a=a", "b=b", "_p=" + "x" * 300, "v=" + "y" * 9000,
    ]
)  # fmt: skip
QUERY = st.one_of(
    st.binary(max_size=80),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=6)), max_size=10).map(
        lambda parts: "&".join(parts).encode("utf-8", "surrogatepass")
    ),
)
GARBAGE = st.builds(
    Record,
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "OPERATOR"]),
    path=st.sampled_from(["/e", "/s", "/a", "/x", "", REVOKE_ALIAS_PATH, "/e?x"]),
    query=QUERY,
    body=QUERY,
    recv_ns=st.one_of(st.integers(T0 * 10**9, (T0 + 5) * 10**9), st.integers(-(2**63), 2**63 - 1)),
    content_type=st.sampled_from(["", "application/x-www-form-urlencoded", "text/plain"]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(records=st.lists(st.tuples(STREAM, GARBAGE), min_size=1, max_size=12), data=st.data())
def test_garbage_never_stops_the_store(
    records: list[tuple[str, Record]], data: st.DataObject
) -> None:
    """Issue: "the property-based test of the parser feeds the processor too".
    Arbitrary records never raise, every position advances, none is an internal
    error (each is applied, rejected, a duplicate or not a tracking call), and
    the result does not depend on the order read either."""
    ends: dict[str, int] = {}
    entries = []
    for stream, record in records:
        position = ends.get(stream, 0)
        ends[stream] = position + 100
        entries.append(Entry(stream, position, position + 100, record))
    with fresh_store() as whole, fresh_store() as split:
        whole.apply(total_order(entries), KEYS, cap=CAP)
        for batch in interleave(data, entries):
            split.apply(batch, KEYS, cap=CAP)
        assert whole.positions() == ends
        assert split.positions() == ends
        assert rows(whole, "SELECT detail FROM rejects WHERE reason = 'internal_error'") == []
        assert snapshot(split) == snapshot(whole)
