"""Imports (issue 13): real files in, through the log, applied by the real
processor into a real store, and what the reports' views then see."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import hypothesis
import pytest
from click.testing import CliRunner
from hypothesis import strategies as st

from migrating import apply, lines
from serverproc import wait_until
from tally.cli import main
from tally.log.record import Record, encode_record
from tally.log.writer import SegmentWriter
from tally.migrate.checkpoint import CHECKPOINT, ImportState, read_state
from tally.migrate.formats import open_source
from tally.migrate.importer import Framed, ReadAhead, frame_items, run_import, write_chunks
from tally.migrate.records import _query
from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store
from tally.views.events import events_view
from tally.views.person import person_view
from tally.views.rejects import rejects_view

KEY = "0123456789abcdef0123456789abcdef01234567"
T = 1_700_000_000


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    assert cli(data_dir, "products", "create", "shop", "--key", KEY).exit_code == 0
    return data_dir


def cli(data_dir: Path, *args: str):
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


def duplicates_absorbed(store: Store) -> int:
    row = store.con.execute("SELECT value FROM counters WHERE name = 'duplicates'").fetchone()
    return int(row[0]) if row else 0


def km_export(root: Path) -> Path:
    """A KISSmetrics export as real ones are: numbered files read by number
    (10 after 2), gzip, octal escapes, names in any case, a mobile row, an
    alias, a record without a time, garbage, a bad escape, a cut last line."""
    revisions = root / "revisions"
    revisions.mkdir(parents=True)
    (revisions / "2.json").write_text(
        lines(
            {"_p": "ann", "_t": T, "_n": "Signed Up", "Plan": "free"},
            f'{{"_P":"ann","_T":{T + 10},"Price":"\\302\\243100"}}',
            {"_p": "ann", "_t": T + 20, "_p2": "ann@mail"},
            {"_p": "bob", "_n": "No Time"},
            "this is not json",
            f'{{"_p":"bob","_t":{T + 30},"Bad":"\\377\\376"}}',
            "",
        )
    )
    with gzip.open(revisions / "10.json", "wt") as f:
        f.write(
            lines(
                {"_p": "ann@mail", "_t": T + 40, "_n": "signed up", "plan": "pro"},
                {
                    "_p": "bob",
                    "_t": T + 50,
                    "_n": "Billed",
                    "Billing Amount": 12.5,
                    "_c": "mobile_app",
                    "_server_timestamp": T + 51,
                },
            )
            + '{"_p":"cy","_t":17'
        )
    return root


def test_a_kissmetrics_export_is_imported_as_real_files_are(data, tmp_path):
    export = km_export(tmp_path / "export")
    result = cli(data, "import", "km", str(export), "--product", "shop")
    assert result.exit_code == 0, result.output
    assert "Imported 9 records" in result.output  # 3 of them rejects
    assert "2 malformed_record" in result.output
    assert "1 bad_escape" in result.output

    store = apply(data)
    con = store.cursor()
    events = events_view(con, "shop")["items"]
    assert [(e["event"], e["identity"], e["time"]) for e in events] == [
        ("Billed", "bob", "2023-11-14T22:14:10Z"),
        ("Signed Up", "ann@mail", "2023-11-14T22:14:00Z"),
        ("Signed Up", "ann", "2023-11-14T22:13:20Z"),
    ]
    assert events[0]["properties"] == {"Billing Amount": "12.5"}
    ann = person_view(con, "shop", "ann")
    assert sorted(ann["identities"]) == ["ann", "ann@mail"]
    props = {p["name"]: p["value"] for p in ann["properties"]}
    assert props == {"Plan": "pro", "Price": "£100"}

    rejects = rejects_view(con, "shop")
    assert rejects["by_reason"] == {"bad_escape": 1, "bad_time": 1, "malformed_record": 2}
    sources = {r["reason"] + " " + dict(r["params"])["_src"] for r in rejects["items"]}
    assert sources == {
        "bad_time revisions/2.json:4",
        "malformed_record revisions/2.json:5",
        "bad_escape revisions/2.json:6",
        "malformed_record revisions/10.json:3",
    }
    truncated = next(r for r in rejects["items"] if "10.json" in dict(r["params"])["_src"])
    assert dict(truncated["params"])["why"].startswith("truncated last line")
    store.close()


def test_index_csv_decides_the_order_and_a_listed_file_must_exist(data, tmp_path):
    export = tmp_path / "export"
    (export / "revisions").mkdir(parents=True)
    (export / "revisions" / "1.json").write_text(lines({"_p": "a", "_t": T, "_n": "One"}))
    (export / "revisions" / "2.json").write_text(lines({"_p": "a", "_t": T, "_n": "Two"}))
    (export / "index.csv").write_text(
        "filename,min_timestamp,max_timestamp,min_utc_date,max_utc_date\n"
        f"revisions/2.json,{T},{T},2023-11-14,2023-11-14\n"
        f"revisions/1.json,{T},{T},2023-11-14,2023-11-14\n"
    )
    source = open_source("km", export)
    assert [f.name for f in source.files] == ["revisions/2.json", "revisions/1.json"]
    (export / "index.csv").write_text((export / "index.csv").read_text() + "revisions/9.json\n")
    result = cli(data, "import", "km", str(export), "--product", "shop")
    assert result.exit_code == 1
    assert result.output.strip().endswith("lists revisions/9.json, which is not in " + str(export))
    assert not (data / "log").exists() or not list((data / "log").glob("i-*"))


def test_a_file_of_another_format_is_refused_before_anything_is_written(data, tmp_path):
    people = tmp_path / "people.csv"
    people.write_text("Identity,Timestamp,Event\nann,1700000000,Signed Up\n")
    result = cli(data, "import", "km", str(people), "--product", "shop")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "is not a KISSmetrics export" in result.output
    assert "tally import csv" in result.output
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("Who,When,What\nann,1700000000,Signed Up\n")
    result = cli(data, "import", "csv", str(bad_header), "--product", "shop")
    assert result.exit_code == 1
    assert "needs Identity, Timestamp, and Event and/or Prop:<name> columns" in result.output
    assert not list((data / "log").glob("i-*")) if (data / "log").exists() else True
    result = cli(data, "import", "json", str(tmp_path / "missing.jsonl"), "--product", "shop")
    assert result.exit_code == 1
    assert "missing.jsonl" in result.output
    result = cli(data, "import", "json", str(people), "--product", "nope")
    assert result.exit_code == 1
    assert "not JSON lines" in result.output


def test_the_csv_format(data, tmp_path):
    people = tmp_path / "people.csv"
    people.write_text(
        "identity,TIMESTAMP,Event,Prop:Plan,Prop:Billing Amount,Colour,Alias\n"
        "ann,1700000000,Signed Up,free,,red,\n"
        "ann,2023-11-14T22:15:00Z,,pro,,,\n"
        "ann,,,,,,ann@mail\n"
        'bob,2023-11-14 22:20:00,Billed,,"9.5",,\n'
        ",1700000000,Orphan,,,,\n"
        "cy,yesterday,Signed Up,,,,\n"
        "cy,1700000000,Signed Up,,,,,extra\n"
    )
    result = cli(data, "import", "csv", str(people), "--product", "shop")
    assert result.exit_code == 0, result.output
    store = apply(data)
    con = store.cursor()
    events = events_view(con, "shop")["items"]
    assert [(e["event"], e["identity"], e["time"], e["properties"]) for e in events] == [
        ("Billed", "bob", "2023-11-14T22:20:00Z", {"Billing Amount": "9.5"}),
        ("Signed Up", "ann", "2023-11-14T22:13:20Z", {"Plan": "free"}),
    ]
    ann = person_view(con, "shop", "ann@mail")
    assert sorted(ann["identities"]) == ["ann", "ann@mail"]
    assert {p["name"]: p["value"] for p in ann["properties"]} == {"Plan": "pro"}
    rejects = rejects_view(con, "shop")
    assert rejects["by_reason"] == {
        "bad_time": 1, "malformed_record": 1, "missing_person": 1, "unknown_column": 1,
    }  # fmt: skip
    by_reason = {r["reason"]: dict(r["params"]) for r in rejects["items"]}
    assert by_reason["unknown_column"]["_src"] == "people.csv:1"
    assert "Colour" in by_reason["unknown_column"]["why"]
    assert by_reason["missing_person"]["_src"] == "people.csv:6"
    assert by_reason["bad_time"]["_src"] == "people.csv:7"
    store.close()


def test_an_import_run_twice_changes_nothing(data, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Seen"} for i in range(50))))
    assert cli(data, "import", "json", str(events), "-p", "shop").exit_code == 0
    again = cli(data, "import", "json", str(events), "-p", "shop")
    assert again.exit_code == 0
    assert "is complete (50 records" in again.output
    assert "nothing to do" in again.output
    # Under another name the records are written again, and absorbed as duplicates.
    other = cli(data, "import", "json", str(events), "-p", "shop", "--name", "again")
    assert other.exit_code == 0
    store = apply(data)
    assert events_view(store.cursor(), "shop", page_size=1000)["total"] == 50
    assert duplicates_absorbed(store) == 50
    listed = json.loads(cli(data, "imports", "--json").output)["imports"]
    assert [(i["name"], i["state"], i["records"]) for i in listed] == [
        ("events", "complete", 50), ("again", "complete", 50),
    ]  # fmt: skip
    store.close()


def seen_events(data: Path, tmp_path: Path, n: int):
    """A JSON-lines file of ``n`` "Seen" events, its source and a fresh import's state."""
    events = tmp_path / "events.jsonl"
    events.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Seen"} for i in range(n))))
    source = open_source("json", events)
    state = ImportState("events", "json", str(events.resolve()), "shop", total=source.total)
    return events, Settings(data_dir=data), source, state


