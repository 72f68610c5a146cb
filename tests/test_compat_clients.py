"""The real KISSmetrics client libraries, driven against a running Tally.

tests/compat/install.sh installs them: the PyPI clients each in its own venv,
.compat/py-NAME/ (both install a module named ``KISSmetrics``), the npm clients
in tests/compat/node/. Each test runs one library in a subprocess, through its
driver script under tests/compat/, making each kind of call the library offers;
the driver prints one JSON line per HTTP response. The test then checks that
every call was answered 200 with the GIF (SPEC §1), and that every call landed
in the log exactly as the library sends it; the expected calls below spell
that out, quirks included. None of these libraries ever sends POST.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "tests" / "compat"
NOT_INSTALLED = "is not installed: run tests/compat/install.sh"

Call = tuple[str, str, dict[str, Any]]  # method, path, query parameters


class Now:
    """Equals a ``_t`` that the client stamped with the current time."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second

    def __eq__(self, value: object) -> bool:
        try:
            seconds = float(str(value)) / self.per_second
        except ValueError:
            return False
        return abs(seconds - time.time()) < 300

    def __repr__(self) -> str:
        return f"<now, in 1/{self.per_second} s>"


NOW_SECONDS = Now(per_second=1)
NOW_MILLIS = Now(per_second=1000)
BACKDATED = {"_t": "1700000000", "_d": "1"}  # the drivers' explicit timestamp


def python_client(name: str, *args: str) -> list[str]:
    python = ROOT / ".compat" / f"py-{name}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"PyPI client {name} {NOT_INSTALLED}")
    driver = COMPAT / "python" / f"drive_{name.replace('-', '_')}.py"
    return [str(python), str(driver), *args]


def node_client(package: str, *args: str) -> list[str]:
    node = shutil.which("node")
    if node is None or not (COMPAT / "node" / "node_modules" / package).is_dir():
        pytest.fail(f"npm client {package} {NOT_INSTALLED}")
    return [node, str(COMPAT / "node" / f"drive_{package}.js"), *args]


def check_client(server: Any, command: list[str], tag: str, expected: list[Call]) -> None:
    """Run a driver; check its answers and the records whose query holds `tag`."""
    seen = len(server.records())
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    responses = [json.loads(line) for line in done.stdout.splitlines()]

    assert len(responses) == len(expected)
    for response in responses:
        assert response["status"] == 200
        assert response["content_type"] == "image/gif"
        if "body" in response:  # the Python clients expose the bytes
            assert_is_pixel_gif(base64.b64decode(response["body"]))
        else:  # the npm clients expose only the headers
            assert int(response["content_length"]) > 0

    records = server.wait_for_records(seen + len(expected))
    landed = [
        (record.method, record.path, query_params(record.query))
        for record in records
        if tag.encode() in record.query
    ]
    wanted = [(method, path, {"_k": server.api_key, **params}) for method, path, params in expected]
    # Arrival order is not the library's business (array aliases go out in parallel).
    assert sorted(landed, key=_call_order) == sorted(wanted, key=_call_order)


def assert_is_pixel_gif(body: bytes) -> None:
    assert body[:6] in (b"GIF87a", b"GIF89a")
    assert body[6:10] == b"\x01\x00\x01\x00"  # 1 x 1
    assert body.endswith(b";")  # the GIF trailer


def query_params(query: bytes) -> dict[str, str]:
    parsed = parse_qs(query.decode(), keep_blank_values=True)
    assert all(len(values) == 1 for values in parsed.values()), parsed
    return {name: values[0] for name, values in parsed.items()}


def _call_order(call: Call) -> tuple[str, str, list[tuple[str, str]]]:
    method, path, params = call
    return method, path, sorted((k, v) for k, v in params.items() if k != "_t")


@pytest.fixture
def tag() -> str:
    """Marks this test's identities, to find its records in a shared log."""
    return uuid.uuid4().hex[:12]


