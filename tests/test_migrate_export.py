"""Exports (issue 13, point 3): events and people as CSV, JSON lines and
Parquet, filtered, to stdout or a file; KISSmetrics' layout in files of
bounded size; beside a running server, through it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from migrating import apply, lines
from serverproc import wait_until
from tally.cli import main
from tally.migrate.kmexport import export_km
from tally.migrate.sources import km_files
from tally.settings import Settings
from tally.store import Store

KEY = "0123456789abcdef0123456789abcdef01234567"
T = 1_700_000_000


def cli(data_dir: Path, *args: str):
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A product with two people (one of them two identities), events and sets."""
    data_dir = tmp_path / "data"
    assert cli(data_dir, "products", "create", "shop", "--key", KEY).exit_code == 0
    history = tmp_path / "history.jsonl"
    history.write_text(
        lines(
            {"_p": "ann", "_t": T, "_n": "Signed Up", "Plan": "free"},
            {"_p": "ann", "_t": T + 60, "_n": "Billed", "Billing Amount": "10", "plan": "pro"},
            {"_p": "ann@mail", "_t": T + 120, "_p2": "ann"},
            {"_p": "bob", "_t": T + 86400, "_n": "signed up", "Note": 'a "quoted", comma'},
            {"_p": "bob", "_t": T + 86460, "Plan": "team"},
        )
    )
    assert cli(data_dir, "import", "json", str(history), "-p", "shop").exit_code == 0
    apply(data_dir).close()
    return data_dir


def test_events_in_every_format_and_filtered(data, tmp_path):
    out = cli(data, "export", "events", "-p", "shop")
    assert out.exit_code == 0, out.output
    rows = list(csv.reader(io.StringIO(out.output)))
    assert rows == [
        ["Timestamp", "Event", "Identity", "Person", "Prop:Billing Amount", "Prop:Note",
         "Prop:Plan"],
        ["2023-11-14T22:13:20Z", "Signed Up", "ann", "ann", "", "", "free"],
        ["2023-11-14T22:14:20Z", "Billed", "ann", "ann", "10", "", "pro"],
        ["2023-11-15T22:13:20Z", "Signed Up", "bob", "bob", "", 'a "quoted", comma', ""],
    ]  # fmt: skip
    jsonl = cli(data, "export", "events", "--format", "jsonl", "--event", "SIGNED UP",
                "--from", "2023-11-15", "-p", "shop").output  # fmt: skip
    assert [json.loads(line) for line in jsonl.splitlines()] == [
        {"time": "2023-11-15T22:13:20Z", "event": "Signed Up", "person": "bob",
         "identity": "bob", "properties": {"Note": 'a "quoted", comma'}, "metadata": {}},
    ]  # fmt: skip
    target = tmp_path / "events.parquet"
    done = cli(data, "export", "events", "--format", "parquet", "--to", str(T + 3600),
               "-o", str(target), "-p", "shop")  # fmt: skip
    assert done.exit_code == 0, done.output
    table = pq.read_table(target)
    assert table.column("event").to_pylist() == ["Signed Up", "Billed"]
    assert table.column("properties").to_pylist()[1] == [("Billing Amount", "10"), ("Plan", "pro")]
    assert not list(tmp_path.glob("*.partial"))


def test_people_with_their_identities_and_current_properties(data):
    people = [json.loads(x) for x in cli(data, "export", "people", "--format", "jsonl",
                                         "-p", "shop").output.splitlines()]  # fmt: skip
    assert people == [
        {"person": "ann", "identities": ["ann", "ann@mail"],
         "properties": {"Billing Amount": "10", "Plan": "pro"}},
        {"person": "bob", "identities": ["bob"],
         "properties": {"Note": 'a "quoted", comma', "Plan": "team"}},
    ]  # fmt: skip
    rows = list(csv.reader(io.StringIO(cli(data, "export", "people", "-p", "shop").output)))
    assert rows[0] == ["Person", "Identities", "Prop:Billing Amount", "Prop:Note", "Prop:Plan"]
    assert rows[1] == ["ann", '["ann","ann@mail"]', "10", "", "pro"]


