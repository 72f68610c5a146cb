"""The OpenAPI document of the JSON API, and schemathesis against a live server
(issue 14, point 5; docs/http-api.md).

The document is generated from the models that validate requests, so these
tests hold the contract both ways: every route is in it, its limits are the
ones enforced, and schemathesis, sending what the document allows (and what it
does not), gets no 500 and only answers that match it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from serverproc import RunningServer, wait_until
from tally.api import OPERATIONS
from tally.cli import main
from tally.reports import KINDS
from tally.reports.bodies import MAX_ITEMS, MAX_STEPS
from tally.views.common import MAX_PAGE_SIZE

KEY = "7" * 40
#: Examples per operation and phase (generated deterministically: the same
#: run every time).
EXAMPLES = 25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with a product that has events, people, an alias, a payment, an
    experiment and rejects, so that reports and views have something to say."""
    running = RunningServer(tmp_path_factory.mktemp("openapi") / "data").start()
    try:
        created = CliRunner().invoke(main, ["products", "create", "shop", "--key", KEY,
                                            "--data-dir", str(running.data_dir)])  # fmt: skip
        assert created.exit_code == 0, created.output
        with httpx.Client(base_url=running.base_url, timeout=10) as client:
            for n in range(6):
                anon, known = f"anon-{n}", f"user{n}@example.com"
                for path, params in [
                    ("/e", {"_p": anon, "_n": "Visited Site", "Plan": "pro"}),
                    ("/a", {"_p": anon, "_n": known}),
                    ("/s", {"_p": known, "Experiment": "AB"[n % 2], "Billing Amount": str(n)}),
                    ("/e", {"_p": known, "_n": "Signed Up"}),
                    ("/e", {"_p": "", "_n": "No One"}),  # a reject
                ]:
                    assert client.get(path, params={"_k": KEY, **params}).status_code == 200
        wait_until(lambda: running.status()["pipeline"]["lag_records"] == 0,  # type: ignore[index]
                   20, "every record is applied")  # fmt: skip
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.stderr
    assert "Traceback" not in running.stderr, running.stderr


def openapi(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(server.base_url + "/api/v1/openapi.json", timeout=10)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_the_document_is_served_without_a_token_and_lists_every_route(
    server: RunningServer,
) -> None:
    document = openapi(server)
    assert document["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}  # fmt: skip
    routed = set()
    for op in OPERATIONS:
        path = op.path.replace("{identity:path}", "{identity}").replace("{name:path}", "{name}")
        if op.per_value:  # one operation per value of the last path parameter
            last = path[path.rindex("{") :]
            routed |= {(op.method, path.replace(last, value)) for value in op.per_value}
        else:
            routed.add((op.method, path))
    assert documented == routed
    reports = {path.rsplit("/", 1)[1] for _, path in documented if "/reports/" in path}
    assert reports == set(KINDS)
    # Every operation but the document itself asks for the operator token.
    public = {path for path, item in document["paths"].items() if item["get" if "get" in item
              else "post"].get("security") == []}  # fmt: skip
    assert public == {"/api/v1/openapi.json"}


def test_the_schemas_carry_the_limits_that_are_enforced(server: RunningServer) -> None:
    schemas = openapi(server)["components"]["schemas"]
    people = schemas["People"]["properties"]
    assert people["conditions"]["maxItems"] == MAX_ITEMS
    assert people["page_size"]["maximum"] == MAX_PAGE_SIZE
    steps = schemas["Funnel"]["properties"]["steps"]
    assert (steps["minItems"], steps["maxItems"]) == (2, MAX_STEPS)
    assert schemas["Filter"]["properties"]["op"]["enum"][:2] == ["equals", "not_equals"]
    # What the schema allows, the server takes; one past a limit is refused naming it.
    client = httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {server.token}"})  # fmt: skip
    condition = {"type": "property", "property": "Plan", "op": "has_no_value"}
    with client:
        url = "/api/v1/products/shop/reports/people"
        assert client.post(url, json={"conditions": [condition] * MAX_ITEMS}).status_code == 200
        refused = client.post(url, json={"conditions": [condition] * (MAX_ITEMS + 1)})
        assert refused.status_code == 400
        assert refused.json()["error"]["field"] == "conditions"


@pytest.mark.skipif(shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis is a dev dependency: make test installs it")  # fmt: skip
def test_schemathesis_finds_no_500_and_no_answer_outside_the_document(
    server: RunningServer, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    # The product whose data the run reads (its path parameter); other
    # products are fuzzed too, and answer 404.
    config.write_text('[parameters]\nproduct = "shop"\n')
    # The token the server leaves for its local CLI: one the run cannot revoke
    # (it fuzzes POST /api/v1/tokens/{name}/revoke too).
    token = (server.data_dir / "run" / "cli.token").read_text().strip()
    checks = ",".join([
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
    ])  # fmt: skip
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(config),
            "run", server.base_url + "/api/v1/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", checks,
            "--max-examples", str(EXAMPLES),
            "--generation-deterministic",
            "--workers", "1",
            # Local-only operations that write to the server's disk: a copy of
            # the whole store, a KISSmetrics export into any folder named.
            "--exclude-path", "/api/v1/backup/snapshot",
            "--exclude-path", "/api/v1/products/{product}/export/km",
            "--no-color",
            "--report-dir", str(tmp_path / "reports"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its cache of examples goes there, not in the checkout
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout, run.stdout[-20_000:]
    assert "failed" not in run.stdout, run.stdout[-20_000:]
