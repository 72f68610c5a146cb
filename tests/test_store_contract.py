"""The store contract (tally.store.contract), run against every engine.

One suite, parametrised by engine name over ``tally.store.ENGINES`` (STYLE §6:
backends are chosen by name and pass one contract suite; today only DuckDB).
Records go in through the write side only (``Writer.apply``, ``write`` with a
``Staging``, ``replay``, the processor over a real log), and come back through
the read side only: a cursor from ``Reader.reading``, the engine's dialect,
the reports (``run_report``) and the views. Nothing here names an engine's
own tables beyond those the contract lists, nor its SQL: a second engine is
one entry in ``ENGINES``, and this file runs against it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from journeys import T0, Keys, Row, alias, build, event, revoke, sets
from tally.errors import InvalidInput
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.processor import Processor
from tally.reports import Product, run_report
from tally.reports.sql import Dialect
from tally.settings import Settings
from tally.store import ENGINES, Engine, open_engine
from tally.store.batch import prepare
from tally.views.events import events_view
from tally.views.person import person_view
from tally.views.rejects import rejects_view
from tally.views.status import store_view

ACME = Product("acme")
RANGE = {"from": "2023-11-14", "to": "2023-11-19"}  # T0 is 2023-11-14T22:13:20Z
UNKNOWN_KEY = "f" * 40

#: A few records of every kind (SPEC §4 to §7): events with properties, a
#: property set, a retry of an event on another stream (a duplicate), an
#: anonymous identity aliased to a known one, an alias revoked by an operator,
#: and a record with an unknown key (a reject).
RECORDS: list[Row] = [
    event("anon-1", "Signed Up", T0, {"Plan": "free"}, t=T0),
    event("anon-1", "Signed Up", T0 + 3, {"Plan": "free"}, t=T0, stream="c1"),  # a retry
    sets("ann", T0 + 5, {"Plan": "pro"}),
    alias("anon-1", "ann", T0 + 10),
    event("ann", "Paid", T0 + 20, {"Amount": "9.5"}),
    event("bob", "Signed Up", T0 + 30),
    event("bea", "Paid", T0 + 40),
    alias("bob", "bea", T0 + 50),
    revoke("bob", "bea", T0 + 60),
    event("eve", "Signed Up", T0 + 70, key=UNKNOWN_KEY),
]
STREAMS = ("c0", "c1", "op")

Opener = Callable[..., Engine]


@pytest.fixture(params=sorted(ENGINES))
def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def opened(engine_name: str, tmp_path: Path) -> Iterator[Opener]:
    """Opens the engine's store in ``tmp_path`` (again, after a close);
    closes whatever is still open at the end."""
    engines: list[Engine] = []

    def open_(name: str = "store", *, read_only: bool = False) -> Engine:
        engine = open_engine(tmp_path / name, engine=engine_name, read_only=read_only)
        engines.append(engine)
        return engine

    yield open_
    for engine in engines:
        engine.close()


@pytest.fixture
def store(opened: Opener) -> Engine:
    return opened()


def report(engine: Engine, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    with engine.reading() as cursor:
        return run_report(cursor, ACME, kind, {**RANGE, **body}, d=engine.dialect)


def view(engine: Engine, read: Callable[..., dict[str, Any]], *args: Any, **kw: Any) -> Any:
    with engine.reading() as cursor:
        return read(cursor, *args, **kw)


def answers(engine: Engine) -> list[dict[str, Any]]:
    """One question of several kinds, and the views a person page shows."""
    return [
        report(engine, "metrics", {"event": "Signed Up", "interval": "day", "measure": "times"}),
        report(engine, "metrics", {"event": "Signed Up", "interval": "day"}),
        report(engine, "funnel", {"steps": ["Signed Up", "Paid"]}),
        report(engine, "people", {"conditions": [{"type": "event", "event": "Paid"}]}),
        view(engine, person_view, "acme", "anon-1"),
        view(engine, store_view),
        view(engine, rejects_view, "acme"),
    ]


def ends(entries: list[Any]) -> dict[str, int]:
    """Per stream, the position after its last entry."""
    found: dict[str, int] = {}
    for entry in entries:
        found[entry.stream] = max(found.get(entry.stream, 0), entry.next_position)
    return found


def test_the_engine_gives_a_dialect_for_the_reports(store: Engine) -> None:
    assert isinstance(store.dialect, Dialect)


def test_records_of_every_kind_read_back_through_the_read_side(store: Engine) -> None:
    entries = build(RECORDS)
    stats = store.apply(entries, Keys())
    assert (stats.records, stats.duplicates) == (len(RECORDS), 1)
    assert dict(stats.rejected) == {"unknown_key": 1}
    assert store.positions() == ends(entries)

    # SPEC §5: the alias makes anon-1 and ann one person, named by the smallest.
    page = view(store, person_view, "acme", "anon-1")
    assert (page["person"], page["identities"]) == ("ann", ["ann", "anon-1"])
    # SPEC §4: the retry is not an event; its person's events are both identities'.
    assert [e["event"] for e in page["events"]["items"]] == ["Paid", "Signed Up"]
    # SPEC §6: the current value is the latest; the event's own property stays on it.
    plan = next(p for p in page["properties"] if p["name"] == "Plan")
    assert (plan["value"], plan["first_value"]) == ("pro", "free")
    # The revoked alias joins nobody: bob and bea are two people again.
    assert view(store, person_view, "acme", "bea")["identities"] == ["bea"]
    assert view(store, events_view, "acme", identity="bob")["total"] == 1

    # SPEC §7: the reject is listed with its reason; the retry counted.
    counts = view(store, store_view)
    assert (counts["events"], counts["duplicates"], counts["rejects"]) == (
        4,
        1,
        {"unknown_key": 1},
    )
    listed = view(store, rejects_view, "acme")
    assert [item["reason"] for item in listed["items"]] == ["unknown_key"]

    # The reports, in the engine's dialect: people are resolved at query time.
    times = report(store, "metrics", {"event": "Signed Up", "interval": "day", "measure": "times"})
    assert times["total"] == 2  # anon-1's (once) and bob's
    people = report(store, "metrics", {"event": "Signed Up", "interval": "day"})
    assert people["total"] == 2
    funnel = report(store, "funnel", {"steps": ["Signed Up", "Paid"]})
    assert [step["people"] for step in funnel["steps"]] == [2, 1]  # ann (as anon-1); bob
    paid = report(store, "people", {"conditions": [{"type": "event", "event": "Paid"}]})
    assert sorted(p["person"] for p in paid["people"]) == ["ann", "bea"]


def test_any_batches_in_any_order_give_the_same_answers(opened: Opener) -> None:
    """SPEC §5, §11: the store is a function of the records, not of how the
    processor happened to read them (here: reversed, one record a batch)."""
    whole = opened()
    whole.apply(build(RECORDS), Keys())
    expected = answers(whole)
    other = opened("other")
    entries = build(RECORDS)
    for entry in reversed(entries):
        other.apply([entry], Keys())
    assert answers(other) == expected
    assert other.positions() == ends(entries)


@pytest.mark.parametrize("original_first", [True, False], ids=["retry later", "retry first"])
def test_a_retry_in_another_batch_is_absorbed_and_the_earlier_kept(
    store: Engine, original_first: bool
) -> None:
    """SPEC §4, §11: against the whole history, of two duplicates the earlier
    in the total order is kept, even when it is read after the other."""
    original, retry = build(RECORDS[:2])
    for entry in (original, retry) if original_first else (retry, original):
        store.apply([entry], Keys())
    counts = view(store, store_view)
    assert (counts["events"], counts["duplicates"]) == (1, 1)
    (kept,) = view(store, person_view, "acme", "anon-1")["events"]["items"]
    assert kept["received"] == "2023-11-14T22:13:20.000Z"  # the original's, T0


def test_the_engines_own_tuning_never_changes_an_answer(opened: Opener) -> None:
    """Bulk writing, compaction, threads, memory, reading ahead and
    checkpoints are how an engine lays out and runs its work, never what it
    answers."""
    plain = opened("plain")
    plain.apply(build(RECORDS), Keys())
    expected = answers(plain)
    tuned = opened("tuned")
    tuned.limit_threads(1)
    tuned.limit_memory(512 * 1024 * 1024, 1024 * 1024 * 1024)
    entries = build(RECORDS)
    with tuned.bulk():
        tuned.apply(entries[:5], Keys())
        tuned.sort_events()
        tuned.warm()
        tuned.apply(entries[5:], Keys())
    tuned.checkpoint()
    with tuned.all_threads():
        assert answers(tuned) == expected
    tuned.sort_events()
    assert answers(tuned) == expected


def test_a_prepared_batch_is_written_once_from_its_staging(store: Engine) -> None:
    """What the processor does: prepare on one thread, stage there, write on another."""
    entries = build(RECORDS)
    first, rest = prepare(entries[:4], Keys()), prepare(entries[4:], Keys())
    staging = store.staging()
    try:
        staging.stage(first)
        staging.stage(rest)
        store.write(first)
        store.write(rest)
        unused = prepare(build([event("zed", "Left", T0)]), Keys())
        staging.stage(unused)
        staging.unstage(unused)  # prepared, never to be written
    finally:
        staging.close()
    assert store.positions() == ends(entries)
    assert view(store, store_view)["events"] == 4
    assert view(store, person_view, "acme", "ann")["identities"] == ["ann", "anon-1"]


def test_a_reject_replayed_after_its_key_is_added_applies(store: Engine) -> None:
    keys = Keys()
    entries = build(RECORDS)
    store.apply(entries, keys)
    keys.add(UNKNOWN_KEY)
    rejected = [e for e in entries if UNKNOWN_KEY.encode() in e.record.query]
    stats = store.replay(rejected, keys)
    assert (stats.applied, dict(stats.rejected)) == (1, {})
    assert view(store, rejects_view, "acme")["total"] == 0
    assert report(store, "metrics", {"event": "Signed Up", "interval": "day"})["total"] == 3


def logged(settings: Settings, rows: list[Row]) -> list[Any]:
    """``rows`` written to the data directory's log, as collectors would."""
    entries = build(rows)
    for stream in STREAMS:
        writer = SegmentWriter(settings.log_dir / stream)
        for entry in entries:
            if entry.stream == stream:
                writer.write_durable(encode_record(entry.record))
        writer.close()
    return entries


