"""Recurring imports: `tally serve --import-dir DIR` (issue 13, point 5)."""

from __future__ import annotations

import gzip
import time

import httpx
from click.testing import CliRunner

from migrating import apply, lines
from serverproc import RunningServer, wait_until
from tally.cli import main
from tally.migrate.watch import ImportDir
from tally.settings import Settings
from tally.views.events import events_view

KEY = "0123456789abcdef0123456789abcdef01234567"
T = 1_700_000_000


def test_files_are_taken_in_order_once_they_stop_changing(tmp_path):
    data, drop = tmp_path / "data", tmp_path / "drop"
    assert CliRunner().invoke(main, ["products", "create", "shop", "--key", KEY,
                                     "--data-dir", str(data)]).exit_code == 0  # fmt: skip
    watcher = ImportDir(Settings(data_dir=data, import_dir=drop, import_product="shop"))
    drop.mkdir()
    (drop / "2.csv").write_text("Identity,Timestamp,Event\nann,1700000000,Second\n")
    (drop / "10.csv").write_text("Identity,Timestamp,Event\nann,1700000000,First\n")
    growing = drop / "3.jsonl"
    growing.write_text(lines({"_p": "bob", "_t": T, "_n": "Third"}))
    (drop / "bad.csv").write_text("Who,When\nann,1\n")
    (drop / "notes.txt").write_text("hello\n")
    assert watcher.look() == []  # a first look takes nothing
    with growing.open("a") as f:  # still being written
        f.write(lines({"_p": "bob", "_t": T + 1, "_n": "Third"}))
    taken = watcher.look()
    day = time.strftime("%Y/%m/%d", time.gmtime())
    completed = drop / "completed_imports" / day
    assert taken == [completed / "10.csv", completed / "2.csv"]  # alphanumeric order
    assert growing.exists()
    failed = drop / "failed_imports" / day
    assert "needs Identity, Timestamp" in (failed / "bad.csv.error").read_text()
    assert "none of .csv" in (failed / "notes.txt.error").read_text()
    assert watcher.look() == [completed / "3.jsonl"]
    assert sorted(p.name for p in drop.iterdir()) == ["completed_imports", "failed_imports"]

    store = apply(data)
    events = events_view(store.cursor(), "shop")["items"]
    assert sorted(e["event"] for e in events) == ["First", "Second", "Third", "Third"]
    store.close()
    # The same name dropped again on another day is another file: imported again,
    # its records absorbed as duplicates.
    (drop / "2.csv").write_text("Identity,Timestamp,Event\nann,1700000000,Second\n")
    watcher.look()
    assert watcher.look() == [completed / "2.2.csv"]


def test_the_server_imports_what_is_dropped_in_its_folder(tmp_path):
    drop = tmp_path / "drop"
    server = RunningServer(tmp_path / "data", extra_args=["--import-dir", str(drop)]).start()
    try:
        (drop / "events.jsonl.gz").write_bytes(
            gzip.compress(
                lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Dropped"} for i in range(12))).encode()
            )
        )

        def applied() -> bool:
            found = httpx.get(f"{server.base_url}/api/v1/products/default/events",
                              params={"event": "Dropped"},
                              headers={"Authorization": f"Bearer {server.token}"})  # fmt: skip
            return found.json()["total"] == 12

        wait_until(applied, 20, "the dropped file is imported and applied")
        moved = list((drop / "completed_imports").rglob("events.jsonl.gz"))
        assert len(moved) == 1
        assert not (drop / "events.jsonl.gz").exists()
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr
    assert "imported events.jsonl.gz into default: 12 records" in server.stderr
