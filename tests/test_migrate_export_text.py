"""Exports made by DuckDB's SQL (tally.migrate.writers, tally.migrate.kmexport)
write, byte for byte, what the per-row Python that made them before writes:
Python's csv module over the rows, orjson over each record's dict, a new
revisions file once one reaches its size; on values made to find where the
two could part, and with the store read in many windows."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from click.testing import CliRunner

from migrating import apply, lines
from tally.cli import main
from tally.migrate import kmexport
from tally.migrate.exports import export_bytes
from tally.migrate.kmexport import _RECORDS, _line, export_km
from tally.migrate.tables import EVERY_EVENT, event_batches, event_property_names
from tally.migrate.writers import column_text
from tally.settings import Settings
from tally.store import Store
from tally.views.events import property_names

KEY = "0123456789abcdef0123456789abcdef01234567"
T = 1_700_000_000
#: Text where CSV quoting and JSON escaping can go wrong.
AWKWARD = ["a,b", 'say "hi"', "two\nlines", "cr\rhere", "", " spaced ", "é ü 漢字 🎉",
           "tab\there", "\x0bvt", "\x1fus\x1e", "\x7fdel", "back\\slash", "\\u001B",
           "slash/", "\u2028", "=1+2", "null"]  # fmt: skip


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    runner = CliRunner()
    created = runner.invoke(main, ["products", "create", "shop", "--key", KEY,
                                   "--data-dir", str(data_dir)])  # fmt: skip
    assert created.exit_code == 0, created.output
    records: list[object] = []
    for i, text in enumerate(AWKWARD):
        person = f"p{i % 5}{text}"
        records.append({"_p": person, "_t": T + i, "_n": f"Event {text}", "Note": text,
                        f"Key {i % 3}": text, "_c": text or "x"})  # fmt: skip
        records.append({"_p": person, "_t": T + i, "Plan": text or "none", "Other": "x"})
        if i % 4 == 0:
            records.append({"_p": person, "_t": T + i, "_p2": f"alias {text}"})
    history = tmp_path / "history.jsonl"
    history.write_text(lines(*records))
    done = runner.invoke(main, ["import", "json", str(history), "-p", "shop",
                                "--data-dir", str(data_dir)])  # fmt: skip
    assert done.exit_code == 0, done.output
    apply(data_dir).close()
    return data_dir


def store_of(data_dir: Path) -> Store:
    return Store(Settings(data_dir=data_dir).store_path, read_only=True)


def test_events_csv_is_what_pythons_csv_module_writes(data):
    store = store_of(data)
    try:
        made = b"".join(export_bytes(store.con, "shop", "events", "csv"))
        names = event_property_names(store.con, "shop", EVERY_EVENT)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["Timestamp", "Event", "Identity", "Person",
                         *(f"Prop:{n}" for n in names)])  # fmt: skip
        for batch in event_batches(store.con, "shop"):
            for row in batch.to_pylist():
                props = dict(row["properties"])
                writer.writerow([row["time"].strftime("%Y-%m-%dT%H:%M:%SZ"), row["event"],
                                 row["identity"], row["person"],
                                 *(props.get(n) for n in names)])  # fmt: skip
    finally:
        store.close()
    assert made == text.getvalue().encode()
    assert b'"say ""hi"""' in made  # quoted: the test tests what it means to


def test_events_json_lines_hold_every_value(data):
    store = store_of(data)
    try:
        made = b"".join(export_bytes(store.con, "shop", "events", "jsonl"))
        rows = [r for b in event_batches(store.con, "shop") for r in b.to_pylist()]
    finally:
        store.close()
    found = [json.loads(line) for line in made.splitlines()]
    assert [list(f) for f in found] == [
        ["time", "event", "person", "identity", "properties", "metadata"]
    ] * len(rows)
    assert [
        (f["time"], f["event"], f["person"], f["identity"], list(f["properties"].items()),
         list(f["metadata"].items()))
        for f in found
    ] == [
        (r["time"].strftime("%Y-%m-%dT%H:%M:%SZ"), r["event"], r["person"], r["identity"],
         r["properties"], r["metadata"])
        for r in rows
    ]  # fmt: skip