def test_the_processor_applies_each_record_once_across_reopens(
    opened: Opener, tmp_path: Path
) -> None:
    """Exactly once (DESIGN §3): positions commit with their batch, so
    catching up again, or after the store is closed and reopened, applies
    nothing twice; a reopened store reads as it was written."""
    settings = Settings(data_dir=tmp_path / "data")
    entries = logged(settings, RECORDS)
    store = opened()
    processor = Processor(settings, store, keys=Keys)
    assert processor.catch_up(limit=3) == len(RECORDS)  # in batches of three
    assert store.positions() == ends(entries)
    expected = answers(store)
    assert processor.catch_up() == 0  # nothing after the positions
    assert answers(store) == expected
    store.close()

    again = opened()
    assert again.positions() == ends(entries)
    assert Processor(settings, again, keys=Keys).catch_up() == 0
    assert answers(again) == expected
    again.close()

    read_only = opened(read_only=True)
    assert read_only.positions() == ends(entries)
    assert answers(read_only) == expected


def test_records_after_a_reopen_resume_where_the_store_is(opened: Opener, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    logged(settings, RECORDS[:5])
    store = opened()
    assert Processor(settings, store, keys=Keys).catch_up() == 5
    store.close()
    # More records arrive on every stream; the store resumes after the first five.
    for stream in STREAMS:
        (settings.log_dir / stream).mkdir(parents=True, exist_ok=True)
    whole = build(RECORDS)
    for stream in STREAMS:
        writer = SegmentWriter(settings.log_dir / stream)
        for entry in whole[5:]:
            if entry.stream == stream:
                writer.write_durable(encode_record(entry.record))
        writer.close()
    again = opened()
    assert Processor(settings, again, keys=Keys).catch_up() == len(RECORDS) - 5
    assert again.positions() == ends(whole)
    assert view(again, store_view)["events"] == 4


def test_the_machinery_failing_is_told_apart_from_a_bug(store: Engine) -> None:
    assert store.is_failure(OSError(28, "No space left on device"))
    assert not store.is_failure(ValueError("a bug"))


def test_an_engine_is_chosen_by_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no store engine 'nosuch'"):
        open_engine(tmp_path / "store", engine="nosuch")
