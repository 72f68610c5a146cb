"""`tally status | person | events | rejects [replay] | alias revoke` (issue 3).

Each command goes through the running server while there is one, and opens the
store itself when there is none; for the same data the JSON is the same either
way, and so are the tables. An alias revocation splits a person within seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from serverproc import RunningServer, wait_until
from tally.cli import main
from tally.wire import GIF

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
BOB = "bob@example.com"
ANON = "anon-7f3a"
ZOE = "Zoë/山田@x.example"
LATE_KEY = "d" * 40


def tally(data_dir: Path, *args: str) -> Result:
    """`tally ARGS --data-dir DATA_DIR`, in this process."""
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


def tally_process(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m tally ARGS --data-dir DATA_DIR`, a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "tally", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def sender(server: RunningServer) -> Callable[..., None]:
    def send(path: str, key: str | None = None, **params: str) -> None:
        response = httpx.get(
            server.base_url + path, params={"_k": key or server.api_key, **params}, timeout=10
        )
        assert response.status_code == 200
        assert response.content == GIF

    return send


def lag(data_dir: Path) -> int:
    return int(json.loads(ok(tally(data_dir, "status", "--json")))["pipeline"]["lag_records"])


def identities(data_dir: Path, identity: str) -> list[str]:
    """The person's identities; none while no applied record names ``identity`` yet."""
    result = tally(data_dir, "person", identity, "--json")
    if result.exit_code == 1 and "no person with identity" in result.output:
        return []
    return list(json.loads(ok(result))["identities"])


# -- the same answers through the server and from the store ----------------------------------

READS: list[tuple[str, ...]] = [
    ("status",),
    ("person", BOB),
    ("person", ANON, "--page", "2", "--page-size", "1"),
    ("person", ZOE),
    ("events",),
    ("events", "--event", "SIGNED UP"),
    ("events", "--identity", ANON, "--from", "2023-11-14T22:14:20Z", "--to", str(T0 + 3600)),
    ("events", "--page", "2", "--page-size", "2"),
    ("rejects",),
    ("rejects", "--reason", "unknown_key"),
]

MISTAKES: list[tuple[tuple[str, ...], str]] = [
    (("person", "nobody"), "error: no person with identity 'nobody' in 'default'"),
    (("person", "mallory"), "error: no person with identity 'mallory' in 'default'"),
    (("events", "--page", "0"), "error: page"),
    (("events", "--page-size", "5000"), "error: page_size is at most 1000"),
    (("events", "--from", "soon"), "error: from is not an ISO date or timestamp: 'soon'"),
    (("events", "--identity", "nobody"), "error: no person with identity 'nobody' in 'default'"),
]

#: Products that do not exist: an error with or without a server.
PRODUCT_MISTAKES: list[tuple[str, ...]] = [
    ("person", BOB, "--product", "nope"),
    ("events", "--product", "nope"),
    ("rejects", "--product", "nope"),
]


def read_everything(data_dir: Path) -> dict[tuple[str, ...], tuple[Any, str]]:
    """Each read as JSON and as a table."""
    return {
        args: (json.loads(ok(tally(data_dir, *args, "--json"))), ok(tally(data_dir, *args)))
        for args in READS
    }


def without_processor(status: dict[str, Any]) -> dict[str, Any]:
    """Status less what only a running server has: its processor thread's counters."""
    return {**status, "pipeline": {**status["pipeline"], "processor": None}}


