"""The processor and the store, end to end (issue 3; SPEC §4, §5, §7).

- ``tally status`` says that the pipeline keeps up, how many duplicates were
  absorbed and how many records were rejected, by reason;
- rejected records are listed with their reason and original parameters, and
  ``tally rejects replay`` applies them once the missing API key exists;
- ``tally rebuild`` recomputes from the log exactly the store that the live
  pipeline built (with a progress bar);
- a SIGKILL at any instant, followed by a restart, leaves the store exactly as
  if the crash had not happened: no lost and no doubled record.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlencode

import duckdb
import httpx
from click.testing import CliRunner

from journeys import content
from serverproc import RunningServer, wait_until
from tally.cli import main
from tally.log import LogReader
from tally.wire import GIF

#: Kill moments are drawn from this seed; set TALLY_PIPELINE_SEED to replay a failure.
SEED = int(os.environ.get("TALLY_PIPELINE_SEED", str(random.randrange(1 << 30))))
CONNECTIONS = 12
KILLS = 3
BAD_KEY = "b" * 40


# -- helpers -------------------------------------------------------------------------------


def caught_up(server: RunningServer) -> dict[str, Any] | None:
    status: dict[str, Any] = server.status()  # type: ignore[assignment]
    return status if status["pipeline"]["lag_records"] == 0 else None


def dump_store(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of a (closed) store, as sorted rows of plain values, and its indexes."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return tuple(sorted((k, plain(v)) for k, v in value.items()))
        if isinstance(value, list):
            return tuple(plain(v) for v in value)
        return value

    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        dump = {}
        # A stored person as the person it stands for (journeys.content): which
        # of `ph` and `moved` holds it depends on how the records were batched.
        for table in sorted(set(tables) - {"moved"}):
            rows = con.execute(content(table)).fetchall()
            dump[table] = sorted((tuple(plain(v) for v in row) for row in rows), key=repr)
        # The indexes too (a rebuild drops them while it writes, then builds them).
        dump["(indexes)"] = con.execute(
            "SELECT index_name, table_name, expressions FROM duckdb_indexes() ORDER BY ALL"
        ).fetchall()
        return dump
    finally:
        con.close()


def assert_same_store(live: dict[str, list[Any]], rebuilt: dict[str, list[Any]]) -> None:
    assert live.keys() == rebuilt.keys()
    problems = []
    for table, rows in live.items():
        if rows != rebuilt[table]:
            a, b = Counter(rows), Counter(rebuilt[table])
            problems.append(
                f"{table}: {len(rows)} live rows, {len(rebuilt[table])} rebuilt; "
                f"only live: {list((a - b).elements())[:3]}; "
                f"only rebuilt: {list((b - a).elements())[:3]}"
            )
    assert not problems, "the rebuilt store differs from the live one:\n" + "\n".join(problems)


def rebuild(data_dir: Path, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tally", "rebuild", "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout + result.stderr


def cli(data_dir: Path, *args: str) -> Any:
    """`tally ARGS --data-dir DATA_DIR` in this process; its result."""
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


def track(client: httpx.Client, server: RunningServer, path: str, **params: str) -> None:
    response = client.get(server.base_url + path, params={"_k": server.api_key, **params})
    assert response.status_code == 200
    assert response.content == GIF


def api(server: RunningServer, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method,
        server.base_url + path,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
        **kwargs,
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- status: keeping up, duplicates, rejects by reason ---------------------------------------


def test_status_shows_that_the_pipeline_keeps_up(server: RunningServer) -> None:
    """A burst of mixed traffic is applied within seconds; status counts every
    duplicate once and every reject under its reason; log and applied positions meet."""
    sent = Counter[str]()
    with httpx.Client(timeout=10) as client:

        def send(path: str, what: str, **params: str) -> None:
            track(client, server, path, **params)
            sent[what] += 1

        for i in range(150):
            send("/e", "event", _p=f"user-{i % 15}", _n="Viewed Page", page=str(i))
        for i in range(30):
            send("/s", "set", _p=f"user-{i % 15}", Plan=f"plan-{i}", _t=str(1_700_000_000 + i))
        for i in range(5):
            send("/a", "alias", _p=f"anon-{i}", _n=f"user-{i}")
        for i in range(12):  # exact retries (same _t): absorbed
            params = {"_p": "retry", "_n": "Bought", "_t": str(1_700_000_000 + i), "n": str(i)}
            send("/e", "event", **params)
            send("/e", "duplicate", **params)
        for i in range(7):
            response = client.get(
                server.base_url + "/e", params={"_k": BAD_KEY, "_p": f"x{i}", "_n": "E"}
            )
            assert response.status_code == 200  # SPEC §1: still the GIF
            sent["unknown_key"] += 1
        for i in range(4):
            send("/e", "blocked_identity", _p=["null", "undefined", "NaN", "guest"][i], _n="E")
        for i in range(3):
            send("/e", "bad_time", _p="late", _n="E", _d="1", _t=str(1_000_000 + i))
        for i in range(2):
            send("/e", "missing_person", _n=f"E{i}")
        send("/e", "name_too_long", _p="long", _n="x" * 300)
        send("/e", "event", _p="dropper", _n="E", big="v" * 9000, small="ok")
        done = time.monotonic()

    total = sum(sent.values())

    def all_applied() -> dict[str, Any] | None:
        # The processor's own counters follow its commit by a moment.
        status = caught_up(server)
        return status if status and status["pipeline"]["processor"]["records"] == total else None

    status = wait_until(all_applied, 10, "the pipeline has caught up")
    assert time.monotonic() - done < 10
    assert status["log"]["records"] == total
    pipeline = status["pipeline"]
    assert pipeline["lag_seconds"] == 0.0
    assert pipeline["processor"]["error"] is None
    assert {s["name"] for s in pipeline["streams"]} == {"c0", "c1"}
    for stream in pipeline["streams"]:
        assert stream["applied_position"] == stream["log_position"]
        assert stream["lag_records"] == 0
    assert sum(s["log_position"] for s in pipeline["streams"]) > 0
    store = status["store"]
    assert store["events"] == sent["event"]
    assert store["duplicates"] == sent["duplicate"] == 12
    assert store["rejects"] == {
        "bad_time": 3,
        "blocked_identity": 4,
        "missing_person": 2,
        "name_too_long": 1,
        "unknown_key": 7,
    }
    assert store["rejected"] == 17
    assert store["properties_dropped"] == 1
    assert store["aliases"] == 5
    # user-0..14, retry, dropper; anon-0..4 are merged into user-0..4.
    assert store["people"] == 17
    # page on 150 events, 30 Plan, 12 n on the kept retries, small on the dropper.
    assert store["property_values"] == 150 + 30 + 12 + 1

    # The CLI asks the running server and says the same in words.
    result = cli(server.data_dir, "status")
    assert result.exit_code == 0, result.output
    assert "Lag:    0 records" in result.output
    assert "12 duplicates absorbed, 17 rejected, 1 properties dropped" in result.output
    for reason in ("bad_time", "blocked_identity", "missing_person", "unknown_key"):
        assert reason in result.output
    as_json = json.loads(cli(server.data_dir, "status", "--json").stdout)
    assert as_json["store"] == store


# -- rejects and replay -------------------------------------------------------------------------


def test_rejects_replay_after_the_missing_key_was_added(server: RunningServer) -> None:
    """Records sent with a key nobody had added yet are listed with their original
    parameters; once the key exists, `tally rejects replay` applies them."""
    late_key = "c0ffee" + "0" * 34
    with httpx.Client(timeout=10) as client:
        calls = [
            {"_k": late_key, "_p": "erin", "_n": "Signed Up", "_t": "1700000000", "Plan": "pro"},
            {"_k": late_key, "_p": "erin", "Company": "Acme"},
            {"_k": late_key, "_p": "anon-erin", "_n": "erin"},
        ]
        paths = ["/e", "/s", "/a"]
        for path, params in zip(paths, calls, strict=True):
            assert client.get(server.base_url + path, params=params).status_code == 200
        # A retried copy is a duplicate, not listed twice (SPEC §11), also when the
        # retry comes in a later second (its _t is its de-duplication time, SPEC §4).
        second = int(time.time())
        wait_until(lambda: int(time.time()) > second, 2, "the next second")
        assert client.get(server.base_url + "/e", params=calls[0]).status_code == 200
        track(client, server, "/e", _p="anon-erin", _n="Viewed Pricing")

    status = wait_until(lambda: caught_up(server), 10, "the pipeline has caught up")
    assert status["store"]["rejects"] == {"unknown_key": 3}
    assert status["store"]["duplicates"] == 1
    listed = api(server, "GET", "/api/v1/products/default/rejects")
    assert listed["total"] == 3
    assert listed["by_reason"] == {"unknown_key": 3}
    assert sorted((r["path"], r["params"]) for r in listed["items"]) == sorted(
        (path, [list(p) for p in params.items()]) for path, params in zip(paths, calls, strict=True)
    )
    assert all(r["reason"] == "unknown_key" and r["product"] is None for r in listed["items"])
    assert api(server, "GET", "/api/v1/products/default/people/anon-erin")["identities"] == [
        "anon-erin"
    ]

    added = cli(server.data_dir, "keys", "add", "default", "--key", late_key)
    assert added.exit_code == 0, added.output
    replayed = cli(server.data_dir, "rejects", "replay", "--json")
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.stdout) == {
        "replayed": 3,
        "applied": 3,
        "duplicates": 0,
        "rejected": {},
    }

    # Replayed rejects leave the list; what they carried is Erin's now.
    assert api(server, "GET", "/api/v1/products/default/rejects")["total"] == 0
    erin = api(server, "GET", "/api/v1/products/default/people/erin")
    assert erin["identities"] == ["anon-erin", "erin"]
    assert [e["event"] for e in erin["events"]["items"]] == ["Viewed Pricing", "Signed Up"]
    assert {p["name"]: p["value"] for p in erin["properties"]} == {
        "Company": "Acme",
        "Plan": "pro",
    }
    store = api(server, "GET", "/api/v1/status")["store"]
    assert store["rejects"] == {}
    assert store["duplicates"] == 1
    assert store["events"] == 2
    # Replaying again finds nothing; the key now works for new records.
    assert api(server, "POST", "/api/v1/products/default/rejects/replay")["replayed"] == 0


# -- rebuild -------------------------------------------------------------------------------------


def test_rebuild_recomputes_the_live_store(tmp_path: Path) -> None:
    """Dedup, property drops, an alias over the cap, a revocation and a replayed reject:
    `tally rebuild` computes from the log exactly the store the live pipeline built."""
    cap = ("--max-identities-per-person", "3")
    server = RunningServer(tmp_path / "data", extra_args=cap).start()
    late_key = "f" * 40
    try:
        with httpx.Client(timeout=10) as client:
            track(client, server, "/e", _p="anon-1", _n="Viewed Page", _t="1700000000", _d="1")
            track(client, server, "/s", _p="anon-1", Plan="free", _t="1700000010", _d="1")
            track(client, server, "/a", _p="anon-1", _n="bob@example.com")
            for _ in range(2):
                track(client, server, "/e", _p="bob@example.com", _n="signed up", _t="1700000060")
            track(client, server, "/e", _p="bob@example.com", _n="Signed Up", Plan="pro")
            track(client, server, "/a", _p="bob@example.com", _n="bob-phone")
            track(client, server, "/a", _p="bob-phone", _n="bob-tablet")  # over the cap of 3
            track(client, server, "/a", _p="x", _n="y")
            track(client, server, "/s", _p="x", big="v" * 9000)
            track(client, server, "/e", _p="null", _n="Blocked")
            response = client.get(server.base_url + "/e", params={"_k": late_key, "_p": "z"})
            assert response.status_code == 200
            response = client.get(server.base_url + "/e", params={"_k": BAD_KEY, "_p": "w"})
            assert response.status_code == 200
        revoked = cli(server.data_dir, "alias", "revoke", "default", "x", "y")
        assert revoked.exit_code == 0, revoked.output

        def settled() -> bool:
            x = httpx.get(
                server.base_url + "/api/v1/products/default/people/x",
                headers={"Authorization": f"Bearer {server.token}"},
            )
            return (
                x.status_code == 200 and x.json()["identities"] == ["x"] and bool(caught_up(server))
            )

        wait_until(settled, 10, "the revocation is applied")
        assert api(server, "GET", "/api/v1/status")["store"]["rejects"]["unknown_key"] == 2
        assert cli(server.data_dir, "keys", "add", "default", "--key", late_key).exit_code == 0
        replayed = api(server, "POST", "/api/v1/products/default/rejects/replay")
        assert replayed["applied"] == 1  # z; the bad key stays rejected
        store = api(server, "GET", "/api/v1/status")["store"]
        assert store["rejects"] == {"alias_cap": 1, "blocked_identity": 1, "unknown_key": 1}
        assert store["duplicates"] == 1
        assert store["properties_dropped"] == 1

        # The server owns the data directory: no rebuild under it.
        busy = cli(server.data_dir, "rebuild")
        assert busy.exit_code == 1
        assert "another tally serve is using" in busy.output
    finally:
        assert server.stop() == 0, server.stderr
    assert "Traceback" not in server.stderr

    store_path = server.data_dir / "store.duckdb"
    person_before = cli(server.data_dir, "person", "bob@example.com", "--json").stdout
    live = dump_store(store_path)
    output = rebuild(server.data_dir, *cap)
    assert "Rebuilding" not in output  # no progress bar when the output is not a terminal
    assert "from 14 log records" in output
    assert_same_store(live, dump_store(store_path))
    assert cli(server.data_dir, "person", "bob@example.com", "--json").stdout == person_before

    # A rebuild with other settings re-decides (the cap no longer bites), and a
    # second rebuild with the first settings gives the first store back.
    rebuild(server.data_dir)
    wider = json.loads(cli(server.data_dir, "person", "bob@example.com", "--json").stdout)
    assert "bob-tablet" in wider["identities"]
    rebuild(server.data_dir, *cap)
    assert_same_store(live, dump_store(store_path))


# -- SIGKILL during a load ------------------------------------------------------------------------


class IncompleteResponse(Exception):
    pass


def read_response(stream: BinaryIO) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response; raises if it is cut short."""
    status_line = stream.readline()
    if not status_line.endswith(b"\r\n"):
        raise IncompleteResponse(status_line)
    length = 0
    while (line := stream.readline()) != b"\r\n":
        if not line.endswith(b"\r\n"):
            raise IncompleteResponse(line)
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = stream.read(length)
    if len(body) != length:
        raise IncompleteResponse(body)
    return int(status_line.split()[1]), body


