"""Operator tokens: listed without their secrets, revoked by name, refused at once.

A leaked token must stop working at the next request, also while the server
runs; ``last used`` tells the operator which tokens are still in use.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from serverproc import RunningServer
from tally.catalog import TOKEN_USE_RESOLUTION_NS, Catalog
from tally.cli import main

MINUTE = 60 * 10**9
T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run(data_dir: Path):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [*args, "--data-dir", str(data_dir)])

    return invoke


def _listed(run) -> list[dict[str, object]]:
    result = run("tokens", "list", "--json")
    assert result.exit_code == 0, result.output
    listed: list[dict[str, object]] = json.loads(result.output)
    return listed


def _old_catalog(path: Path, tokens: dict[str, str]) -> None:
    """A catalog as Tally made it before tokens could be revoked: names could repeat."""
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tokens (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "hash TEXT NOT NULL UNIQUE, created_ns INTEGER NOT NULL)"
    )
    db.executemany(
        "INSERT INTO tokens (name, hash, created_ns) VALUES (?, ?, ?)",
        [
            (name, hashlib.sha256(secret.encode()).hexdigest(), T0 + n * MINUTE)
            for n, (secret, name) in enumerate(tokens.items())
        ],
    )
    db.commit()
    db.close()


# -- the CLI on a catalog ------------------------------------------------------------------


def test_list_shows_created_never_and_active_but_no_secret(run, data_dir: Path) -> None:
    assert run("tokens", "list").output == (
        "No operator tokens yet: `tally tokens create` makes one.\n"
    )
    secrets = [run("tokens", "create", "--name", name).output.strip() for name in ("ci", "ops")]
    assert all(s.startswith("tally_") for s in secrets)
    table = run("tokens", "list")
    listed = run("tokens", "list", "--json")
    for shown in (table.output, listed.output):
        for secret in secrets:
            assert secret not in shown
            assert hashlib.sha256(secret.encode()).hexdigest() not in shown
    lines = table.output.splitlines()
    assert lines[0].split() == ["TOKEN", "CREATED", "LAST", "USED", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == ["ci", "ops"]
    assert all(line.split()[-2:] == ["never", "active"] for line in lines[1:])
    [ci, ops] = json.loads(listed.output)
    assert ci["name"] == "ci"
    assert ops["name"] == "ops"
    for token in (ci, ops):
        assert set(token) == {"name", "created", "last_used", "revoked", "revoked_at"}
        assert token["created"].endswith("Z")
        assert (token["last_used"], token["revoked"], token["revoked_at"]) == (None, False, None)


def test_revoke_by_name_then_reuse_the_name(run) -> None:
    run("tokens", "create", "--name", "ci")
    run("tokens", "create", "--name", "ops")
    revoked = run("tokens", "revoke", "ci")
    assert revoked.exit_code == 0, revoked.output
    assert revoked.output.startswith("Revoked token 'ci' (created ")
    again = run("tokens", "revoke", "ci")  # changes nothing, and says when it happened
    assert again.exit_code == 0
    assert again.output == revoked.output
    [ci, ops] = _listed(run)
    assert ci["revoked"] is True
    assert ci["revoked_at"]
    assert ops["revoked"] is False
    assert "revoked 20" in run("tokens", "list").output
    # A revoked token's name may be used again: that is how a token is rotated.
    assert run("tokens", "create", "--name", "ci").exit_code == 0
    assert [(t["name"], t["revoked"]) for t in _listed(run)] == [
        ("ci", True),
        ("ops", False),
        ("ci", False),
    ]


def test_the_last_active_token_may_be_revoked(run) -> None:
    run("tokens", "create")
    assert run("tokens", "revoke", "operator").exit_code == 0
    assert [t["revoked"] for t in _listed(run)] == [True]
    assert run("tokens", "create").exit_code == 0  # and the CLI makes a new one


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tokens", "create", "--name", "ci"), "an active token named 'ci' exists already"),
        (("tokens", "create", "--name", "my laptop"), "a token name is 1 to 64 letters"),
        (("tokens", "revoke", "nope"), "no operator token named 'nope'"),
    ],
    ids=["duplicate-name", "bad-name", "unknown-name"],
)
def test_mistakes_are_one_line_and_exit_1(run, args: tuple[str, ...], message: str) -> None:
    assert run("tokens", "create", "--name", "ci").exit_code == 0
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: ")
    assert message in result.output
    assert len(_listed(run)) == 1


def test_an_old_catalog_gains_the_columns_and_its_tokens_keep_working(data_dir: Path) -> None:
    path = data_dir / "catalog.sqlite"
    _old_catalog(path, {"tally_first": "operator", "tally_second": "ci"})
    catalog = Catalog(path)
    assert [(t.name, t.last_used_ns, t.revoked_ns) for t in catalog.tokens()] == [
        ("operator", None, None),
        ("ci", None, None),
    ]
    assert catalog.authorise_token("tally_second").name == "ci"
    catalog.close()
    again = Catalog(path)  # a current catalog opens without writing
    assert [t.last_used_ns is not None for t in again.tokens()] == [False, True]
    again.close()


def test_an_ambiguous_old_name_is_refused_unless_all(run, data_dir: Path) -> None:
    _old_catalog(data_dir / "catalog.sqlite", {"tally_a": "operator", "tally_b": "operator"})
    assert [(t["name"], t["revoked"]) for t in _listed(run)] == [("operator", False)] * 2
    ambiguous = run("tokens", "revoke", "operator")
    assert ambiguous.exit_code == 1
    assert ambiguous.output.count("\n") == 1
    assert ambiguous.output.startswith("error: 2 active tokens are named 'operator' (created ")
    assert "--all" in ambiguous.output
    assert [t["revoked"] for t in _listed(run)] == [False, False]
    every = run("tokens", "revoke", "operator", "--all")
    assert every.exit_code == 0, every.output
    assert every.output.count("Revoked token 'operator'") == 2
    assert [t["revoked"] for t in _listed(run)] == [True, True]


def test_last_use_is_written_at_most_once_a_minute(data_dir: Path) -> None:
    catalog = Catalog(data_dir / "catalog.sqlite")
    secret = catalog.create_token("ci")

    def last_used() -> int | None:
        [token] = catalog.tokens()
        return token.last_used_ns

    catalog.authorise_token(secret, now_ns=T0)
    assert last_used() == T0
    catalog.authorise_token(secret, now_ns=T0 + TOKEN_USE_RESOLUTION_NS - 1)
    assert last_used() == T0
    catalog.authorise_token(secret, now_ns=T0 + TOKEN_USE_RESOLUTION_NS)
    assert last_used() == T0 + TOKEN_USE_RESOLUTION_NS
    catalog.close()


# -- beside a running server ---------------------------------------------------------------


def _get(server: RunningServer, token: str, path: str = "/api/v1/status") -> httpx.Response:
    return httpx.get(server.base_url + path, headers={"Authorization": f"Bearer {token}"})


def _cli(server: RunningServer, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args, "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_a_token_revoked_with_the_cli_is_refused_at_once(server: RunningServer) -> None:
    leaked = _cli(server, "tokens", "create", "--name", "leaked").strip()
    assert _get(server, leaked).status_code == 200
    listed = {t["name"]: t for t in json.loads(_cli(server, "tokens", "list", "--json"))}
    assert listed["leaked"]["last_used"] is not None
    assert listed["initial"]["last_used"] is None  # the server's start used none

    assert _cli(server, "tokens", "revoke", "leaked").startswith("Revoked token 'leaked'")

    refused = _get(server, leaked)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    error = refused.json()["error"]
    assert error["code"] == "revoked_token"
    assert error["message"].startswith("that operator token ('leaked') was revoked at ")
    assert _get(server, server.token).status_code == 200  # the other token keeps working
    table = _cli(server, "tokens", "list")
    assert leaked not in table
    [initial] = [line for line in table.splitlines() if line.startswith("initial ")]
    assert "never" not in initial
    assert initial.endswith("active")


def test_the_api_lists_and_revokes_tokens(server: RunningServer) -> None:
    other = _cli(server, "tokens", "create", "--name", "ci").strip()
    client = httpx.Client(
        base_url=server.base_url + "/api/v1",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    with client:
        listed = client.get("/tokens")
        assert listed.status_code == 200
        assert [(t["name"], t["revoked"]) for t in listed.json()["tokens"]] == [
            ("initial", False),
            ("ci", False),
        ]
        assert other not in listed.text
        revoked = client.post("/tokens/ci/revoke")
        assert revoked.status_code == 200, revoked.text
        [token] = revoked.json()["revoked"]
        assert (token["name"], token["revoked"]) == ("ci", True)
        assert _get(server, other).json()["error"]["code"] == "revoked_token"

        unknown = client.post("/tokens/nope/revoke")
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": {
                "code": "not_found",
                "message": "no operator token named 'nope'",
                "field": "name",
            }
        }
        bad = client.post("/tokens/initial/revoke", json={"all": "yes"})
        assert bad.status_code == 400
        assert bad.json()["error"]["field"] == "all"
        assert client.get("/tokens").json()["tokens"][0]["revoked"] is False
    for method, path in [("GET", "/api/v1/tokens"), ("POST", "/api/v1/tokens/initial/revoke")]:
        response = httpx.request(method, server.base_url + path, headers={"Authorization": "x"})
        assert response.status_code == 401