def test_an_interrupted_import_continues_where_it_stopped(data, tmp_path):
    events, settings, source, state = seen_events(data, tmp_path, 100)
    # Stopped after 40 records, in chunks of 10: the checkpoint is after the 40th.
    partial = itertools.islice(source.items(state.position), 40)
    run_import(settings.log_dir, state, KEY, partial, complete=False, chunk_records=10)
    saved = read_state(settings.log_dir, "events")
    assert (saved.state, saved.records, saved.position.line) == ("importing", 40, 40)
    listed = cli(data, "imports").output
    assert "importing" in listed
    assert "40" in listed
    # A crash between a chunk's write and its checkpoint: the checkpoint lags.
    checkpoint = settings.log_dir / "i-events" / CHECKPOINT
    shutil.copy(checkpoint, tmp_path / "lagging.json")
    more = itertools.islice(source.items(saved.position), 10)
    run_import(settings.log_dir, saved, KEY, more, complete=False, chunk_records=10)
    shutil.copy(tmp_path / "lagging.json", checkpoint)

    result = cli(data, "import", "json", str(events), "-p", "shop")
    assert result.exit_code == 0, result.output
    assert read_state(settings.log_dir, "events").records == 100
    store = apply(data)
    seen = events_view(store.cursor(), "shop", page_size=1000)["items"]
    assert sorted(e["identity"] for e in seen) == sorted(f"p{i}" for i in range(100))
    assert duplicates_absorbed(store) == 10  # the chunk written twice, absorbed (SPEC §4)
    store.close()