class Load:
    """Keep-alive connections sending a mix of /e, /s, /a and bad-key calls, each with
    a unique ``seq`` and a fixed ``_t`` (so that resending it is an exact retry); one
    call in ten is sent twice at once, as a client retry would."""

    def __init__(self, server: RunningServer, cycle: int) -> None:
        self.server = server
        self.cycle = cycle
        self.stop = threading.Event()
        self.requests: dict[str, bytes] = {}  # seq -> the exact bytes sent
        self.kinds: dict[str, str] = {}
        self.acked: list[str] = []
        self.other: list[int] = []
        self.threads = [
            threading.Thread(target=self._connection, args=(n,), daemon=True)
            for n in range(CONNECTIONS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 15) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "load threads did not finish"

    def request(self, n: int, i: int) -> tuple[str, str, bytes]:
        seq = f"{self.cycle}.{n}.{i}"
        kind = ("event", "event", "event", "set", "alias", "bad")[i % 6]
        key, path = self.server.api_key, "/e"
        params = {"_p": f"user-{n}", "_n": "Load Test", "seq": seq}
        if kind == "set":
            path, params = "/s", {"_p": f"user-{n}", "Plan": f"p{i % 4}", "seq": seq}
        elif kind == "alias":  # people of a few identities each
            path, params = "/a", {"_p": f"anon-{seq}", "_n": f"user-{n}-{i // 60}", "seq": seq}
        elif kind == "bad":
            key, params["_n"] = BAD_KEY, "Bad Key"
        query = urlencode({"_k": key, "_t": str(int(time.time())), **params}).encode()
        head = f"Host: {self.server.host}:{self.server.port}\r\n"
        if i % 4 == 1:
            raw = (
                f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/x-www-form-urlencoded"
                f"\r\nContent-Length: {len(query)}\r\n\r\n"
            ).encode() + query
        else:
            raw = f"GET {path}?".encode() + query + f" HTTP/1.1\r\n{head}\r\n".encode()
        return seq, kind, raw

    def _connection(self, n: int) -> None:
        try:
            sock = socket.create_connection((self.server.host, self.server.port), timeout=10)
        except OSError:
            return
        with sock, sock.makefile("rb") as stream:
            i = 0
            while not self.stop.is_set():
                seq, kind, raw = self.request(n, i)
                self.requests[seq] = raw
                self.kinds[seq] = kind
                for _ in range(2 if i % 10 == 7 else 1):
                    try:
                        sock.sendall(raw)
                        status, body = read_response(stream)
                    except (OSError, IncompleteResponse):
                        return  # the server died under this request
                    if status == 200 and body == GIF:
                        self.acked.append(seq)
                    else:
                        self.other.append(status)
                i += 1


def resend(server: RunningServer, requests: list[bytes]) -> None:
    """Send ``requests`` again, byte for byte, on one keep-alive connection: each 200 GIF."""
    with (
        socket.create_connection((server.host, server.port), timeout=10) as sock,
        sock.makefile("rb") as stream,
    ):
        for raw in requests:
            sock.sendall(raw)
            assert read_response(stream) == (200, GIF)


def seq_of(query: bytes, body: bytes) -> str | None:
    values = parse_qs(query + b"&" + body).get(b"seq")
    return values[-1].decode() if values else None


def test_sigkill_during_a_load_leaves_the_store_exactly_once(server: RunningServer) -> None:
    """Kill every process of the server 3 times at random moments under load, restart,
    resend what was not acknowledged (a client's retry); after the last catch-up every
    record is in the store exactly once, and a rebuild from the log gives the same store."""
    began = time.monotonic()
    rng = random.Random(SEED)
    context = f"TALLY_PIPELINE_SEED={SEED}"
    requests: dict[str, bytes] = {}
    kinds: dict[str, str] = {}
    behind: list[bool] = []  # whether each kill left the processor with work to do

    for cycle in range(KILLS):
        load = Load(server, cycle)
        load.start()
        kill_after = rng.uniform(0.4, 1.6)
        time.sleep(kill_after)
        server.kill()
        load.join()
        where = f"{context}, cycle {cycle}, killed after {kill_after:.2f} s"
        assert load.acked, where
        assert not load.other, where
        requests.update(load.requests)
        kinds.update(load.kinds)

        # The store as the crash left it: readable, and never ahead of the log.
        reader = LogReader(server.data_dir / "log")
        con = duckdb.connect(str(server.data_dir / "store.duckdb"), read_only=True)
        try:
            positions = dict(con.execute("SELECT stream, position FROM positions").fetchall())
            (doubled,) = con.execute(
                "SELECT count(*) - count(DISTINCT properties['seq']) FROM events"
            ).fetchone() or (0,)
        finally:
            con.close()
        assert doubled == 0, where
        # The CLI reads the store the crash left, without a server.
        status = json.loads(cli(server.data_dir, "status", "--json").stdout)
        assert status["pipeline"]["processor"] is None
        for stream in status["pipeline"]["streams"]:
            assert stream["applied_position"] == positions.get(stream["name"], 0), where
            assert stream["log_position"] >= stream["applied_position"], where
        for stream, position in positions.items():
            assert position <= reader.size(stream), f"{where}: store ahead of the log"
        behind.append(any(positions.get(s, 0) < reader.durable(s) for s in reader.streams()))

        server.start()
        unacked = sorted(load.requests.keys() - set(load.acked))
        resend(server, [load.requests[seq] for seq in unacked])

    assert any(behind), f"{context}: no kill caught the processor behind the log"

    # The last catch-up.
    status = wait_until(lambda: caught_up(server), 20, "the pipeline has caught up")
    assert status["pipeline"]["processor"]["error"] is None
    assert server.stop() == 0, server.stderr
    assert "Traceback" not in server.stderr

    # What the log holds: every request sent, some more than once.
    reader = LogReader(server.data_dir / "log")
    copies = Counter(
        seq_of(entry.record.query, entry.record.body)
        for stream in reader.streams()
        for entry in reader.read(stream)
    )
    assert copies.keys() == requests.keys(), f"{context}: a request is missing from the log"
    by_kind = Counter(kinds.values())
    assert min(by_kind.values()) > 5, by_kind

    store_path = server.data_dir / "store.duckdb"
    con = duckdb.connect(str(store_path), read_only=True)
    try:

        def once(sql: str) -> Counter[str]:
            return Counter(row[0] for row in con.execute(sql).fetchall())

        events = once("SELECT properties['seq'] FROM events")
        sets = once("SELECT value FROM property_values WHERE key = 'seq'")
        aliases = once("SELECT a FROM aliases WHERE status = 'accepted'")
        rejects = once("SELECT params FROM rejects WHERE reason = 'unknown_key'")
        (duplicates,) = con.execute(
            "SELECT value FROM counters WHERE name = 'duplicates'"
        ).fetchone() or (0,)
    finally:
        con.close()

    def of(*wanted: str) -> Counter[str]:
        return Counter(seq for seq, kind in kinds.items() if kind in wanted)

    # Exactly once: each event, property set, alias and reject; no other.
    assert events == of("event"), context
    assert sets == of("event", "set"), context
    assert aliases == Counter(f"anon-{seq}" for seq in of("alias")), context
    rejected = Counter(dict(json.loads(params))["seq"] for params in rejects.elements())
    assert rejected == of("bad"), context
    # Every copy beyond the first was absorbed as a duplicate, and counted once.
    assert duplicates == sum(copies.values()) - len(copies), context

    live = dump_store(store_path)
    output = rebuild(server.data_dir)
    assert f"from {sum(copies.values()):,} log records" in output
    assert_same_store(live, dump_store(store_path))
    assert time.monotonic() - began < 60, context
