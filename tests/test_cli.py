"""The ``tally`` command: products, keys and tokens, also while the server runs."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from serverproc import free_port
from tally.cli import main


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [*args, "--data-dir", str(tmp_path / "data")])

    return invoke


def test_products_create_and_list(run):
    created = run("products", "create", "shop", "--timezone", "Europe/Paris")
    assert created.exit_code == 0, created.output
    key = re.search(r"API key: ([0-9a-f]{40})$", created.output.strip()).group(1)
    listed = run("products", "list", "--json")
    [product] = json.loads(listed.output)
    assert product == {
        "name": "shop",
        "timezone": "Europe/Paris",
        "revenue_property": "Billing Amount",
        "keys": [{"key": key, "revoked": False}],
    }
    table = run("products", "list").output
    assert "shop" in table
    assert "Europe/Paris" in table
    assert key in table


def test_product_with_an_existing_kissmetrics_key(run):
    key = "0123456789abcdef0123456789abcdef01234567"
    assert run("products", "create", "legacy", "--key", key).exit_code == 0
    assert json.loads(run("products", "list", "--json").output)[0]["keys"][0]["key"] == key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("products", "create", "bad name"), "a product name is"),
        (("products", "create", "shop", "--timezone", "Mars/Olympus"), "unknown time zone"),
        (("keys", "add", "nope"), "no product named 'nope'"),
        (("keys", "revoke", "nope"), "no such API key"),
    ],
)
def test_mistakes_are_one_line_and_exit_non_zero(run, args, message):
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: ")
    assert message in result.output
    assert "Traceback" not in result.output


def test_duplicate_product_and_key_are_refused(run):
    assert run("products", "create", "shop", "--key", "k1").exit_code == 0
    again = run("products", "create", "shop")
    assert again.exit_code == 1
    assert "exists already" in again.output
    taken = run("products", "create", "other", "--key", "k1")
    assert taken.exit_code == 1
    assert "belongs to product 'shop'" in taken.output


def test_keys_add_and_revoke(run):
    run("products", "create", "shop")
    added = run("keys", "add", "shop")
    key = added.output.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", key)
    revoked = run("keys", "revoke", key)
    assert revoked.exit_code == 0
    assert "Revoked key of product 'shop'" in revoked.output
    keys = json.loads(run("products", "list", "--json").output)[0]["keys"]
    assert {"key": key, "revoked": True} in keys


def test_cli_changes_take_effect_while_the_server_runs(server):
    data_dir = str(server.data_dir)
    token = subprocess.run(
        [sys.executable, "-m", "tally", "tokens", "create", "--name", "ci", "--data-dir", data_dir],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert token != server.token
    response = httpx.get(
        f"{server.base_url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    created = subprocess.run(
        [sys.executable, "-m", "tally", "products", "create", "second", "--data-dir", data_dir],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "Created product 'second'" in created.stdout


def test_first_start_prints_key_token_and_a_working_curl_line(server):
    assert re.search(r"API key:\s+[0-9a-f]{40}", server.stdout)
    assert server.token.startswith("tally_")
    curl = re.search(r"curl '([^']+)'", server.stdout).group(1)
    assert httpx.get(curl).status_code == 200
    [record] = server.wait_for_records(1)
    assert record.query == curl.split("?", 1)[1].encode()


def test_settings_come_from_the_environment(tmp_path):
    from serverproc import RunningServer, free_port

    port = free_port()
    running = RunningServer(tmp_path / "data", port=port)
    running.env["TALLY_PORT"] = str(port)
    running.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        assert running.stop() == 0


def test_a_second_server_on_the_same_data_dir_or_port_is_refused(server, tmp_path):
    same_dir = subprocess.run(
        [sys.executable, "-m", "tally", "serve", "--data-dir", str(server.data_dir),
         "--port", str(free_port())], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert same_dir.returncode == 1
    assert same_dir.stderr.strip().splitlines()[-1].startswith("error: another tally serve")
    same_port = subprocess.run(
        [sys.executable, "-m", "tally", "serve", "--data-dir", str(tmp_path / "other"),
         "--port", str(server.port)], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert same_port.returncode == 1
    assert "cannot listen on 127.0.0.1:" in same_port.stderr
    assert "Traceback" not in same_dir.stderr + same_port.stderr


def test_a_log_stream_held_by_another_process_stops_serve_with_one_line(tmp_path):
    """E.g. a collector left over from a server killed long ago holds its stream."""
    stream = tmp_path / "data" / "log" / "c0"
    stream.mkdir(parents=True)
    holder = os.open(stream / "LOCK", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = subprocess.run(
            [sys.executable, "-m", "tally", "serve", "--data-dir", str(tmp_path / "data"),
             "--port", str(free_port())], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(holder)
    assert result.returncode == 1
    assert "collector 0 cannot run: " in result.stderr
    assert "is in use by another process" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: a collector process failed to start; see the log above"
    )
    assert "Traceback" not in result.stderr


def test_python_dash_m_tally_works_like_tally():
    result = subprocess.run(
        [sys.executable, "-m", "tally", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("serve", "products", "keys", "tokens"):
        assert command in result.stdout


def _serve_once(data_dir):
    return subprocess.run(
        [sys.executable, "-m", "tally", "serve", "--data-dir", str(data_dir),
         "--port", str(free_port())], capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _newer_log(data_dir):
    (data_dir / "log").mkdir(parents=True)
    (data_dir / "log" / "FORMAT").write_text("3\n")


def _newer_store(data_dir):
    con = duckdb.connect(str(data_dir / "store.duckdb"))
    con.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    con.close()


def _garbage(name):
    def damage(data_dir):
        (data_dir / name).write_bytes(b"\x13" * 8192)

    return damage


BAD_DATA_DIRS = {
    "log from a newer Tally": (_newer_log, "is of format 3, from a newer Tally"),
    "store from a newer Tally": (_newer_store, "is of schema 99, from a newer Tally"),
    "damaged store": (_garbage("store.duckdb"), "move it aside and run `tally rebuild`"),
    "damaged catalog": (_garbage("catalog.sqlite"), "restore it from a backup"),
}


@pytest.mark.parametrize(("make", "said"), BAD_DATA_DIRS.values(), ids=BAD_DATA_DIRS.keys())
def test_a_data_directory_tally_cannot_use_is_one_line_naming_the_file(tmp_path, make, said):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make(data_dir)
    result = _serve_once(data_dir)
    assert result.returncode == 1
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert said in line
    assert str(data_dir) in line
    assert "Traceback" not in result.stderr


def test_a_read_only_data_directory_is_one_line(tmp_path):
    """A read-only file system (a tmpfs remounted read-only: root ignores modes)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a file system")
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting is not permitted here")
    try:
        (mount_point / "data").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        for data_dir in (mount_point / "data", mount_point / "new"):
            result = _serve_once(data_dir)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines() == [
                f"error: cannot write in the data directory {data_dir}: Read-only file system; "
                "Tally needs it writable (its owner, mode 0700)"
            ]
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