def test_reads_are_the_same_through_the_server_and_from_the_store(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    data_dir = server.data_dir
    try:
        send = sender(server)
        send("/e", _p=ANON, _n="Viewed Pricing", _t=str(T0), _d="1", page="pricing")
        send("/s", _p=ANON, Plan="free", _t=str(T0 + 10), _d="1")
        send("/a", _p=ANON, _n=BOB)
        for _ in range(2):
            send("/e", _p=BOB, _n="Signed Up", Plan="pro", _t=str(T0 + 60), _d="1")
        send("/e", _p=ZOE, _n="Signed Up", _t=str(T0 + 90), _d="1")
        send("/e", _p=BOB, _n="Upgraded", Plan="team", _t=str(T0 + 120), _d="1")
        send("/e", key=LATE_KEY, _p="mallory", _n="Signed Up", _t=str(T0 + 150), _d="1")
        send("/e", _p="undefined", _n="Signed Up")
        wait_until(lambda: lag(data_dir) == 0, 10, "the pipeline has caught up")

        online = read_everything(data_dir)
        mistakes_online = {args: tally(data_dir, *args) for args, _ in MISTAKES}
        for args in PRODUCT_MISTAKES:
            result = tally(data_dir, *args)
            assert (result.exit_code, result.output) == (1, "error: no product named 'nope'\n")
        # A CLI process of its own reads the same through the server.
        process = tally_process(data_dir, "person", BOB, "--json")
        assert process.returncode == 0, process.stderr
        assert json.loads(process.stdout) == online[("person", BOB)][0]
    finally:
        assert server.stop() == 0, server.stderr
    assert "Traceback" not in server.stderr

    # What the server said is what the data says.
    status = online[("status",)][0]
    assert status["pipeline"]["processor"]["error"] is None
    assert status["store"]["duplicates"] == 1
    assert status["store"]["rejects"] == {"blocked_identity": 1, "unknown_key": 1}
    bob, bob_table = online[("person", BOB)]
    assert bob["identities"] == [ANON, BOB]
    assert [e["event"] for e in bob["events"]["items"]] == [
        "Upgraded",
        "Signed Up",
        "Viewed Pricing",
    ]
    assert {p["name"]: (p["first_value"], p["value"]) for p in bob["properties"]} == {
        "Plan": ("free", "team"),
        "page": ("pricing", "pricing"),
    }
    # Shown by the identity a human recognises, named by the smallest (docs/reports.md).
    assert f"Person {BOB} in default (named {ANON})" in bob_table
    assert f"Identities: {ANON}, {BOB}" in bob_table
    assert re.search(
        rf"{BOB} ~ {ANON}: {ANON} ~ {BOB} at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bob_table
    )
    assert re.search(
        r"Plan\s+team\s+free\s+2023-11-14T22:13:30Z\s+2023-11-14T22:15:20Z\s+3", bob_table
    )
    assert "Events (3, newest first, page 1):" in bob_table
    assert re.search(rf"2023-11-14T22:13:20Z\s+Viewed Pricing\s+{ANON}\s+page=pricing", bob_table)
    paged = online[("person", ANON, "--page", "2", "--page-size", "1")][0]["events"]
    assert [e["event"] for e in paged["items"]] == ["Signed Up"]
    assert online[("person", ZOE)][0]["identities"] == [ZOE]
    assert online[("events",)][0]["total"] == 4
    assert {e["identity"] for e in online[("events", "--event", "SIGNED UP")][0]["items"]} == {
        BOB,
        ZOE,
    }
    ranged = online[READS[6]][0]["items"]
    assert [(e["event"], e["identity"]) for e in ranged] == [("Upgraded", BOB), ("Signed Up", BOB)]
    assert "(2 of 4, page 2)" in online[("events", "--page", "2", "--page-size", "2")][1]
    rejects, rejects_table = online[("rejects",)]
    assert [r["reason"] for r in rejects["items"]] == ["blocked_identity", "unknown_key"]
    assert f"_k={LATE_KEY}&_p=mallory" in rejects_table  # (the cell is cut at 60)
    assert "by reason: blocked_identity: 1, unknown_key: 1" in rejects_table
    status_table = online[("status",)][1]
    assert "1 duplicates absorbed, 2 rejected, 0 properties dropped" in status_table
    assert "Lag:    0 records" in status_table

    # The server is gone: the same commands open the store and say the same.
    offline = read_everything(data_dir)
    for args in READS:
        if args == ("status",):
            assert offline[args][0]["pipeline"]["processor"] is None
            assert offline[args][0] == without_processor(online[args][0])
            continue
        assert offline[args] == online[args], args
    for args, message in MISTAKES:  # one line on stderr, exit 1, the same either way
        result, before = tally(data_dir, *args), mistakes_online[args]
        assert result.exit_code == before.exit_code == 1, args
        assert result.output == before.output, args
        assert result.output.startswith(message), args
        assert result.output.count("\n") == 1, args
    process = tally_process(data_dir, "person", BOB, "--json")
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout) == bob

    # Replay without a server, once the missing key exists.
    ok(tally(data_dir, "keys", "add", "default", "--key", LATE_KEY))
    replayed = ok(tally(data_dir, "rejects", "replay"))
    assert replayed.strip() == (
        "Replayed 2 records: 1 applied, 0 duplicates, still rejected: blocked_identity: 1"
    )
    after = json.loads(ok(tally(data_dir, "rejects", "--json")))
    assert [r["reason"] for r in after["items"]] == ["blocked_identity"]
    mallory = json.loads(ok(tally(data_dir, "person", "mallory", "--json")))
    assert [e["event"] for e in mallory["events"]["items"]] == ["Signed Up"]
    assert json.loads(ok(tally(data_dir, "status", "--json")))["store"]["events"] == 5


# -- alias revocation ---------------------------------------------------------------------------