def test_py_kissmetrics(server: Any, tag: str) -> None:
    """py-KISSmetrics 1.1.0 (PyPI), the official client: Client and its KM wrapper."""
    alice, bob = f"{tag}-alice", f"{tag}-bob"
    expected: list[Call] = [
        # Client
        ("GET", "/e", {"_p": alice, "_n": "Signed Up", "Plan": "Pro"}),
        ("GET", "/e", {"_p": alice, "_n": "Viewed Page", "Page Name": "Q&A ✓", **BACKDATED}),
        ("GET", "/s", {"_p": alice, "Gender": "F", "Age": "31"}),
        ("GET", "/s", {"_p": alice, "Country": "NZ", **BACKDATED}),
        ("GET", "/a", {"_p": alice, "_n": f"{alice}@example.com"}),
        # KM (ClientCompat), identified as bob
        ("GET", "/e", {"_p": bob, "_n": "Logged In", "Via": "SSO"}),
        ("GET", "/s", {"_p": bob, "Tier": "gold"}),
        ("GET", "/a", {"_p": bob, "_n": f"{bob}@example.com"}),
    ]
    command = python_client("py-kissmetrics", f"{server.host}:{server.port}", server.api_key, tag)
    check_client(server, command, tag, expected)


def test_pykissmetrics(server: Any, tag: str) -> None:
    """pyKISSmetrics 1.0.2 (PyPI): always sends _t, in fractional seconds."""
    carol = f"{tag}-carol"
    expected: list[Call] = [
        ("GET", "/e", {"_p": carol, "_n": "Signed Up", "Plan": "Pro", "_t": NOW_SECONDS}),
        ("GET", "/e", {"_p": carol, "_n": "Purchased", "Item Name": "Mug ✓", **BACKDATED}),
        ("GET", "/s", {"_p": carol, "Gender": "F", "Age": "31", "_t": NOW_SECONDS}),
        ("GET", "/s", {"_p": carol, "Country": "NZ", **BACKDATED}),
        ("GET", "/a", {"_p": carol, "_n": f"{carol}@example.com", "_t": NOW_SECONDS}),
    ]
    command = python_client("pykissmetrics", f"{server.host}:{server.port}", server.api_key, tag)
    check_client(server, command, tag, expected)


def test_npm_kissmetrics(server: Any, tag: str) -> None:
    """kissmetrics 0.0.4 (npm): always sends _t, in milliseconds unless _d is given;
    its query starts ``_k=KEY&&`` (an empty pair), and it escapes the URL with
    encodeURI, so its values must not hold & + = # (the library's bug)."""
    erin = f"{tag}-erin"
    expected: list[Call] = [
        ("GET", "/e", {"_p": erin, "_n": "Signed Up", "Plan": "Pro", "_t": NOW_MILLIS}),
        ("GET", "/e", {"_p": erin, "_n": "Viewed Page", "Page Name": "Prices ✓", **BACKDATED}),
        ("GET", "/s", {"_p": erin, "Gender": "F", "Age": "31", "_t": NOW_MILLIS}),
        ("GET", "/s", {"_p": erin, "Country": "NZ", "_t": NOW_MILLIS}),
        ("GET", "/a", {"_p": erin, "_n": f"{erin}@example.com", "_t": NOW_MILLIS}),
        ("GET", "/a", {"_p": erin, "_n": f"{erin}-2", "_t": NOW_MILLIS}),
        ("GET", "/a", {"_p": erin, "_n": f"{erin}-3", "_t": NOW_MILLIS}),
    ]
    command = node_client("kissmetrics", server.host, str(server.port), server.api_key, tag)
    check_client(server, command, tag, expected)


def test_npm_kissmymetrics(server: Any, tag: str) -> None:
    """kissmymetrics 0.1.1 (npm): sends _t (with _d=1) only when built with
    allowManualTimestamp, and drops a given _t otherwise."""
    frank = f"{tag}-frank"
    expected: list[Call] = [
        ("GET", "/e", {"_p": frank, "_n": "Signed Up", "Plan": "Pro"}),
        ("GET", "/e", {"_p": frank, "_n": "Logged In"}),
        ("GET", "/e", {"_p": frank, "_n": "Viewed Page", "Page Name": "Q&A ✓"}),
        ("GET", "/e", {"_p": frank, "_n": "Purchased", "Amount": "9.99", **BACKDATED}),
        ("GET", "/s", {"_p": frank, "Gender": "F", "Age": "31"}),
        ("GET", "/s", {"_p": frank, "Country": "NZ", **BACKDATED}),
        ("GET", "/a", {"_p": frank, "_n": f"{frank}@example.com"}),
        ("GET", "/a", {"_p": frank, "_n": f"{frank}-2"}),
        ("GET", "/a", {"_p": frank, "_n": f"{frank}-3"}),
    ]
    command = node_client("kissmymetrics", server.base_url, server.api_key, tag)
    check_client(server, command, tag, expected)