def test_a_stop_asked_while_the_source_is_slow_ends_the_import_unfinished(data, tmp_path):
    events, settings, source, state = seen_events(data, tmp_path, 30)
    asked = threading.Event()
    released = threading.Event()

    def slow() -> Iterator[Framed]:  # the first chunk, then a source that makes nothing more
        chunks = frame_items(source.items(state.position), KEY, state.position, chunk_records=10)
        yield next(chunks)
        asked.set()  # Ctrl-C while the next chunk is being made
        released.wait(10)
        yield from chunks

    with ReadAhead(slow(), stop=asked.is_set) as chunks:
        ended = write_chunks(settings.log_dir, state, chunks, stop=asked.is_set)
        released.set()
    saved = read_state(settings.log_dir, "events")
    assert (ended.state, saved.state, saved.records) == ("importing", "importing", 10)
    result = cli(data, "import", "json", str(events), "-p", "shop")
    assert result.exit_code == 0, result.output
    assert "Continuing the import events from 10 records" in result.output
    assert read_state(settings.log_dir, "events").records == 30


def test_imports_apply_while_the_server_runs_and_at_its_next_start(server, tmp_path):
    def tally(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tally", *args, "--data-dir", str(server.data_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def seen(event: str) -> int:
        response = httpx.get(
            f"{server.base_url}/api/v1/products/default/events",
            params={"event": event},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        return int(response.json()["total"])

    live = tmp_path / "live.jsonl"
    live.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Live"} for i in range(30))))
    done = tally("import", "json", str(live))
    assert done.returncode == 0, done.stderr
    assert "they apply now" in done.stdout
    assert done.stderr == ""  # no terminal: no progress bar
    wait_until(lambda: seen("Live") == 30, 10, "the import is applied")

    server.stop()
    later = tmp_path / "later.jsonl"
    later.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Later"} for i in range(20))))
    done = tally("import", "json", str(later))
    assert done.returncode == 0, done.stderr
    assert "when `tally serve` next starts" in done.stdout
    server.start()
    wait_until(lambda: seen("Later") == 20, 10, "the import is applied at the start")


@hypothesis.given(
    st.lists(st.tuples(st.text(min_size=1), st.text()), min_size=1, max_size=6).filter(
        lambda pairs: all(not any(0xD800 <= ord(c) <= 0xDFFF for c in n + v) for n, v in pairs)
    )
)
def test_the_importer_encodes_a_query_as_urlencode_does(pairs):
    assert _query(pairs) == urlencode(pairs, quote_via=quote).encode()


def test_a_terminal_gets_a_progress_bar(data, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Seen"} for i in range(10))))
    done = subprocess.run(
        [sys.executable, "-m", "tally", "import", "json", str(events), "-p", "shop",
         "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Importing events" in done.stderr
    assert "10 records" in done.stderr
    assert "Imported 10 records" in done.stdout


def test_an_import_beside_quiet_collectors_gets_whole_batches(data, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Seen"} for i in range(300))))
    assert cli(data, "import", "json", str(events), "-p", "shop").exit_code == 0
    settings = Settings(data_dir=data)
    for stream in ("c0", "c1"):  # collectors with a record each
        writer = SegmentWriter(settings.log_dir / stream)
        writer.write_durable(encode_record(Record("GET", "/e", b"_p=x", b"", T * 10**9)))
        writer.close()
    store = Store(settings.store_path)
    try:
        batch = Processor(settings, store).read_batch(limit=120)
    finally:
        store.close()
    # Not 40 of each: what the quiet streams leave goes to the import.
    assert Counter(e.stream for e in batch) == {"c0": 1, "c1": 1, "i-events": 118}


def test_worker_processes_write_what_one_process_writes(data, tmp_path):
    export = km_export(tmp_path / "export")
    other = tmp_path / "other"
    assert cli(other, "products", "create", "shop", "--key", KEY).exit_code == 0
    one = cli(data, "import", "km", str(export), "-p", "shop", "--jobs", "1")
    two = cli(other, "import", "km", str(export), "-p", "shop", "--jobs", "2")
    assert one.exit_code == 0, one.output
    assert two.output.replace(str(other), "") == one.output.replace(str(data), "")
    views = []
    for data_dir in (data, other):
        store = apply(data_dir)
        con = store.cursor()
        events = [{k: v for k, v in e.items() if k != "received"}
                  for e in events_view(con, "shop")["items"]]  # fmt: skip
        rejects = sorted((r["reason"], r["params"]) for r in rejects_view(con, "shop")["items"])
        views.append((events, rejects))
        store.close()
    assert views[0] == views[1]
    assert len(views[0][1]) == 4


def test_ctrl_c_stops_an_import_that_the_same_command_then_finishes(data, tmp_path):
    big = tmp_path / "big.jsonl"  # over 16 MiB: parsed by worker processes
    line = '{"_p": "p%d", "_t": %d, "_n": "Seen", "Page": "%s"}\n'
    with big.open("w") as f:
        for i in range(150_000):
            f.write(line % (i, T + i, "x" * 80))
    command = [sys.executable, "-m", "tally", "import", "json", str(big), "-p", "shop",
               "--data-dir", str(data)]  # fmt: skip
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = data / "log" / "i-big" / CHECKPOINT
    wait_until(checkpoint.exists, 30, "the first chunk is durable")
    running.send_signal(signal.SIGINT)
    try:
        _, err = running.communicate(timeout=30)
    finally:  # a hang fails this test alone, leaving no process nor pipe behind
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert running.returncode == 130, err
    assert b"run the same command again to continue" in err
    assert b"Traceback" not in err
    stopped = read_state(data / "log", "big")
    assert 0 < stopped.records < 150_000
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"Continuing the import big from {stopped.records:,} records" in again.stderr
    assert read_state(data / "log", "big").records == 150_000
    store = apply(data)
    assert events_view(store.cursor(), "shop")["total"] == 150_000
    store.close()
