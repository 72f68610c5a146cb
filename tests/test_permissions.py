"""Only the user Tally runs as may read its data (tally.permissions): the data
directory 0700, everything in it 0600, whatever the umask; a data directory
open to others is named in a warning."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serverproc import RunningServer, wait_until


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The server starts with a umask that would let everybody read."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_the_data_directory_and_everything_in_it_are_the_owners_only(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    try:
        params = {"_k": server.api_key, "_p": "ann", "_n": "Private"}
        assert httpx.get(server.base_url + "/e", params=params).status_code == 200
        wait_until(lambda: server.status()["store"]["events"] == 1, 10, "the event is applied")  # type: ignore[index]
        found = {
            p: mode(p)
            for p in server.data_dir.rglob("*")
            if p.name != ".started-once"  # the test harness's own mark (serverproc.py)
        }
        assert mode(server.data_dir) == 0o700
        for name in ("store.duckdb", "catalog.sqlite", "tally.log", "log/c0/DURABLE"):
            assert found[server.data_dir / name] == 0o600, name
        assert found[server.data_dir / "run" / "core.sock"] == 0o600
        assert any(p.suffix == ".seg" for p in found)
        for path, bits in found.items():
            assert bits == (0o700 if path.is_dir() else 0o600), f"{path} is {bits:o}"
    finally:
        assert server.stop() == 0


def test_a_data_directory_open_to_others_is_named_in_a_warning(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    server = RunningServer(data_dir).start()
    assert server.stop() == 0
    assert "is open to other users (mode 755)" in (data_dir / "tally.log").read_text()
    assert mode(data_dir) == 0o755  # left as its owner made it
