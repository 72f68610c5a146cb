"""The audit log: what changed and who did it, never a secret.

Every operator action that changes something (products, keys, tokens, alias
revocations, replays) is one entry, newest first, in `tally audit` and
`GET /api/v1/audit`; the actor is the API's token, the CLI through the
server, or the unix user whose CLI wrote the catalog itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sqlite3
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from serverproc import RunningServer, wait_until
from tally.cli import main

#: The CLI writing the catalog itself, as the user these tests run as.
LOCAL = f"cli (unix user {pwd.getpwuid(os.geteuid()).pw_name})"
FIRST_START = "tally serve (first start)"
LATE_KEY = "e" * 40


def tally(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def entries(data_dir: Path, *args: str) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(ok(tally(data_dir, "audit", "--json", *args)))[
        "entries"
    ]
    return listed


def brief(listed: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["actor"], e["action"], e["target"]) for e in listed]


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text


# -- the CLI on a catalog ------------------------------------------------------------------


def test_cli_changes_are_listed_newest_first_with_the_unix_user(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert ok(tally(data_dir, "audit")) == "No changes recorded yet.\n"
    created = ok(tally(data_dir, "products", "create", "shop", "--timezone", "Europe/Paris"))
    first_key = created.rsplit(" ", 1)[-1].strip()
    key = ok(tally(data_dir, "keys", "add", "shop")).strip()
    ok(tally(data_dir, "keys", "revoke", key))
    secret = ok(tally(data_dir, "tokens", "create", "--name", "ci")).strip()
    ok(tally(data_dir, "tokens", "revoke", "ci"))
    # What changes nothing, or fails, writes nothing.
    ok(tally(data_dir, "tokens", "revoke", "ci"))
    ok(tally(data_dir, "keys", "revoke", key))
    assert tally(data_dir, "products", "create", "shop").exit_code == 1
    assert tally(data_dir, "keys", "revoke", "nope").exit_code == 1

    listed = entries(data_dir)
    assert brief(listed) == [
        (LOCAL, "token.revoke", "ci"),
        (LOCAL, "token.create", "ci"),
        (LOCAL, "key.revoke", key),
        (LOCAL, "key.add", key),
        (LOCAL, "product.create", "shop"),
    ]
    assert [e["details"] for e in listed[1:]] == [
        {},
        {"product": "shop"},
        {"product": "shop"},
        {"key": first_key, "timezone": "Europe/Paris"},
    ]
    [revoked_ci] = listed[0]["details"]["created"]  # type: ignore[index]
    assert str(revoked_ci).endswith("Z")
    ids = [e["id"] for e in listed]
    assert ids == sorted(ids, reverse=True)
    times = [str(e["time"]) for e in listed]
    assert times == sorted(times, reverse=True)
    assert all(t.endswith("Z") for t in times)

    table = ok(tally(data_dir, "audit"))
    lines = table.splitlines()
    assert lines[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"]
    assert len(lines) == 6
    assert f"{LOCAL}  token.revoke" in lines[1]
    assert "product.create  shop " in lines[-1]
    assert f"key={first_key}, timezone=Eu..." in lines[-1]  # (the cell is cut at 60)
    for shown in (table, json.dumps(listed)):
        assert_no_secret(shown, secret)

    assert brief(entries(data_dir, "--limit", "2")) == brief(listed[:2])
    for bad in ("0", "1001", "many"):
        result = tally(data_dir, "audit", "--limit", bad)
        assert result.exit_code == 2
        assert "Invalid value for '--limit'" in result.output


def test_alias_revocations_and_replays_without_a_server_are_recorded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ok(tally(data_dir, "products", "create", "default"))
    ok(tally(data_dir, "alias", "revoke", "default", " ann ", "ann@example.com"))
    ok(tally(data_dir, "rejects", "replay", "--reason", "unknown_key"))
    assert tally(data_dir, "alias", "revoke", "nope", "a", "b").exit_code == 1
    [replay, alias, _] = entries(data_dir)
    assert (replay["actor"], replay["action"], replay["target"]) == (
        LOCAL,
        "rejects.replay",
        "default",
    )
    assert replay["details"] == {
        "reason": "unknown_key",
        "replayed": 0,
        "applied": 0,
        "duplicates": 0,
        "rejected": {},
    }
    assert (alias["actor"], alias["action"], alias["target"]) == (LOCAL, "alias.revoke", "default")
    assert alias["details"] == {"a": "ann", "b": "ann@example.com"}


def test_an_old_catalog_gains_the_audit_log(tmp_path: Path) -> None:
    """A catalog from before the audit log: the table is made when it is opened."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / "catalog.sqlite")
    db.execute(
        "CREATE TABLE tokens (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "hash TEXT NOT NULL UNIQUE, created_ns INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO tokens (name, hash, created_ns) VALUES ('ops', 'x', 1)")
    db.commit()
    db.close()
    assert entries(data_dir) == []
    ok(tally(data_dir, "tokens", "revoke", "ops"))
    assert brief(entries(data_dir)) == [(LOCAL, "token.revoke", "ops")]


# -- the API of a running server -----------------------------------------------------------


def test_the_api_names_the_acting_token(server: RunningServer) -> None:
    data_dir = server.data_dir
    ops = ok(tally(data_dir, "tokens", "create", "--name", "ops")).strip()
    leaked = ok(tally(data_dir, "tokens", "create", "--name", "leaked")).strip()
    api = httpx.Client(
        base_url=server.base_url + "/api/v1", headers={"Authorization": f"Bearer {ops}"}
    )
    with api:
        assert api.post("/tokens/leaked/revoke").status_code == 200
        # A call with a key the catalog does not know yet, replayed once it does.
        tracked = httpx.get(
            server.base_url + "/e", params={"_k": LATE_KEY, "_p": "mallory", "_n": "Signed Up"}
        )
        assert tracked.status_code == 200
        wait_until(
            lambda: api.get("/products/default/rejects").json()["total"] == 1, 20, "it is rejected"
        )
        ok(tally(data_dir, "keys", "add", "default", "--key", LATE_KEY))
        replayed = api.post("/products/default/rejects/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["applied"] == 1
        ok(tally(data_dir, "rejects", "replay"))  # the CLI, through the server

        answer = api.get("/audit")
        assert answer.status_code == 200, answer.text
        listed = answer.json()["entries"]
        assert brief(listed) == [
            ("cli", "rejects.replay", "default"),
            ("token ops", "rejects.replay", "default"),
            (LOCAL, "key.add", LATE_KEY),
            ("token ops", "token.revoke", "leaked"),
            (LOCAL, "token.create", "leaked"),
            (LOCAL, "token.create", "ops"),
            (FIRST_START, "user.create", "admin"),
            (FIRST_START, "token.create", "initial"),
            (FIRST_START, "product.create", "default"),
        ]
        assert listed[1]["details"] == {
            "reason": None,
            "replayed": 1,
            "applied": 1,
            "duplicates": 0,
            "rejected": {},
        }
        assert listed[-1]["details"] == {"key": server.api_key, "timezone": "UTC"}
        cli_token = (data_dir / "run" / "cli.token").read_text().strip()
        assert_no_secret(answer.text, ops, leaked, server.token, cli_token)
        # `tally audit` beside the server reads the same log.
        assert entries(data_dir) == listed

        for limit in (1, 2, 1000):
            assert api.get("/audit", params={"limit": limit}).json()["entries"] == listed[:limit]
        for bad in ("0", "1001", "many", "-1"):
            refused = api.get("/audit", params={"limit": bad})
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "invalid_input"
            assert refused.json()["error"]["field"] == "limit"
    assert httpx.get(server.base_url + "/api/v1/audit").status_code == 401
    revoked = httpx.get(
        server.base_url + "/api/v1/audit", headers={"Authorization": f"Bearer {leaked}"}
    )
    assert revoked.json()["error"]["code"] == "revoked_token"