def test_alias_revoke_splits_the_person_while_the_server_runs(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data").start()
    data_dir = server.data_dir
    try:
        send = sender(server)
        send("/a", _p="ann", _n="ann@example.com")
        send("/a", _p="ann@example.com", _n="ann-phone")
        send("/e", _p="ann-phone", _n="Opened App")
        send("/e", _p="ann", _n="Signed Up")
        wait_until(lambda: len(identities(data_dir, "ann")) == 3, 20, "the aliases apply")

        # Why ann-phone is Ann: the alias path, with its times.
        ann = json.loads(ok(tally(data_dir, "person", "ann", "--json")))
        paths = {x["identity"]: x["path"] for x in ann["aliases"]["explanations"]}
        assert [(e["a"], e["b"]) for e in paths["ann-phone"]] == [
            ("ann", "ann@example.com"),
            ("ann@example.com", "ann-phone"),
        ]
        assert [(e["a"], e["b"]) for e in paths["ann@example.com"]] == [("ann", "ann@example.com")]
        assert all(re.fullmatch(r"\S+T\S+Z", e["time"]) for e in paths["ann-phone"])
        table = ok(tally(data_dir, "person", "ann"))
        assert re.search(
            r"ann ~ ann-phone: ann ~ ann@example.com at \S+Z; ann@example.com ~ ann-phone at \S+Z",
            table,
        )

        # Revoked with the identities in the other order: the alias is symmetric.
        revoked = tally_process(
            data_dir, "alias", "revoke", "default", "ann-phone", "ann@example.com"
        )
        assert revoked.returncode == 0, revoked.stderr
        assert "it applies now" in revoked.stdout
        asked = time.monotonic()
        wait_until(lambda: identities(data_dir, "ann") == ["ann", "ann@example.com"], 20, "split")
        assert time.monotonic() - asked < 5
        phone = json.loads(ok(tally(data_dir, "person", "ann-phone", "--json")))
        assert phone["identities"] == ["ann-phone"]
        assert [e["event"] for e in phone["events"]["items"]] == ["Opened App"]
        assert phone["aliases"]["explanations"] == []
        assert [e["status"] for e in phone["aliases"]["edges"]] == ["revoked"]
        ann = json.loads(ok(tally(data_dir, "person", "ann", "--json")))
        assert [e["event"] for e in ann["events"]["items"]] == ["Signed Up"]
        assert [(e["b"], e["status"]) for e in ann["aliases"]["edges"]] == [
            ("ann@example.com", "accepted"),
            ("ann-phone", "revoked"),
        ]
        status = json.loads(ok(tally(data_dir, "status", "--json")))
        assert (status["store"]["people"], status["store"]["aliases"]) == (2, 1)

        # An alias sent after the revocation counts again.
        send("/a", _p="ann-phone", _n="ann")
        wait_until(lambda: len(identities(data_dir, "ann-phone")) == 3, 20, "the new alias")
        ann = json.loads(ok(tally(data_dir, "person", "ann", "--json")))
        paths = {x["identity"]: x["path"] for x in ann["aliases"]["explanations"]}
        assert [(e["a"], e["b"]) for e in paths["ann-phone"]] == [("ann-phone", "ann")]
    finally:
        assert server.stop() == 0, server.stderr

    # Without a server the revocation waits in the log for the next start.
    result = ok(tally(data_dir, "alias", "revoke", "default", "ann", "ann-phone"))
    assert "applies when `tally serve` next starts" in result
    assert len(identities(data_dir, "ann")) == 3
    # Status shows it as lag: one record of the operator stream not yet applied.
    status = json.loads(ok(tally(data_dir, "status", "--json")))
    [op] = [s for s in status["pipeline"]["streams"] if s["name"] == "op"]
    assert op["lag_records"] == status["pipeline"]["lag_records"] == 1
    assert op["log_position"] > op["applied_position"]
    assert op["lag_seconds"] == status["pipeline"]["lag_seconds"] > 0
    assert "Lag:    1 records" in ok(tally(data_dir, "status"))
    server.start()
    try:
        wait_until(lambda: identities(data_dir, "ann-phone") == ["ann-phone"], 20, "split again")
        assert identities(data_dir, "ann") == ["ann", "ann@example.com"]
    finally:
        assert server.stop() == 0, server.stderr
    assert "Traceback" not in server.stderr

    for args, message in [
        (("default", "ann", "ann"), "error: an identity is always its own person"),
        (("default", "ann", " "), "error: both identities are needed"),
        (("nope", "ann", "bob"), "error: no product named 'nope'"),
    ]:
        mistake = tally(data_dir, "alias", "revoke", *args)
        assert (mistake.exit_code, mistake.output) == (1, message + "\n")


def test_an_unknown_product_is_an_error_without_a_server_too(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ok(tally(data_dir, "products", "create", "shop"))
    ok(tally(data_dir, "rebuild"))  # an empty store, as a server that never got a call leaves
    for args in PRODUCT_MISTAKES:
        result = tally(data_dir, *args)
        assert (result.exit_code, result.output) == (1, "error: no product named 'nope'\n"), args