def reference_km(store: Store, dest: Path, file_bytes: int) -> None:
    """What export_km wrote before: orjson over each record's dict, a row at
    a time, a new file before a row once the current one is file_bytes long."""
    names = property_names(store.con, "shop")
    rows = (store.con.sql(_RECORDS, params={"product": "shop", "lo": -(2**63),
                                            "hi": 2**63 - 1}).fetchall())  # fmt: skip
    columns = ["kind", "identity", "other", "name", "time", "keys", "vals", "mkeys", "mvals"]
    (dest / "revisions").mkdir(parents=True)
    files: list[list[object]] = []
    out, size = None, file_bytes
    for values in rows:
        row = dict(zip(columns, values, strict=True))
        data = orjson.dumps(_line(row, names)) + b"\n"
        if size >= file_bytes:
            if out is not None:
                out.close()
            files.append([f"revisions/{len(files) + 1}.json", None, None])
            out = open(dest / files[-1][0], "wb")  # noqa: SIM115
            size = 0
        assert out is not None
        out.write(data)
        size += len(data)
        t = row["time"]
        files[-1][1] = t if files[-1][1] is None else min(files[-1][1], t)
        files[-1][2] = t if files[-1][2] is None else max(files[-1][2], t)
    if out is not None:
        out.close()

    def utc(t: int) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")

    index = "".join(f"{n},{lo},{hi},{utc(lo)},{utc(hi)}\n" for n, lo, hi in files)
    (dest / "index.csv").write_text(
        "filename,min_timestamp,max_timestamp,min_utc_date,max_utc_date\n" + index
    )


@pytest.mark.parametrize("window_rows", [1_000_000, 7])
@pytest.mark.parametrize("file_bytes", [64 * 1024 * 1024, 1, 300, 1000])
def test_km_files_are_what_a_row_at_a_time_wrote(data, tmp_path, monkeypatch, window_rows,
                                                 file_bytes):  # fmt: skip
    monkeypatch.setattr(kmexport, "WINDOW_ROWS", window_rows)  # many windows: the same
    store = store_of(data)
    try:
        done = export_km(store.con, "shop", tmp_path / "km", file_bytes=file_bytes)
        reference_km(store, tmp_path / "ref", file_bytes)
    finally:
        store.close()
    made = sorted(p.relative_to(tmp_path / "km") for p in (tmp_path / "km").rglob("*.json"))
    wanted = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*.json"))
    assert made == wanted
    assert len(done.files) == len(made)
    for name in made:
        assert (tmp_path / "km" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    index = (tmp_path / "km" / "index.csv").read_text()
    assert index == (tmp_path / "ref" / "index.csv").read_text()


def test_km_lines_with_any_text_are_what_orjson_writes():
    """The store keeps no control characters (the processor drops them), but
    the lines' SQL would write six of them otherwise than orjson: straight
    from a batch."""
    columns = ["kind", "identity", "other", "name", "time", "keys", "vals", "mkeys", "mvals"]
    rows = []
    for i, text in enumerate([*AWKWARD, "\x00\x01\x0e\x0f\x1a", "\\\x1b", "ok"]):
        rows.append(("e", f"p{text}", None, f"E{text}", T + i, ["plan", f"k{text}"],
                     [text, "v"], ["_c", "_p2"], [text, "dropped"]))  # fmt: skip
        rows.append(("s", text, None, None, T, [text], ["x"], [], []))
        rows.append(("a", text, f"b{text}", None, T, [], [], [], []))
    batch = pa.RecordBatch.from_pylist([dict(zip(columns, r, strict=True)) for r in rows])
    names = {"plan": "Plan"}
    lines_ = kmexport._Lines(names)
    try:
        text, lengths = lines_.of(batch)
    finally:
        lines_.close()
    wanted = [orjson.dumps(_line(row, names)) + b"\n" for row in batch.to_pylist()]
    assert text == b"".join(wanted)
    assert lengths.to_pylist() == [len(w) for w in wanted]
    assert b"\\u001b" in text


def test_a_column_of_text_is_its_strings_end_to_end_whatever_its_layout():
    column = pa.array(["ab\n", "c\n", None, "déf\n"])
    assert column_text(column) == "ab\nc\ndéf\n".encode()
    assert column_text(column.slice(1, 2)) == b"c\n"  # a slice: its own offsets only
    assert column_text(column.slice(3)) == "déf\n".encode()
    assert column_text(pa.array(["x", "yz"], pa.large_string()).slice(1)) == b"yz"
    assert column_text(pa.chunked_array([["a"], ["b", "c"]])) == b"abc"
    assert column_text(pa.array([], pa.string())) == b""