def test_an_events_csv_export_is_a_csv_import(data, tmp_path):
    exported = tmp_path / "events.csv"
    assert cli(data, "export", "events", "-o", str(exported), "-p", "shop").exit_code == 0
    other = tmp_path / "other"
    assert cli(other, "products", "create", "shop").exit_code == 0
    done = cli(other, "import", "csv", str(exported), "-p", "shop")
    assert done.exit_code == 0, done.output
    assert "not records" not in done.output  # no reject: Person is known
    a = cli(data, "export", "events", "--format", "jsonl", "-p", "shop").output
    apply(other).close()
    b = cli(other, "export", "events", "--format", "jsonl", "-p", "shop").output
    # The same events; bob's Plan came from a /s, which an events export leaves out.
    strip = [{k: v for k, v in json.loads(x).items() if k != "person"} for x in a.splitlines()]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "person"}
                     for x in b.splitlines()]  # fmt: skip


def test_km_layout_in_files_of_bounded_size(data, tmp_path):
    settings = Settings(data_dir=data)
    store = Store(settings.store_path, read_only=True)
    try:
        done = export_km(store.con, "shop", tmp_path / "km", file_bytes=100)
    finally:
        store.close()
    assert done.records == 5
    assert len(done.files) == 3  # a new file once one passes 100 bytes
    for item in done.files:
        assert (tmp_path / "km" / item.name).stat().st_size < 100 + 200
    index = list(csv.reader(io.StringIO((tmp_path / "km" / "index.csv").read_text())))
    assert index[0] == ["filename", "min_timestamp", "max_timestamp", "min_utc_date",
                        "max_utc_date"]  # fmt: skip
    assert [row[0] for row in index[1:]] == [f"revisions/{n}.json" for n in (1, 2, 3)]
    assert index[1][1:4] == [str(T), str(T + 60), "2023-11-14 22:13:20"]
    assert [f.name for f in km_files(tmp_path / "km")] == [row[0] for row in index[1:]]
    status = list(csv.reader(io.StringIO((tmp_path / "km" / "status.csv").read_text())))
    assert status[1][:2] == ["3", "3"]
    again = cli(data, "export", "km", str(tmp_path / "km"), "-p", "shop")
    assert again.exit_code == 1
    assert "is not an empty folder" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("export", "events", "-p", "shop", "--from", "soon"),
            "from is not an ISO date or timestamp",
        ),
        (("export", "people", "-p", "nope"), "no product named 'nope'"),
        (("export", "events", "--format", "xml"), "'xml' is not one of"),
    ],
)
def test_bad_requests_are_one_line_errors(data, args, message):
    result = cli(data, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_exports_beside_a_running_server_go_through_it(server, tmp_path):
    def tally(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "tally", *args, "--data-dir", str(server.data_dir)],
            capture_output=True, timeout=60,
        )  # fmt: skip

    history = tmp_path / "history.jsonl"
    history.write_text(lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Seen"} for i in range(25))))
    assert tally("import", "json", str(history)).returncode == 0

    def exported() -> bytes:
        done = tally("export", "events", "--format", "jsonl")
        assert done.returncode == 0, done.stderr
        return done.stdout if done.stdout.count(b"\n") == 25 else b""

    assert (
        json.loads(wait_until(exported, 10, "the import is applied").splitlines()[0])["event"]
        == "Seen"
    )
    parquet = tally("export", "events", "--format", "parquet")
    assert pq.read_table(io.BytesIO(parquet.stdout)).num_rows == 25
    done = tally("export", "km", str(tmp_path / "km"))
    assert done.returncode == 0, done.stderr
    assert b"Exported 25 records" in done.stdout
    assert len((tmp_path / "km" / "revisions" / "1.json").read_text().splitlines()) == 25
    refused = tally("export", "events", "--format", "jsonl", "--from", "never")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "error: from is not an ISO date or timestamp: 'never'"
